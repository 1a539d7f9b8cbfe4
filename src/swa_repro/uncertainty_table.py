"""The comparison beyond the paper: SGD, EMA, SWA, SWAG-Diag and SWAG from the Table 1 runs,
with accuracy, NLL, ECE and Brier, before and after temperature scaling, beside published values.

    python -m swa_repro.aggregate uncertainty --dataset cifar100 [--runs runs]
        [--heldout-runs runs/heldout] [--models vgg16,...] [--seeds 0,1,2] [--out DIR]

Writes <out>/uncertainty_<dataset>.md and .csv. Per model of the data set, the rows:
    SGD, the EMA of the SGD run per decay (and, as an ablation, with its BN buffers averaged and
    not refreshed), SWA (the SWA run's final model, 1.5 budgets), the EMA of the SWA run per
    decay, SWAG-Diag and SWAG (the SWA run's Bayesian model averages), all from the runs in
    --runs (data.val_size = 0, the paper's runs); then the temperature-scaled rows, from the
    same recipes trained with a held-out split (data.val_size > 0) in --heldout-runs, whose
    temperature was fitted on that split (swa_repro.calibration), when such runs exist.
Each cell: mean ± std over the finished seeds (sample std) with n; ECE over 15 equal-width
bins (a fraction), Brier = mean over images of sum_k (p_k - y_k)^2. The numbers are each run's
summary.json "calibration" entries (the ablation rows: its "final" entries, without Brier).
Published values (experiments/paper_results.yaml, section "uncertainty", each with its source)
go beside the rows they correspond to; the SWAG code's runs train 300 epochs, so SGD (and
PreResNet164's SWA) differ in length from Table 1's: compare with care.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from swa_repro import run_files
from swa_repro.cli import check_output_folder, parse_seeds, read_json, read_yaml
from swa_repro.config_check import ConfigError
from swa_repro.run_files import RunFiles, write_tables

MODELS = ("vgg16", "preresnet110", "preresnet164", "wrn28x10")
METRICS = (("acc", 2), ("nll", 4), ("ece", 4), ("brier", 4))


@dataclass(frozen=True)
class Row:
    label: str
    method: str  # run directory: sgd or swa
    key: str  # model key in the run's summary
    scaled: bool = False  # temperature-scaled, from the held-out runs
    ablation: bool = False  # EMA with averaged BN buffers: summary "final", no Brier
    published: str | None = None  # key of paper_results.yaml's uncertainty section


@dataclass
class Cell:
    values: list[dict] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def stat(self, metric: str) -> tuple[float | None, float | None]:
        xs = [v[metric] for v in self.values if v.get(metric) is not None]
        if not xs:
            return None, None
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return mean, std


def table_rows(decays: list[str], with_scaled: bool) -> list[Row]:
    """The rows in order; `decays` as in the keys (0.999, ...)."""

    def emas(run: str) -> list[Row]:
        return [Row(f"EMA {d} of the {run.upper()} run", run, f"ema_{d}") for d in decays]

    rows = [Row("SGD", "sgd", "sgd", published="sgd"), *emas("sgd")]
    rows += [
        Row(
            f"EMA {d} of the SGD run, averaged BN, no refresh",
            "sgd",
            f"ema_{d}_bnavg",
            ablation=True,
        )
        for d in decays
    ]
    rows += [Row("SWA", "swa", "swa", published="swa"), *emas("swa")]
    rows += [Row("SWAG-Diag", "swa", "swag_diag", published="swag_diag")]
    rows += [Row("SWAG", "swa", "swag", published="swag")]
    if with_scaled:
        rows += [
            Row(f"{r.label}, temperature-scaled", r.method, r.key, scaled=True,
                published="swa_temp" if r.key == "swa" else None)
            for r in rows if not r.ablation
        ]  # fmt: skip
    return rows


def reading(summary: dict, row: Row) -> dict | None:
    """The metrics of `row` in one run's summary (None: the run has no such model)."""
    if row.ablation:
        return summary.get("final", {}).get(row.key)
    record = summary.get("calibration", {}).get(row.key)
    if record is None:
        return None
    return record["scaled"] if row.scaled else record["test"]


def read_summary(run_dir: Path) -> dict:
    summary = read_json(run_dir / "summary.json", "run summary")
    if not isinstance(summary, dict) or "final" not in summary:
        raise ConfigError(f"{run_dir / 'summary.json'} is not a run summary")
    return summary


