"""Trajectory figure (paper Figure 2): SGD trajectories on the plane through their points.

    python plots/trajectory.py CYCLIC.npz [CONSTANT.npz ...] --out figures/trajectory.png
        [--metrics train_loss test_err] [--vmax test_err=40] [--levels 12]

Each input is a trajectory plane .npz (a plane .npz with `trajectory_xy` and
`trajectory_epochs`); it gets one row, one panel per metric, drawn by plane.py's
draw_panel: filled log-level contours, the trajectory as a polyline with small dots, and
the named points. The row is named by the config's "label" (or "name", else the file
name). Nothing is computed here. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plane import DEFAULT_METRICS, draw_panel, panel_height, parse_vmax  # noqa: E402
from plot_common import (  # noqa: E402
    load,
    metric_label,
    one_line_errors,
    save,
    suptitle_above_axes,
    title,
)


def row_name(data: dict, path: Path) -> str:
    config = data["config"]
    for key in ("label", "name"):
        if isinstance(config.get(key), str) and config[key]:
            return config[key]
    return path.stem


def draw(
    planes: list[Path],
    out: Path,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    vmax: dict[str, float] | None = None,
    n_levels: int = 12,
) -> list[Path]:
    import matplotlib.pyplot as plt

    vmax = vmax or {}
    datas = [load(path, "trajectory", ("x", "y", "trajectory_xy", *metrics)) for path in planes]
    fig, axes = plt.subplots(
        len(planes),
        len(metrics),
        figsize=(5.4 * len(metrics), sum(panel_height(data) for data in datas)),
        squeeze=False,
    )
    config: dict = {}
    for row, path, data in zip(axes, planes, datas, strict=True):
        config = config or data["config"]
        for ax, metric in zip(row, metrics, strict=True):
            draw_panel(fig, ax, data, metric, vmax.get(metric), n_levels)
            ax.set_title(f"{row_name(data, path)}: {metric_label(metric)}", fontsize=10)
    fig.tight_layout()
    suptitle_above_axes(fig, title(config, "SGD trajectories"))
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("planes", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/trajectory.png"))
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--vmax", nargs="*", default=[], metavar="METRIC=VALUE")
    parser.add_argument("--levels", type=int, default=12)
    args = parser.parse_args()
    for path in draw(args.planes, args.out, args.metrics, parse_vmax(args.vmax), args.levels):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
