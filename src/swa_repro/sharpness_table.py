"""The flatness table beyond the paper: curvature, sharpness and width of the SGD, EMA and SWA
solutions side by side, from the analyses of the figure runs.

    python -m swa_repro.aggregate sharpness --dataset cifar100 [--runs runs] [--models ...]
        [--seeds 0,1,2] [--out DIR] [--width-metric test_err] [--width-rise 5]

Reads, per model and seed, what `python -m swa_repro.figures` computes into the layout's
analyses folder (layout.analysis_file): hessian.npz, sharpness.npz and rays.npz; writes
<out>/sharpness_<dataset>.md and .csv. Rows: the origins the analyses measured, SGD first, then
each EMA by decay, then SWA (any other origin after them). Columns (docs/flatness.md):

    lambda_1..k, lambda_min   top and smallest Hessian eigenvalues (hessian; a pair that did
                              not converge, NaN there, is left out of the cell)
    trace                     Hutchinson's estimate; beside the spread over seeds its probe
                              error, the standard error of the mean over n seeds
                              sqrt(sum_s se_s^2) / n
    S_avg(rho), S_max(rho)    adaptive sharpness, each at every rho of its own grid
                              (sharpness); S_avg(rho) compares with S_max(rho sqrt(P)), not with
                              S_max(rho): the markdown gives rho sqrt(P) for the S_avg grid
    ||w||, train NLL, test err   hessian's: the weights' norm, the data loss on its fixed subset
                              (eval mode), the test error (%) after the BN refresh
    width                     where the rays (mean over directions of `--width-metric`) first
                              rise by `--width-rise` above the value at the origin, linear
                              between the rays' distances; not reached within the rays: "> D"

(SAM's sharpness is in the CSV only.) Each cell: mean ± std over the seeds that have the number
(sample std, ddof 1) with n. The width's threshold is this reproduction's choice: the paper
reads the widths off its figure and states none [UNVERIFIED]. Seeds or analyses missing, origins
not finished and settings that differ between seeds are listed under the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swa_repro.analysis.points import METRICS
from swa_repro.cli import check_output_folder, figure_runs_command, parse_seeds
from swa_repro.config_check import ConfigError
from swa_repro.layout import analysis_file
from swa_repro.run_files import write_tables
from swa_repro.table_runs import check_models, table_models

KEYS = {  # what the table reads of each analysis' .npz
    "hessian": ("origins", "done", "n_params", "top_eigenvalues", "min_eigenvalue", "trace",
                "trace_se", "weight_norm", "train_nll", "test_acc", "config"),
    "sharpness": ("origins", "done", "rho_avg", "rho_max", "rho_sam", "s_avg", "s_max", "sam",
                  "config"),
    "rays": ("origins", "done", "distances", "config"),
}  # fmt: skip


@dataclass(frozen=True)
class Width:
    """The width along rays: where `metric` first rises by `rise` above its value at t = 0."""

    metric: str = "test_err"
    rise: float = 5.0

    @property
    def label(self) -> str:
        return f"width ({self.metric} +{self.rise:g})"


@dataclass
class Solution:
    """One row of a model's table: each number of one origin, over the seeds."""

    values: dict[str, list[float]] = field(default_factory=dict)  # key -> the seeds' values
    beyond: list[float] = field(default_factory=list)  # rays' lengths a width went beyond

    def add(self, numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            if key == "width" and value == math.inf:
                self.beyond.append(numbers["rays_length"])
            elif math.isfinite(value) and key != "rays_length":
                self.values.setdefault(key, []).append(float(value))


@dataclass
class ModelTable:
    rows: dict[str, Solution] = field(default_factory=dict)
    n_params: set[int] = field(default_factory=set)
    settings: dict[str, set[str]] = field(default_factory=dict)  # analysis -> distinct settings
    pending: list[str] = field(default_factory=list)


def read_npz(path: Path, analysis: str, also: tuple[str, ...] = ()) -> dict | None:
    """The arrays of an analysis .npz that the table reads (KEYS, and those of `also` it has);
    None if there is no file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in KEYS[analysis] if key not in data.files]
            arrays = {key: data[key] for key in (*KEYS[analysis], *also) if key in data.files}
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable .npz ({type(exc).__name__})") from None
    if missing:
        raise ConfigError(
            f"{path} has no {', '.join(missing)}: not a {analysis} .npz of python -m "
            "swa_repro.analysis"
        )
    return arrays


def ray_width(distances: np.ndarray, values: np.ndarray, rise: float) -> float:
    """Where the mean over directions of `values` (R, T) first exceeds its value at distance 0 by
    `rise`, linear between the distances; inf when it never does."""
    curve = np.asarray(values, dtype=float).mean(axis=0)
    target = curve[0] + rise
    above = np.flatnonzero(curve > target)
    if not above.size:
        return math.inf
    k = above[0]  # >= 1, since curve[0] < target
    t0, t1, v0, v1 = distances[k - 1], distances[k], curve[k - 1], curve[k]
    return float(t0 + (target - v0) * (t1 - t0) / (v1 - v0))


def hessian_numbers(data: dict, o: int) -> dict[str, float]:
    top = data["top_eigenvalues"][o]
    return {
        **{f"lambda_{i + 1}": top[i] for i in range(len(top))},
        "lambda_min": data["min_eigenvalue"][o],
        "trace": data["trace"][o],
        "trace_se": data["trace_se"][o],
        "weight_norm": data["weight_norm"][o],
        "train_nll": data["train_nll"][o],
        "test_err": 100.0 - data["test_acc"][o],
    }


def sharpness_numbers(data: dict, o: int) -> dict[str, float]:
    out = {}
    for kind, grid in (("s_avg", "rho_avg"), ("s_max", "rho_max"), ("sam", "rho_sam")):
        out.update({f"{kind}@{rho:g}": data[kind][o][a] for a, rho in enumerate(data[grid])})
    return out


def rays_numbers(data: dict, o: int, width: Width) -> dict[str, float]:
    distances = np.asarray(data["distances"], dtype=float)
    return {
        "width": ray_width(distances, data[width.metric][o], width.rise),
        "rays_length": float(distances[-1]),
    }


NUMBERS = {"hessian": hessian_numbers, "sharpness": sharpness_numbers, "rays": rays_numbers}


def read_seed(table: ModelTable, runs: Path, setup: str, seed: int, width: Width) -> None:
    """Add the analyses of one seed of `setup` to `table`."""
    for analysis, numbers in NUMBERS.items():
        path = analysis_file(runs, setup, seed, analysis)
        data = read_npz(path, analysis, (width.metric,) if analysis == "rays" else ())
        if data is None:
            table.pending.append(f"seed {seed}: no {path}")
            continue
        if analysis == "rays" and width.metric not in data:
            raise ConfigError(f"{path} has no {width.metric} (--width-metric)")
        config = json.loads(str(data["config"]))
        table.settings.setdefault(analysis, set()).add(json.dumps(settings_of(config, analysis)))
        if analysis == "hessian":
            table.n_params.add(int(data["n_params"]))
        for o, name in enumerate(str(n) for n in data["origins"]):
            if not np.asarray(data["done"][o]).all():
                table.pending.append(f"seed {seed}: {analysis} of {name} not finished")
                continue
            extra = (width,) if analysis == "rays" else ()
            table.rows.setdefault(name, Solution()).add(numbers(data, o, *extra))


def settings_of(config: dict, analysis: str) -> dict:
    """The settings that decide an analysis' numbers (its own section, or the rays' keys)."""
    if analysis in config:
        return config[analysis]
    return {k: config.get(k) for k in ("n_directions", "max_distance", "n_distances", "seed")}


def row_order(names) -> list[str]:
    """SGD, the EMAs by decay, SWA, then the others by name."""

    def rank(name: str):
        if name == "SGD":
            return (0, 0.0, name)
        if name.startswith("EMA "):
            try:
                return (1, float(name.removeprefix("EMA ")), name)
            except ValueError:
                pass
        return (2, 0.0, name) if name == "SWA" else (3, 0.0, name)

    return sorted(names, key=rank)


def build(dataset: str, runs: Path, models, seeds, width: Width) -> dict[str, ModelTable]:
    """model -> its table, from every seed's analyses of <dataset>/<model>."""
    out = {}
    for model in models:
        table, setup = ModelTable(), f"{dataset}/{model}"
        for seed in seeds:
            read_seed(table, runs, setup, seed, width)
        for analysis, distinct in table.settings.items():
            if len(distinct) > 1:
                table.pending.append(f"{analysis} settings differ between seeds: cells mix them")
        if not table.rows:
            how = figure_runs_command(runs, setup, seeds[0])
            table.pending.append(f"no finished analyses (make them: {how})")
        table.rows = {name: table.rows[name] for name in row_order(table.rows)}
        out[model] = table
    return out


