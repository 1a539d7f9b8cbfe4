"""Offline demo: SGD vs SWA on synthetic CIFAR-shaped data, on CPU in a few minutes.

    python -m swa_repro.demo [paths.runs=runs] [any other override of python -m swa_repro.train]
    python -m swa_repro.demo --help

Runs experiment=synthetic/small_cnn_sgd and synthetic/small_cnn_swa (each resumes or is skipped when
already done) and prints their test metrics side by side: the paper's comparison, then the same
runs beyond the paper (the EMA of each run's weights, SWAG-Diag and SWAG model averages, with the
Brier score). `make demo` then draws the convergence figure with plots/convergence.py and the
reliability diagrams with plots/reliability.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from swa_repro.cli import one_line_errors
from swa_repro.compose import check_overrides, compose_config
from swa_repro.report import metrics_table, model_label
from swa_repro.run_files import RunFiles
from swa_repro.train import train_and_report

USAGE = "python -m swa_repro.demo [key=value ...]   (overrides of python -m swa_repro.train)"


def run_demo(overrides: list[str]) -> tuple[dict, dict]:
    """Both runs, with `python -m swa_repro.train`'s outcomes (exit 2/3/75, failed.json)."""
    summaries = []
    for method in ("sgd", "swa"):
        cfg = compose_config([f"experiment=synthetic/small_cnn_{method}", *overrides])
        run_dir = Path(cfg.paths.runs) / cfg.name
        print(f"\n=== demo: {method.upper()} -> {run_dir}")
        summaries.append(train_and_report(cfg, RunFiles(run_dir)))
    return summaries[0], summaries[1]


def comparison_table(sgd: dict, swa: dict) -> str:
    rows = [(f"SGD ({sgd['epochs']} epochs)", sgd["final"]["sgd"])]
    rows += [
        (f"{r['model'].upper()} {label} budget ({r['epoch']} epochs)", r)
        for label, r in swa["budgets"].items()
    ]
    header = f"SYNTHETIC DATA (not CIFAR) | {sgd['model']} | budget {sgd['budget']} epochs | seed {sgd['seed']}"
    lines = [header, metrics_table(rows)]
    gain = swa["final"]["swa"]["acc"] - sgd["final"]["sgd"]["acc"]
    lines.append(f"SWA (1.5 budgets) - SGD: {gain:+.2f} accuracy points")
    return "\n".join(lines)


def beyond_rows(summary: dict, run: str) -> list[tuple[str, dict]]:
    """The final models of one run with their Brier score: the run's own model (SGD or SWA),
    each EMA, the SWAG model averages."""
    final, calibration = summary["final"], summary.get("calibration", {})
    epochs, rows = summary["epochs"], []
    for key, metrics in final.items():
        if metrics is None or key.endswith("_bnavg") or (run == "SWA" and key == "sgd"):
            continue
        brier = (calibration.get(key) or {}).get("test", {}).get("brier", float("nan"))
        label = f"{model_label(key)} of {run} run" if key.startswith("ema_") else model_label(key)
        samples = f", {metrics['samples']} samples" if "samples" in metrics else ""
        rows.append((f"{label} ({epochs} ep{samples})", {**metrics, "brier": brier}))
    return rows


def beyond_table(sgd: dict, swa: dict) -> str:
    """The same two runs beyond the paper: EMA, SWAG-Diag, SWAG beside SGD and SWA."""
    rows = beyond_rows(sgd, "SGD") + beyond_rows(swa, "SWA")
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'':<{width}}{'test acc %':>11}{'NLL':>9}{'ECE':>8}{'Brier':>8}"]
    for label, m in rows:
        values = f"{m['acc']:>11.2f}{m['nll']:>9.4f}{m['ece']:>8.4f}{m['brier']:>8.4f}"
        lines.append(f"{label:<{width}}{values}")
    first = next(iter(swa.get("calibration", {}).values()), {})
    if first and first["temperature"] is None:
        lines.append(f"temperature scaling not available: {first['reason']}")
    return "\n".join(["Beyond the paper, from the same runs (ECE: 15 equal-width bins)", *lines])


@one_line_errors
def main(argv: list[str]) -> None:
    if "--help" in argv or "-h" in argv:
        print(f"usage: {USAGE}\n\n{__doc__.strip()}")
        return
    check_overrides(argv)
    sgd, swa = run_demo(argv)
    print("\n" + comparison_table(sgd, swa))
    print("\n" + beyond_table(sgd, swa))


if __name__ == "__main__":
    main(sys.argv[1:])
