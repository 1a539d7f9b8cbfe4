"""Line figure: train loss and test error on the line from w_SWA through w_SGD.

    python plots/line.py LINE.npz --out figures/line.png

Reads a line .npz (nothing is computed here): train loss (L2-regularised, left axis) and
test error (right axis) against the signed distance from w_SWA (positive towards w_SGD),
with w_SWA (distance 0) and w_SGD (`sgd_distance`) marked by vertical lines. Writes PNG
and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import COLORS, load, metric_label, one_line_errors, save, title  # noqa: E402

LEFT, RIGHT = "train_loss", "test_err"
LEFT_COLOR, RIGHT_COLOR = "black", "tab:green"


def draw(line: Path, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(line, "line", ("distance", "sgd_distance", LEFT, RIGHT))
    distance = np.asarray(data["distance"])
    sgd_distance = float(data["sgd_distance"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    right = ax.twinx()
    handles = ax.plot(distance, data[LEFT], "o-", color=LEFT_COLOR, ms=3, label=metric_label(LEFT))
    handles += right.plot(
        distance, data[RIGHT], "s--", color=RIGHT_COLOR, ms=3, label=metric_label(RIGHT)
    )
    handles.append(ax.axvline(0.0, color=COLORS["swa"], lw=2, alpha=0.8, label="SWA"))
    handles.append(ax.axvline(sgd_distance, color=COLORS["sgd"], lw=2, alpha=0.8, label="SGD"))
    for x, name in ((0.0, "SWA"), (sgd_distance, "SGD")):
        ax.annotate(
            name,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color=COLORS[name.lower()],
            fontweight="bold",
        )
    ax.set_xlabel("signed distance from $w_{SWA}$ (towards $w_{SGD}$)")
    ax.set_ylabel(metric_label(LEFT), color=LEFT_COLOR)
    right.set_ylabel(metric_label(RIGHT), color=RIGHT_COLOR)
    right.tick_params(axis="y", colors=RIGHT_COLOR)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8)
    ax.set_title(title(data["config"], "Line from SWA to SGD"), pad=16)
    fig.tight_layout()
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("line", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/line.png"))
    args = parser.parse_args()
    for path in draw(args.line, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