def build(dataset: str, runs: Path, heldout: Path, models, seeds) -> dict[str, dict[Row, Cell]]:
    """model -> row -> Cell, the rows' EMA decays those the finished runs hold."""
    summaries = {}
    for folder in (runs, heldout):
        for model in models:
            for method in ("sgd", "swa"):
                for seed in seeds:
                    run_dir = run_files.run_dir(folder, dataset, model, method, seed)
                    status = RunFiles(run_dir).status()
                    found = read_summary(run_dir) if status.state == "finished" else str(status)
                    summaries[folder, model, method, seed] = found
    decays = ema_decays(s for s in summaries.values() if isinstance(s, dict))
    with_scaled = any(
        isinstance(s, dict) for (where, *_), s in summaries.items() if where == heldout
    )
    out = {}
    for model in models:
        out[model] = {}
        for row in table_rows(decays, with_scaled):
            cell = Cell()
            for seed in seeds:
                found = summaries[heldout if row.scaled else runs, model, row.method, seed]
                value = reading(found, row) if isinstance(found, dict) else None
                if value is not None:
                    cell.values.append(value)
                else:
                    why = found if isinstance(found, str) else "no such model in its summary"
                    cell.pending.append(f"seed {seed}: {why}")
            out[model][row] = cell
    return out


def ema_decays(summaries) -> list[str]:
    keys = {k for s in summaries for k in s.get("calibration", {}) if k.startswith("ema_")}
    return sorted((k.removeprefix("ema_") for k in keys), key=float)


def published(paper: dict, dataset: str, model: str, row: Row) -> str:
    """The published values of a row: "NLL 0.95 ± 0.02 [swag_readme]; acc 80.76 [ub_cifar]"."""
    entry = paper.get(dataset, {}).get(model, {}).get(row.published or "", {})
    parts = []
    for metric, by_source in entry.items():
        for source, (mean, std) in by_source.items():
            spread = "" if std is None else f" ± {std:g}"
            parts.append(
                f"{metric.upper() if metric == 'nll' else metric} {mean:g}{spread} [{source}]"
            )
    return "; ".join(parts)


def fmt(cell: Cell, metric: str, digits: int) -> str:
    mean, std = cell.stat(metric)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def to_markdown(dataset: str, table: dict, paper: dict) -> str:
    lines = [
        f"### Beyond the paper: {dataset}, SGD / EMA / SWA / SWAG with calibration",
        "",
        "mean ± std over seeds (n); acc in %, NLL a mean over test images, ECE over 15 equal-width "
        "confidence bins (a fraction), Brier = mean of sum_k (p_k - y_k)^2. Temperature-scaled rows: "
        "the same recipes with a held-out split (data.val_size), T fitted there.",
        "",
    ]
    for model, rows in table.items():
        lines += [f"#### {model}", "", "| model | n | acc % | NLL | ECE | Brier | published |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row, cell in rows.items():
            values = " | ".join(fmt(cell, m, d) for m, d in METRICS)
            lines.append(
                f"| {row.label} | {len(cell.values)} | {values} | {published(paper, dataset, model, row)} |"
            )
        lines.append("")
    lines += [f"[{k}]: {v}" for k, v in paper.get("sources", {}).items()]
    if paper.get("left_out"):
        lines.append(f"Left out: {paper['left_out']}.")
    pending = [
        f"- {model} {row.label}: {p}"
        for model, rows in table.items()
        for row, cell in rows.items()
        for p in cell.pending
    ]
    if pending:
        lines += ["", "Not included:", *pending]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["dataset", "model", "row", "model_key", "temperature_scaled", "n",
              *(f"{m}_{s}" for m, _ in METRICS for s in ("mean", "std")), "published", "pending"]  # fmt: skip


def to_csv(dataset: str, table: dict, paper: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for model, rows in table.items():
        for row, cell in rows.items():
            stats = {f"{m}_mean": cell.stat(m)[0] for m, _ in METRICS}
            stats.update({f"{m}_std": cell.stat(m)[1] for m, _ in METRICS})
            writer.writerow({
                "dataset": dataset, "model": model, "row": row.label, "model_key": row.key,
                "temperature_scaled": row.scaled, "n": len(cell.values), **stats,
                "published": published(paper, dataset, model, row), "pending": "; ".join(cell.pending),
            })  # fmt: skip
    return buffer.getvalue()


def main(argv: list[str], paper_file: Path, default_out: Path) -> None:
    """The `uncertainty` table of `python -m swa_repro.aggregate` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m swa_repro.aggregate uncertainty")
    parser.add_argument("--dataset", required=True, choices=("cifar10", "cifar100", "synthetic"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--heldout-runs", type=Path, default=None, help="default: RUNS/heldout")
    parser.add_argument(
        "--models", default=None, help=f"comma-separated (default: {','.join(MODELS)})"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--paper", type=Path, default=paper_file)
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else list(MODELS)
    seeds = parse_seeds(args.seeds)
    check_output_folder(args.out, f"--out {args.out}")
    paper = OmegaConf.to_container(read_yaml(args.paper, "--paper")).get("uncertainty", {})
    heldout = args.heldout_runs or args.runs / "heldout"
    table = build(args.dataset, args.runs, heldout, models, seeds)
    markdown, csv_text = to_markdown(args.dataset, table, paper), to_csv(args.dataset, table, paper)
    write_tables(args.out, f"uncertainty_{args.dataset}", markdown, csv_text)
