"""Plane figure (paper Figure 1): metric surfaces on a plane through three weight vectors.

    python plots/plane.py PLANE.npz --out figures/plane.png [--metrics train_loss test_err]
        [--vmax test_err=40] [--levels 12]

Reads a plane .npz written by the plane analysis (nothing is computed here): one panel per
metric, filled contours and thin contour lines on log-spaced levels between a floor and
vmax (values above vmax drawn as vmax), colormap jet_r, a marker and a label for every
point of `point_names`/`point_xy`. Grid points not evaluated (NaN or done == False) are left
blank. A trajectory plane (with `trajectory_xy`) also gets its trajectory drawn (Figure 2
style; plots/trajectory.py puts several of them in one figure). Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import (  # noqa: E402
    COLORS,
    METRICS,
    PlotInputError,
    load,
    metric_label,
    one_line_errors,
    save,
    suptitle_above_axes,
    title,
)

DEFAULT_METRICS = ("train_loss", "test_err")
CMAP = "jet_r"
FLOOR_RATIO = 1e-3  # lowest level at least vmax / 1000
LABEL_BOX = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75)


def log_levels(values: np.ndarray, vmax: float, n: int = 12) -> np.ndarray:
    """`n` log-spaced levels from a floor to vmax; floor = max(finite min, vmax * 1e-3)."""
    finite = values[np.isfinite(values)]
    floor = vmax * FLOOR_RATIO
    if finite.size and floor < finite.min() < vmax:
        floor = float(finite.min())
    return np.logspace(np.log10(floor), np.log10(vmax), n)


def clip_to_levels(values: np.ndarray, levels: np.ndarray) -> np.ma.MaskedArray:
    """Values as a masked array (NaN masked), clipped into [levels[0], levels[-1]]."""
    return np.ma.clip(np.ma.masked_invalid(values), levels[0], levels[-1])


def point_style(name: str) -> dict:
    """Marker style of a named point: SWA star, SGD circle, FGE triangle, epoch square."""
    low = name.lower()
    if "swa" in low:
        return dict(marker="*", s=260, c=COLORS["swa"], edgecolors="white", linewidths=1.5)
    if "sgd" in low:
        return dict(marker="o", s=110, c=COLORS["sgd"], edgecolors="white", linewidths=1.5)
    if "fge" in low:
        return dict(marker="^", s=80, c="black", edgecolors="white", linewidths=0.8)
    if "epoch" in low:
        return dict(marker="s", s=70, c="tab:purple", edgecolors="white", linewidths=0.8)
    return dict(marker="D", s=55, c="white", edgecolors="black", linewidths=1.0)


def display_names(data: dict) -> list[str]:
    """Point labels: config "labels" (a list, or a dict keyed by point name) else the names."""
    names = [str(n) for n in data.get("point_names", [])]
    labels = data["config"].get("labels")
    if isinstance(labels, list) and len(labels) == len(names):
        return [str(label) for label in labels]
    if isinstance(labels, dict):
        return [str(labels.get(n, n)) for n in names]
    return names


def draw_panel(
    fig: Figure,
    ax: Axes,
    data: dict,
    metric: str,
    vmax: float | None = None,
    n_levels: int = 12,
) -> None:
    """One metric of a plane .npz (as returned by plot_common.load) on `ax`, with colorbar."""
    x, y = data["x"], data["y"]
    values = np.array(data[metric], dtype=float)  # a copy: the input stays as it is
    if "done" in data:
        values[~np.asarray(data["done"], dtype=bool)] = np.nan
    ax.set_title(metric_label(metric), fontsize=10)
    if not np.isfinite(values).any():
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        return
    vmax = METRICS.get(metric, ("", 0.0))[1] if vmax is None else vmax
    if not vmax:  # metric without a paper scale: its own maximum
        vmax = float(np.nanmax(values))
    levels = log_levels(values, vmax, n_levels)
    z = clip_to_levels(values, levels).T  # [i_x, j_y] -> rows are y

    # one evenly spaced colour per band (as the authors' BoundaryNorm), not linear in value
    norm = BoundaryNorm(levels, ncolors=colormaps[CMAP].N)
    filled = ax.contourf(x, y, z, levels=levels, cmap=CMAP, norm=norm, zorder=0)
    ax.contour(x, y, z, levels=levels, colors="black", linewidths=0.5, alpha=0.45, zorder=1)

    flat = np.ptp(y) < 0.5 * np.ptp(x)
    draw_colorbar(fig, ax, filled, levels, flat, above_vmax=np.nanmax(values) > vmax)
    if "trajectory_xy" in data:
        draw_trajectory(ax, data)
    draw_points(ax, data)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("distance along u")
    ax.set_ylabel("distance along v")


def draw_colorbar(
    fig: Figure, ax: Axes, filled, levels: np.ndarray, flat: bool, above_vmax: bool
) -> None:
    """The colorbar beside `ax`: at most 7 ticks (4 on a flat panel) ending at vmax, marked
    ">=" when values above vmax were drawn as vmax."""
    cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.08)
    bar = fig.colorbar(filled, cax=cax)
    max_ticks = 4 if flat else 7
    ticks = levels[:: int(np.ceil(len(levels) / max_ticks))]
    if ticks[-1] != levels[-1]:
        ticks = np.append(ticks[:-1], levels[-1])
    bar.set_ticks(ticks)
    labels = [f"{t:.2g}" for t in ticks]
    if above_vmax:
        labels[-1] = f"$\\geq${labels[-1]}"
    bar.set_ticklabels(labels)
    bar.ax.tick_params(labelsize=8)


def draw_points(ax: Axes, data: dict) -> None:
    """A marker and a label (on the inner side) for every named point of the plane."""
    x, y = data["x"], data["y"]
    names = [str(n) for n in data.get("point_names", [])]
    xy = np.asarray(data.get("point_xy", np.zeros((0, 2))))
    for name, label, (px, py) in zip(names, display_names(data), xy, strict=True):
        ax.scatter([px], [py], zorder=4, **point_style(name))
        right = px > x[0] + 0.65 * (x[-1] - x[0])
        top = py > y[0] + 0.8 * (y[-1] - y[0])
        ax.annotate(
            label,
            (px, py),
            xytext=(-7 if right else 7, -7 if top else 7),
            textcoords="offset points",
            ha="right" if right else "left",
            va="top" if top else "bottom",
            fontsize=8,
            zorder=5,
            bbox=LABEL_BOX,
        )


def draw_trajectory(ax: Axes, data: dict) -> None:
    """The trajectory polyline with small dots, its first and last epochs labelled."""
    traj = np.asarray(data["trajectory_xy"])
    halo = [patheffects.Stroke(linewidth=2.4, foreground="white"), patheffects.Normal()]
    ax.plot(traj[:, 0], traj[:, 1], "-", color="black", lw=0.9, zorder=2, path_effects=halo)
    ax.plot(traj[:, 0], traj[:, 1], "o", color="white", mec="black", mew=0.5, ms=3, zorder=3)
    epochs = data.get("trajectory_epochs")
    if epochs is not None and len(epochs):
        for k in (0, len(traj) - 1):
            ax.annotate(
                f"ep {int(epochs[k])}",
                tuple(traj[k]),
                xytext=(-4, -11),
                textcoords="offset points",
                fontsize=7,
                ha="right",
                zorder=5,
                bbox=LABEL_BOX,
            )


def panel_height(data: dict, width: float = 5.4) -> float:
    """Figure height (inches) of one row of `width`-inch panels of equal aspect."""
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    aspect = float(np.ptp(y) / np.ptp(x)) if np.ptp(x) > 0 else 1.0
    return (width - 1.6) * min(max(aspect, 0.25), 2.5) + 1.3


def parse_vmax(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        metric, _, value = item.partition("=")
        try:
            out[metric] = float(value)
        except ValueError:
            raise PlotInputError(f"--vmax takes METRIC=VALUE, got {item!r}") from None
    return out


def draw(
    plane: Path,
    out: Path,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    vmax: dict[str, float] | None = None,
    n_levels: int = 12,
) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(plane, "plane", ("x", "y", *metrics))
    vmax = vmax or {}
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.4 * len(metrics), panel_height(data)), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        draw_panel(fig, ax, data, metric, vmax.get(metric), n_levels)
    what = "Trajectory plane" if "trajectory_xy" in data else "Plane"
    fig.tight_layout()
    suptitle_above_axes(fig, title(data["config"], what))
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plane", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/plane.png"))
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--vmax", nargs="*", default=[], metavar="METRIC=VALUE")
    parser.add_argument("--levels", type=int, default=12)
    args = parser.parse_args()
    for path in draw(args.plane, args.out, args.metrics, parse_vmax(args.vmax), args.levels):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
