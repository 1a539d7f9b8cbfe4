"""Filter-normalised loss surfaces (Li et al. 2018) around each origin, side by side on one
colour scale.

    python plots/around.py AROUND.npz --out figures/around.png [--metric train_nll] [--vmax 5]

Reads an around .npz (nothing is computed): one panel per origin, filled contours of the metric
over the plane w + a d1 + b d2 on log-spaced levels shared by every panel (plane.log_levels:
from a floor to vmax, default the largest value drawn; values above vmax drawn as vmax), one
colour bar for all, the origin marked at (0, 0). Rows not done are left blank. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plane import CMAP, clip_to_levels, log_levels, point_style  # noqa: E402
from plot_common import (  # noqa: E402
    PlotInputError,
    load,
    metric_label,
    one_line_errors,
    save,
    title,
)

DEFAULT_METRIC = "train_nll"


def panels(data: dict, metric: str) -> np.ndarray:
    """The metric (O, G, G) with the rows not done set to NaN (a copy)."""
    values = np.array(data[metric], dtype=float)
    values[~np.asarray(data["done"], dtype=bool)] = np.nan
    return values


def draw(
    around: Path, out: Path, metric: str = DEFAULT_METRIC, vmax: float | None = None, n_levels=12
) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(around, "around", ("origins", "a", "b", "done", metric))
    values = panels(data, metric)
    if not np.isfinite(values).any():
        raise PlotInputError(f"{around} has no finished row; run the around analysis on")
    vmax = float(np.nanmax(values)) if vmax is None else vmax
    levels = log_levels(values, vmax, n_levels)
    norm = BoundaryNorm(levels, ncolors=colormaps[CMAP].N)
    a, b = np.asarray(data["a"]), np.asarray(data["b"])
    origins = [str(o) for o in data["origins"]]
    fig, axes = plt.subplots(1, len(origins), figsize=(4.4 * len(origins) + 0.8, 4.2),
                             squeeze=False)  # fmt: skip
    for ax, name, panel in zip(axes[0], origins, values, strict=True):
        z = clip_to_levels(panel, levels).T  # [i_a, j_b] -> rows are b
        filled = ax.contourf(a, b, z, levels=levels, cmap=CMAP, norm=norm)
        ax.contour(a, b, z, levels=levels, colors="black", linewidths=0.5, alpha=0.45)
        ax.scatter([0.0], [0.0], zorder=4, **point_style(name))
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("a (filter-normalised d1)")
    axes[0][0].set_ylabel("b (filter-normalised d2)")
    bar = fig.colorbar(filled, ax=list(axes[0]), fraction=0.046 / len(origins) ** 0.5)
    bar.set_label(metric_label(metric))
    bar.set_ticks(levels[::2])
    bar.set_ticklabels([f"{t:.2g}" for t in levels[::2]])
    fig.suptitle(title(data["config"], f"{metric_label(metric)} around each solution"))
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("around", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/around.png"))
    parser.add_argument("--metric", default=DEFAULT_METRIC)
    parser.add_argument("--vmax", type=float, default=None)
    parser.add_argument("--levels", type=int, default=12)
    args = parser.parse_args()
    for path in draw(args.around, args.out, args.metric, args.vmax, args.levels):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
