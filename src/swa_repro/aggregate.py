"""Aggregate finished runs into the paper's tables, with the paper's numbers beside ours.

    python -m swa_repro.aggregate table1 --dataset cifar100 [--runs runs] [--models ...] [--seeds 0,1,2]
    python -m swa_repro.aggregate fixed_lr --dataset cifar100
    python -m swa_repro.aggregate table2 --dataset imagenet
    python -m swa_repro.aggregate uncertainty --dataset cifar100   (swa_repro.uncertainty_table)
    python -m swa_repro.aggregate sharpness --dataset cifar100     (swa_repro.sharpness_table)

Rows: the models the data set's experiment configs define for the table (or --models).
Reads the summary.json of each cell's runs (swa_repro.table_runs: the experiment's run
directory under --runs, the runs' config = the experiment's + --extra) and writes
<table>_<dataset>.md and .csv (table2.md / .csv for ImageNet) into --out, by default
experiments/results/ (RESULTS_DIR: the one results folder of aggregate, the sweeps and their
make targets). Each cell: mean +- std over seeds (sample std, ddof=1) with n, the paper's
value, the difference, and "!" where |difference| > 2 sqrt(std_ours^2 + std_paper^2), a
missing std counting as 0 (no mark when neither std is known: one seed against a value
published without spread). Runs not included are listed under the table with their cause:
"running (epoch e/E)" (or interrupted), "failed" (with failed.json's error), "missing", a
reading the run lacks, or a directory holding a run of another config (with the keys that
differ) - never as numbers. The last makes the command exit 1 after writing the table: a
table must not look complete while a cell's directory holds some other run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from swa_repro import REPO_ROOT, sharpness_table, uncertainty_table
from swa_repro.cli import check_output_folder, one_line_errors, parse_seeds, read_json, read_yaml
from swa_repro.config_check import ConfigError
from swa_repro.layout import RunPaths
from swa_repro.run_files import RunStatus, write_tables, write_text_atomic
from swa_repro.table_runs import TableRun, check_models, experiment_name, table_models

PAPER_FILE = REPO_ROOT / "experiments" / "paper_results.yaml"
RESULTS_DIR = REPO_ROOT / "experiments" / "results"  # tables of aggregate and the sweeps
EXIT_OTHER_CONFIG = 1  # a cell's run directory holds a run of another config
TITLES = {"table1": "Table 1", "fixed_lr": "Fixed learning rate (section 4.4)", "table2": "Table 2"}
SINGLE_DATASET = {"table2": "imagenet"}  # tables of one data set are named without it


def result_name(table: str, dataset: str) -> str:
    """File stem and README key of a table: table1_cifar100, fixed_lr_cifar100, table2."""
    return table if SINGLE_DATASET.get(table) == dataset else f"{table}_{dataset}"


@dataclass(frozen=True)
class Column:
    label: str  # as printed
    method: str  # the experiment's method: sgd or swa
    paper_key: str  # key in paper_results.yaml
    reading: str  # "final_sgd", "final_swa", "initial" or a budget label ("1", "1.25", "1.5") of the SWA model


TABLES = {
    "table1": [
        Column("SGD", "sgd", "sgd", "final_sgd"),
        Column("SWA 1 budget", "swa", "swa_1", "1"),
        Column("SWA 1.25 budgets", "swa", "swa_1.25", "1.25"),
        Column("SWA 1.5 budgets", "swa", "swa_1.5", "1.5"),
    ],
    "fixed_lr": [
        Column("SGD, fixed LR", "sgd", "sgd", "final_sgd"),
        Column("SWA, fixed LR", "swa", "swa", "final_swa"),
    ],
    # ImageNet: the SGD column is the pretrained model, evaluated at the start of the SWA run.
    "table2": [
        Column("SGD (pretrained)", "swa", "sgd", "initial"),
        Column("SWA 5 epochs", "swa", "swa_5", "5"),
        Column("SWA 10 epochs", "swa", "swa_10", "10"),
    ],
}


@dataclass
class Cell:
    values: list[dict]  # acc/nll/ece of each finished seed
    pending: list[str]  # "seed 1: running (epoch 40/300)", "seed 2: missing"
    paper: tuple[float, float | None] | None
    fast_paths: set[str] = field(default_factory=set)  # speed switches on in any included run
    unfinished: dict[Path, RunStatus] = field(default_factory=dict)  # run directory -> its state

    def stat(self, key: str = "acc") -> tuple[float | None, float | None]:
        xs = [v[key] for v in self.values]
        if not xs:
            return None, None
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return mean, std

    @property
    def diff(self) -> float | None:
        mean, _ = self.stat()
        return None if mean is None or self.paper is None else mean - self.paper[0]

    @property
    def flagged(self) -> bool:
        mean, std = self.stat()
        if self.diff is None:
            return False
        spread = math.sqrt((std or 0.0) ** 2 + (self.paper[1] or 0.0) ** 2)
        return spread > 0 and abs(self.diff) > 2 * spread


def read_reading(summary: dict, reading: str) -> dict | None:
    if reading in ("final_sgd", "final_swa"):
        values = summary["final"][reading.split("_")[1]]
        return None if values is None else {k: values[k] for k in ("acc", "nll", "ece")}
    values = summary["budgets"].get(reading)
    return None if values is None else {k: values[f"test_{k}"] for k in ("acc", "nll", "ece")}


def sgd_stand_in(summary: dict, reading: str) -> int | None:
    """The epoch of a budget reading that an SWA run took from the SGD model (nothing averaged
    yet), which is no SWA value; None otherwise."""
    if reading in ("final_sgd", "final_swa", "initial"):
        return None
    values = summary["budgets"].get(reading) or {}
    return values["epoch"] if values.get("model") == "sgd" else None


def fast_paths_of(run_dir: Path) -> set[str]:
    """The numerics-changing speed switches a run used (empty for the faithful default)."""
    speed = read_yaml(RunPaths(run_dir).config, "run config").get("speed") or {}
    switches = {key for key in ("channels_last", "bf16", "tf32", "compile") if speed.get(key)}
    if speed.get("bn_refresh_batch_size"):
        switches.add("bn_refresh_batch_size")
    return switches


def summary_reading(run_dir: Path, reading: str) -> tuple[dict | None, int | None]:
    """read_reading and sgd_stand_in of the run's summary.json; ConfigError naming the file if
    it is no summary."""
    path = RunPaths(run_dir).summary
    summary = read_json(path, "run summary")
    try:
        return read_reading(summary, reading), sgd_stand_in(summary, reading)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a run summary ({exc!r})") from None


def build_table(
    table: str, dataset: str, runs: Path, models, seeds, paper: dict, extra=()
) -> dict[str, dict[str, Cell]]:
    """model -> column label -> Cell, from the runs of the experiments composed with `extra`."""
    paper_rows = paper.get(table, {}).get(dataset, {})
    return {
        model: {
            col.label: build_cell(
                [TableRun.of(experiment_name(table, dataset, model, col.method), seed, runs, extra)
                 for seed in seeds],
                col.reading,
                paper_rows.get(model, {}).get(col.paper_key),
            )
            for col in TABLES[table]
        }
        for model in models
    }  # fmt: skip


def build_cell(runs: list[TableRun], reading: str, paper: list | None) -> Cell:
    """The `reading` of every finished run; the others listed in `pending` with their cause."""
    cell = Cell([], [], None if paper is None else (paper[0], paper[1]))
    for run in runs:
        status = run.status()
        if status.state == "other config":
            cell.pending.append(f"seed {run.seed}: {run.run_dir} {status}")
        elif status.state != "finished":
            cell.pending.append(f"seed {run.seed}: {status}")
        if status.state != "finished":
            cell.unfinished[run.run_dir] = status
            continue
        value, stand_in = summary_reading(run.run_dir, reading)
        if stand_in is not None:
            cell.pending.append(
                f"seed {run.seed}: {reading} reading is of the SGD model "
                f"(nothing averaged by epoch {stand_in})"
            )
        elif value is None:
            cell.pending.append(f"seed {run.seed}: no {reading} reading")
        else:
            cell.values.append(value)
            cell.fast_paths |= fast_paths_of(run.run_dir)
    return cell


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def cell_markdown(cell: Cell) -> str:
    mean, std = cell.stat()
    if mean is None:
        states = {status.state for status in cell.unfinished.values()}
        for state, text in (
            ("other config", "other config (see below)"),
            ("running", "running"),
            ("failed", "failed (see below)"),
        ):
            if state in states:
                return text
        return "missing" if states == {"missing"} else "no reading"
    text = f"{_fmt(mean, std)} (n={len(cell.values)})"
    if cell.fast_paths:
        text += f" [fast paths: {', '.join(sorted(cell.fast_paths))}]"
    if cell.paper is not None:
        text += f" · paper {_fmt(*cell.paper)} · Δ {cell.diff:+.2f}{' !' if cell.flagged else ''}"
    return text


def to_markdown(table: str, dataset: str, rows: dict[str, dict[str, Cell]]) -> str:
    labels = [c.label for c in TABLES[table]]
    lines = [
        f"### {TITLES[table]}: {dataset}, test accuracy %",
        "",
        "mean ± std over seeds (n) · the paper's value · difference; `!` marks |Δ| > 2 σ "
        "(σ combines our and the paper's std).",
        "",
        "| model | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for model, cells in rows.items():
        lines.append(
            f"| {model} | " + " | ".join(cell_markdown(cells[label]) for label in labels) + " |"
        )
    first, last = labels[0], labels[-1]
    lines += [
        "",
        f"| model | gain {last} − {first} (ours) | (paper) | NLL {first} | NLL {last} | ECE {first} | ECE {last} |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, cells in rows.items():
        a, b = cells[first], cells[last]
        gain = None if a.stat()[0] is None or b.stat()[0] is None else b.stat()[0] - a.stat()[0]
        paper_gain = None if a.paper is None or b.paper is None else b.paper[0] - a.paper[0]
        lines.append(
            f"| {model} | {_fmt(gain, None)} | {_fmt(paper_gain, None)} | {_fmt(*a.stat('nll'), 4)} | "
            f"{_fmt(*b.stat('nll'), 4)} | {_fmt(*a.stat('ece'), 4)} | {_fmt(*b.stat('ece'), 4)} |"
        )
    pending = [
        f"{model} {label}: {p}"
        for model, cells in rows.items()
        for label, c in cells.items()
        for p in c.pending
    ]
    if pending:
        lines += ["", "Not included:", *(f"- {p}" for p in pending)]
    return "\n".join(lines) + "\n"


CSV_FIELDS = [
    "dataset", "model", "column", "n", "acc_mean", "acc_std", "paper_mean", "paper_std", "diff", "flag",
    "nll_mean", "ece_mean", "pending",
]  # fmt: skip


def to_rows(dataset: str, rows: dict[str, dict[str, Cell]]) -> list[dict]:
    out = []
    for model, cells in rows.items():
        for label, cell in cells.items():
            mean, std = cell.stat()
            out.append({
                "dataset": dataset,
                "model": model,
                "column": label,
                "n": len(cell.values),
                "acc_mean": mean,
                "acc_std": std,
                "paper_mean": cell.paper[0] if cell.paper else None,
                "paper_std": cell.paper[1] if cell.paper else None,
                "diff": cell.diff,
                "flag": "!" if cell.flagged else "",
                "nll_mean": cell.stat("nll")[0],
                "ece_mean": cell.stat("ece")[0],
                "pending": "; ".join(cell.pending),
            })  # fmt: skip
    return out


def write_outputs(table: str, dataset: str, rows, out_dir: Path) -> tuple[Path, Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(to_rows(dataset, rows))
    markdown = to_markdown(table, dataset, rows)
    return write_tables(out_dir, result_name(table, dataset), markdown, buffer.getvalue())


def update_readme(readme: Path, key: str, markdown: str) -> None:
    """Replace the text between <!-- results:KEY --> and <!-- /results:KEY --> (if present)."""
    if not readme.is_file():
        print(f"warning: {readme} not found; results table not copied into it")
        return
    text = readme.read_text()
    pattern = re.compile(
        rf"(<!-- results:{re.escape(key)} -->\n).*?(<!-- /results:{re.escape(key)} -->)", re.S
    )
    if pattern.search(text):
        write_text_atomic(readme, pattern.sub(lambda m: m.group(1) + markdown + m.group(2), text))


def log_to_wandb(table: str, dataset: str, rows: list[dict]) -> None:
    """The table as a wandb.Table in its own run; any W&B failure is a warning only."""
    try:
        import wandb

        from swa_repro.logger import wandb_mode

        run = wandb.init(
            project="swa-repro",
            job_type="aggregate",
            name=f"{table}-{dataset}",
            mode=wandb_mode(None),
        )
        run.log(
            {
                result_name(table, dataset): wandb.Table(
                    columns=CSV_FIELDS, data=[[r[f] for f in CSV_FIELDS] for r in rows]
                )
            }
        )
        run.finish()
    except Exception as exc:
        print(
            f"warning: W&B table not logged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Aggregate runs into the paper's tables (with the paper's values beside ours).",
        epilog="Tables beyond the paper, with their own options (TABLE --help): uncertainty "
        "(SGD / EMA / SWA / SWAG with calibration), sharpness (the flatness analyses).",
    )
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--dataset", required=True, help="cifar10, cifar100, imagenet, synthetic")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (paths.runs)")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated (default: every model the data set's experiment configs define)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--extra", default="", help="the Hydra overrides the runs were trained with (the sweep's)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})"
    )
    parser.add_argument("--paper", type=Path, default=PAPER_FILE, help="the paper's values")
    parser.add_argument(
        "--readme", type=Path, default=None, help="update this README's results block"
    )
    parser.add_argument("--wandb", action="store_true", help="also log the table to W&B")
    return parser.parse_args(argv)


def read_paper(path: Path) -> dict:
    paper = OmegaConf.to_container(read_yaml(path, "--paper"))
    if not isinstance(paper, dict):
        raise ConfigError(
            f"--paper {path} must map tables to data sets to models, not a {type(paper).__name__}"
        )
    return paper


def other_config_dirs(rows: dict[str, dict[str, Cell]]) -> list[Path]:
    """The run directories of the table that hold a run of another config."""
    found = {
        run_dir
        for cells in rows.values()
        for cell in cells.values()
        for run_dir, status in cell.unfinished.items()
        if status.state == "other config"
    }
    return sorted(found)


def run(argv: list[str] | None = None) -> int:
    """Write (and print) the table; EXIT_OTHER_CONFIG when a run directory of it holds a run of
    another config, else 0."""
    args = parse_args(argv)
    models = args.models.split(",") if args.models else table_models(args.table, args.dataset)
    check_models(args.table, args.dataset, models)
    seeds = parse_seeds(args.seeds)
    check_output_folder(args.out, f"--out {args.out}")
    paper = read_paper(args.paper)
    extra = split_overrides(args.extra)
    rows = build_table(args.table, args.dataset, args.runs, models, seeds, paper, extra)
    md, _ = write_outputs(args.table, args.dataset, rows, args.out)
    markdown = md.read_text()
    has_results = any(cell.values for cells in rows.values() for cell in cells.values())
    if args.readme is not None and has_results:
        update_readme(args.readme, result_name(args.table, args.dataset), markdown)
    if args.wandb:
        log_to_wandb(args.table, args.dataset, to_rows(args.dataset, rows))
    collisions = other_config_dirs(rows)
    if collisions:
        print(
            f"error: run directories holding a run of another config: {len(collisions)} (listed "
            "under the table); move them away, or give --extra the overrides they were trained with",
            file=sys.stderr,
        )
        return EXIT_OTHER_CONFIG
    return 0


def split_overrides(text: str) -> list[str]:
    """--extra as a list of overrides (ConfigError when it does not parse as shell words)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--extra {text!r} does not parse as shell words: {exc}") from None


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["uncertainty"]:  # beyond the paper: its own module and options
        return uncertainty_table.main(argv[1:], PAPER_FILE, RESULTS_DIR)
    if argv[:1] == ["sharpness"]:  # beyond the paper: the flatness analyses' numbers
        return sharpness_table.main(argv[1:], RESULTS_DIR)
    code = run(argv)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
