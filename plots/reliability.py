"""Reliability diagrams (Guo et al., ICML 2017, Fig. 1): per confidence bin the accuracy of the
predictions whose top-1 confidence falls in it, against the diagonal of perfect calibration,
with each bin's count; before and after temperature scaling.

    python plots/reliability.py SOURCE[:MODEL,...] [SOURCE[:MODEL,...] ...] --out figures/reliability.png

SOURCE: a run directory (its calibration.json, written at the end of the run), a posterior
folder (RUN_DIR/posterior/<checkpoint>, written by python -m swa_repro.posterior) or a
calibration.json itself. MODEL: the models of that file to draw (sgd, swa, ema_0.999,
swag_diag, swag, ...); default: all of them. One column per model (named with its run's
method when two sources have the same model); the top row before
temperature scaling, the bottom row after it when the run had a held-out split (otherwise the
panel says why not). The bins are the file's: 15 equal-width bins over (0, 1], stated in the
title. Nothing is computed here. Writes PNG and PDF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_common import (  # noqa: E402
    PlotInputError,
    one_line_errors,
    read_json,
    require,
    save,
    suptitle_above_axes,
    title,
)

EXPECTED = "a calibration.json of a finished run or of python -m swa_repro.posterior"


def read_source(spec: str) -> tuple[Path, dict, list[str]]:
    """(path, calibration document, models to draw) of "SOURCE[:MODEL,...]"."""
    source, _, models = spec.partition(":")
    path = Path(source)
    if path.is_dir():
        path = path / "calibration.json"
    document = read_json(path, EXPECTED)
    require(document, ("models", "binning"), path, EXPECTED)
    chosen = models.split(",") if models else list(document["models"])
    unknown = [m for m in chosen if m not in document["models"]]
    if unknown:
        raise PlotInputError(
            f"{path} has no model {', '.join(unknown)}; it has {', '.join(document['models'])}"
        )
    return path, document, chosen


def draw_panel(ax, counts_ax, reliability: dict, metrics: dict, heading: str) -> None:
    """Bars: the accuracy of each non-empty bin over its width, a dot at its mean confidence;
    below, the bin's count."""
    edges, counts = reliability["edges"], reliability["count"]
    lefts, widths = edges[:-1], [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    shown = [i for i, count in enumerate(counts) if count]
    ax.bar([lefts[i] for i in shown], [reliability["accuracy"][i] for i in shown],
           width=[widths[i] for i in shown], align="edge", color="tab:blue", alpha=0.75,
           edgecolor="black", linewidth=0.4)  # fmt: skip
    ax.plot([reliability["confidence"][i] for i in shown],
            [reliability["accuracy"][i] for i in shown], "o", color="tab:red", markersize=2.5)  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", xticklabels=[])
    ax.set_title(
        f"{heading}\nacc {metrics['acc']:.2f}%  ECE {metrics['ece']:.4f}  NLL {metrics['nll']:.3f}",
        fontsize=8,
    )
    counts_ax.bar(lefts, counts, width=widths, align="edge", color="gray", edgecolor="black",
                  linewidth=0.4)  # fmt: skip
    for left, width, count in zip(lefts, widths, counts, strict=True):
        if count:
            counts_ax.text(left + width / 2, count, str(count), ha="center", va="bottom",
                           fontsize=5, rotation=90)  # fmt: skip
    counts_ax.set(xlim=(0, 1), xlabel="confidence", ylabel="images")
    counts_ax.set_ylim(0, max(counts) * 1.45 if max(counts) else 1)


def draw(specs: list[str], out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    columns, binning, run = [], None, {}
    for number, spec in enumerate(specs, start=1):
        path, document, models = read_source(spec)
        binning, run = binning or document["binning"], run or document.get("run", {})
        method = document.get("run", {}).get("method", f"source {number}")
        columns += [(model, method, document["models"][model]) for model in models]
    repeated = {m for m, *_ in columns if sum(m == other for other, *_ in columns) > 1}
    columns = [(f"{m} ({method} run)" if m in repeated else m, r) for m, method, r in columns]
    scaled = any(record.get("scaled") for _, record in columns)
    ratios = [3, 1] * (2 if scaled else 1)
    fig, axes = plt.subplots(
        len(ratios), len(columns), figsize=(2.8 * len(columns), 3.4 * len(ratios) / 2),
        squeeze=False, gridspec_kw={"height_ratios": ratios},
    )  # fmt: skip
    for column, (model, record) in enumerate(columns):
        draw_panel(
            axes[0][column], axes[1][column], record["reliability"], record["metrics"], model
        )
        if not scaled:
            continue
        if record.get("scaled"):
            heading = f"{model}, T = {record['temperature']:.3f}"
            reliability, metrics = record["scaled"]["reliability"], record["scaled"]["metrics"]
            draw_panel(axes[2][column], axes[3][column], reliability, metrics, heading)
        else:
            for ax in (axes[2][column], axes[3][column]):
                ax.axis("off")
            axes[2][column].set_title(f"{model}: not scaled", fontsize=8)
    reasons = sorted({r["reason"] for _, r in columns if r.get("reason")})
    notes = [f"bins: {binning}", *(f"temperature scaling: {reason}" for reason in reasons)]
    fig.tight_layout()
    fig.text(0.5, 0, "\n".join(notes), ha="center", va="top", fontsize=8)
    rows = "before (top) and after temperature scaling" if scaled else "before temperature scaling"
    suptitle_above_axes(fig, title(run, f"Reliability diagrams, {rows}"))
    return save(fig, out)


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE[:MODEL,...]")
    parser.add_argument("--out", type=Path, default=Path("figures/reliability.png"))
    args = parser.parse_args()
    for path in draw(args.sources, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
