"""Width figure: train loss and test error along random rays from w_SWA, w_SGD and any other
origin (the EMAs).

    python plots/rays.py RAYS.npz --out figures/rays.png [--metrics train_loss test_err]

Reads a rays .npz (nothing is computed beyond the mean over directions): one panel per
metric against the distance t along each ray; every random direction is a thin line, the
mean over directions is bold, SWA red and SGD blue. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import COLORS, load, metric_label, one_line_errors, save, title  # noqa: E402

DEFAULT_METRICS = ("train_loss", "test_err")
OTHER_COLORS = ("tab:green", "tab:orange", "tab:purple", "tab:brown")


def origin_color(name: str, k: int) -> str:
    return COLORS.get(name.lower(), OTHER_COLORS[k % len(OTHER_COLORS)])


def draw(
    rays: Path, out: Path, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS
) -> list[Path]:
    import matplotlib.pyplot as plt

    data = load(rays, "rays", ("distances", "origins", *metrics))
    t = np.asarray(data["distances"])
    origins = [str(o) for o in data["origins"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = np.asarray(data[metric])  # (origins, directions, distances)
        for k, origin in enumerate(origins):
            color = origin_color(origin, k)
            for ray in values[k]:
                ax.plot(t, ray, "-", color=color, lw=0.7, alpha=0.3)
            with warnings.catch_warnings():  # all-NaN columns stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values[k], axis=0)
            n_rays = values.shape[1]
            ax.plot(t, mean, "-", color=color, lw=2.4, label=f"{origin.upper()} (mean of {n_rays})")
        ax.set_xlabel("distance along a random direction")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(metric_label(metric), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title(data["config"], "Width along random rays"))
    fig.tight_layout()
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rays", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/rays.png"))
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    args = parser.parse_args()
    for path in draw(args.rays, args.out, args.metrics):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