@dataclass(frozen=True)
class Column:
    key: str  # a key of Solution.values
    label: str


def columns(table: ModelTable, width: Width, everything: bool = False) -> list[Column]:
    """The model's columns in order: eigenvalues, trace, S_avg and S_max on their rho grids,
    ||w||, train NLL, test error, width; `everything` adds the trace's s.e. and SAM (CSV)."""
    keys = {key for row in table.rows.values() for key in row.values}
    top = [k for k in keys if k.startswith("lambda_") and k[7:].isdigit()]
    top.sort(key=lambda k: int(k[7:]))
    out = [Column(k, f"λ{k[7:]}") for k in top] + [Column("lambda_min", "λ_min")]
    out += [Column("trace", "trace")] + ([Column("trace_se", "trace s.e.")] if everything else [])
    kinds = (("s_avg", "S_avg"), ("s_max", "S_max")) + ((("sam", "SAM"),) if everything else ())
    for kind, label in kinds:
        rhos = sorted({float(k.split("@")[1]) for k in keys if k.startswith(f"{kind}@")})
        out += [Column(f"{kind}@{rho:g}", f"{label} ρ={rho:g}") for rho in rhos]
    out += [Column("weight_norm", "‖w‖"), Column("train_nll", "train NLL"),
            Column("test_err", "test err %"), Column("width", width.label)]  # fmt: skip
    return out


