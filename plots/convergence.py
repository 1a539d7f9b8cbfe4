"""Convergence figure: test accuracy per evaluated epoch for SGD and SWA, with the LR.

    python plots/convergence.py RUN_DIR [RUN_DIR ...] --out figures/convergence.png

Reads each run's metrics.jsonl and summary.json (nothing is computed here). For an SWA
run both its averaged model and its own SGD iterate are drawn; the learning rate of
every run goes on the right-hand axis. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import COLORS, one_line_errors, read_json, require, save  # noqa: E402
from swa_repro.layout import RunPaths  # noqa: E402  (on the path through plot_common)

SUMMARY_KEYS = ("method", "lr_curve", "synthetic", "model", "data")


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    expected = "a finished run directory of python -m swa_repro.train"
    paths = RunPaths(run_dir)
    metrics = read_json(paths.metrics, expected, lines=True)
    summary = read_json(paths.summary, expected)
    require(summary, SUMMARY_KEYS, paths.summary, expected)
    return metrics, summary


def draw(run_dirs: list[Path], out: Path) -> list[Path]:
    import matplotlib.pyplot as plt  # after plot_common chose the Agg backend

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lr_ax = ax.twinx()
    title = None
    for run_dir in run_dirs:
        metrics, summary = read_run(run_dir)
        method = summary["method"]
        color = COLORS.get(method, None)
        epochs = [m["epoch"] for m in metrics]
        if method == "swa":
            ax.plot(
                epochs,
                [m["test_acc"] for m in metrics],
                ":",
                color=color,
                alpha=0.6,
                label="SGD iterate of the SWA run",
            )
            swa = [(m["epoch"], m["swa_test_acc"]) for m in metrics if "swa_test_acc" in m]
            ax.plot(*zip(*swa, strict=True), "o-", color=color, ms=3, label="SWA")
        else:
            ax.plot(
                epochs,
                [m["test_acc"] for m in metrics],
                "o-",
                color=color,
                ms=3,
                label=method.upper(),
            )
        lr_curve = summary["lr_curve"]
        lr_ax.plot(range(1, len(lr_curve) + 1), lr_curve, "--", color=color, lw=1, alpha=0.5)
        tag = " (SYNTHETIC DATA)" if summary["synthetic"] else ""
        title = f"{summary['model']} on {summary['data']}{tag}"
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    lr_ax.set_ylabel("learning rate (dashed)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("figures/convergence.png"))
    args = parser.parse_args()
    for path in draw(args.run_dirs, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