def stat(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (None below 2 values) and n."""
    if not values:
        return None, None, 0
    return (
        statistics.fmean(values),
        statistics.stdev(values) if len(values) > 1 else None,
        len(values),
    )


def trace_error(row: Solution) -> float | None:
    """The probes' standard error of the mean trace over the seeds: sqrt(sum se^2) / n."""
    errors = row.values.get("trace_se", [])
    return math.sqrt(sum(e * e for e in errors)) / len(errors) if errors else None


def cell(row: Solution, key: str) -> str:
    mean, std, n = stat(row.values.get(key, []))
    if mean is None:
        return f"> {min(row.beyond):g}" if key == "width" and row.beyond else "-"
    text = f"{mean:.4g}" + ("" if std is None else f" ± {std:.2g}") + f" ({n})"
    if key == "trace" and trace_error(row) is not None:
        text += f", s.e. {trace_error(row):.2g}"
    if key == "width" and row.beyond:
        text += f", {len(row.beyond)} beyond {min(row.beyond):g}"
    return text


def model_heading(model: str, table: ModelTable, cols: list[Column]) -> str:
    """The model, P, and rho sqrt(P) of the S_avg grid (the S_max radius it compares with)."""
    if len(table.n_params) != 1:
        return f"#### {model}"
    p = next(iter(table.n_params))
    scaled = [f"{c.key[6:]} → {float(c.key[6:]) * math.sqrt(p):.3g}" for c in cols
              if c.key.startswith("s_avg@")]  # fmt: skip
    compare = f"; ρ√P of the S_avg grid: {', '.join(scaled)}" if scaled else ""
    return f"#### {model} (P = {p:,}{compare})"


def to_markdown(dataset: str, tables: dict[str, ModelTable], width: Width) -> str:
    lines = [
        f"### Flatness beyond the paper: {dataset}, SGD / EMA / SWA",
        "",
        "mean ± std over seeds (n). Data term only (the L2 term would add weight_decay to every "
        "eigenvalue and weight_decay × P to the trace), eval-mode BN on each solution's refreshed "
        "statistics. λ: Hessian eigenvalues; trace: Hutchinson, with its probes' standard error; "
        "S_avg / S_max: adaptive average- and worst-case sharpness, each on its own ρ grid: "
        "S_avg(ρ) compares with S_max(ρ√P), not with S_max(ρ); ‖w‖ and train NLL on the hessian "
        "subset, test err % after the BN refresh; "
        f"{width.label}: distance along the random rays (mean over directions) where "
        f"{width.metric} first rises by {width.rise:g}. These describe the solutions; they do "
        "not by themselves predict generalisation (docs/flatness.md).",
    ]
    pending = []
    for model, table in tables.items():
        pending += [f"- {model}: {p}" for p in table.pending]
        if not table.rows:
            continue
        cols = columns(table, width)
        lines += ["", model_heading(model, table, cols), ""]
        lines += ["| solution | " + " | ".join(c.label for c in cols) + " |"]
        lines += ["|---" * (len(cols) + 1) + "|"]
        for name, row in table.rows.items():
            lines.append(f"| {name} | " + " | ".join(cell(row, c.key) for c in cols) + " |")
    if pending:
        lines += ["", "Not included:", *pending]
    return "\n".join(lines) + "\n"


def to_csv(dataset: str, tables: dict[str, ModelTable], width: Width) -> str:
    keys = []
    for table in tables.values():
        keys += [c.key for c in columns(table, width, everything=True) if c.key not in keys]
    fields = ["dataset", "model", "solution", "n_params"]
    fields += [f"{k}_{s}" for k in keys for s in ("mean", "std", "n")]
    fields += ["trace_se_of_mean", "width_beyond", "pending"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for model, table in tables.items():
        for name, row in table.rows.items():
            out = {"dataset": dataset, "model": model, "solution": name,
                   "n_params": ";".join(map(str, sorted(table.n_params))),
                   "trace_se_of_mean": trace_error(row), "width_beyond": len(row.beyond),
                   "pending": "; ".join(table.pending)}  # fmt: skip
            for key in keys:
                out.update(
                    zip(
                        (f"{key}_mean", f"{key}_std", f"{key}_n"),
                        stat(row.values.get(key, [])),
                        strict=True,
                    )
                )
            writer.writerow(out)
    return buffer.getvalue()


def table_markdown(dataset: str, runs: Path, models, seeds, width: Width = Width()) -> str:
    """The markdown table of the analyses under `runs` (figures writes it beside its figures)."""
    return to_markdown(dataset, build(dataset, runs, models, seeds, width), width)


def main(argv: list[str], default_out: Path) -> None:
    """The `sharpness` table of `python -m swa_repro.aggregate` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m swa_repro.aggregate sharpness",
        description="Curvature, sharpness and width of the SGD, EMA and SWA solutions, from the "
        "hessian, sharpness and rays analyses of the figure runs (docs/flatness.md).",
    )
    parser.add_argument("--dataset", required=True, help="cifar10, cifar100, synthetic")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (paths.runs)")
    parser.add_argument("--models", default=None, help="comma-separated (default: the data set's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out", type=Path, default=default_out, help="results folder")
    parser.add_argument(
        "--width-metric",
        default=Width.metric,
        help=f"the rays' metric of the width: {', '.join(METRICS)}",
    )
    parser.add_argument(
        "--width-rise",
        type=float,
        default=Width.rise,
        help="the rise above the solution's value that ends the width (> 0, in the metric's unit)",
    )
    args = parser.parse_args(argv)
    if args.width_metric not in METRICS:
        raise ConfigError(
            f"--width-metric must be one of {', '.join(METRICS)}, got {args.width_metric!r}"
        )
    if not (math.isfinite(args.width_rise) and args.width_rise > 0):
        raise ConfigError(f"--width-rise must be a number > 0, got {args.width_rise:g}")
    models = args.models.split(",") if args.models else table_models("table1", args.dataset)
    check_models("table1", args.dataset, models)
    seeds, width = parse_seeds(args.seeds), Width(args.width_metric, args.width_rise)
    check_output_folder(args.out, f"--out {args.out}")
    tables = build(args.dataset, args.runs, models, seeds, width)
    markdown, csv_text = (
        to_markdown(args.dataset, tables, width),
        to_csv(args.dataset, tables, width),
    )
    write_tables(args.out, f"sharpness_{args.dataset}", markdown, csv_text)
