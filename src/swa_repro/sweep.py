"""Run a paper table as one Hydra multirun, then aggregate it.

    python -m swa_repro.sweep table1 --dataset cifar100 [--models vgg16,wrn28x10] [--seeds 0,1,2]
                              [--runs runs] [--extra "logger=wandb hydra/launcher=slurm"] [--dry-run]
    python -m swa_repro.sweep table2 --dataset imagenet --gpus 8 [--extra "data.root=/datasets/imagenet"]

Rows: the models the data set's experiment configs define for the table (or --models).
Prints every run with its state (finished / partial / to do / failed / other config) and an
estimate of the GPU-hours left, then launches `python -m swa_repro.train -m experiment=...
seed=...`. Finished runs are skipped and partial ones resumed (stable run directories,
resume=auto), so rerunning the same command only does what is missing; then it aggregates
(swa_repro.aggregate, into --out, by default experiments/results/).

A run directory that holds a run of another config than the cell's (the experiment's +
--extra; e.g. a run trained by hand with overrides under the same name) is never trained
over, skipped or counted: the plan names it with the keys that differ. The sweep exits
non-zero (1, or a launch's own exit code) whenever a cell is not finished afterwards - failed,
refused (another config, a directory in use) or interrupted - and names each such cell with
its cause, read from the run directories (under the submitit launchers a multirun itself
exits 0 past failing cells).

With --gpus N > 1 every run uses N processes: one torchrun per run on this machine, or N SLURM
tasks per node of each job under hydra/launcher=slurm (more nodes: hydra.launcher.nodes=K in
--extra).

The estimate of a run: with a benchmark JSON (--bench, default the GPU one that
docs/performance.md records, when it exists) that measured the run's model under the run's
`speed` settings, trained images / training images/s + test images / evaluation images/s +
BN-refreshed images / BN-refresh images/s; otherwise a FLOP count, 6 x MACs per trained
image (forward + backward) and 2 x MACs per evaluated one (test sets, BN-refresh passes of
models with BN), at an assumed sustained --tflops (memory-bound models such as the PreResNets
run slower).
"""

from __future__ import annotations

import argparse
import functools
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from swa_repro import REPO_ROOT, aggregate
from swa_repro.budgets import budget_epochs, ema_eval_epochs, is_eval_epoch
from swa_repro.cli import one_line_errors, parse_seeds, read_json
from swa_repro.config_check import ConfigError
from swa_repro.fast import Speed
from swa_repro.models import build_model, has_batchnorm
from swa_repro.table_runs import TableRun, check_models, experiments_of, table_models

TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 50_000}
# `python -m swa_repro.bench --speed faithful` on a GPU: the reproduce targets' settings
GPU_BENCH = REPO_ROOT / "experiments" / "results" / "bench_gpu_faithful.json"
BENCH_RATES = ("train_images_per_s", "eval_images_per_s", "bn_refresh_images_per_s")


def macs_per_image(model_name: str, num_classes: int, image_size: int = 32) -> float:
    model = build_model(model_name, num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 2


@functools.cache
def refreshes_bn(model_name: str, num_classes: int) -> bool:
    """Whether the model has BN layers; without them (VGG16) the BN refresh reads no data."""
    return has_batchnorm(build_model(model_name, num_classes))


def split_sizes(cfg) -> tuple[int, int]:
    """The run's training and test images (its data.train_size / test_size, or the data set's),
    the held-out ones (data.val_size) not trained on."""
    train_images = cfg.data.get("train_size", TRAIN_IMAGES.get(cfg.data.name))
    if train_images is not None:
        train_images -= cfg.data.get("val_size") or 0
    return train_images, cfg.data.get("test_size", TEST_IMAGES.get(cfg.data.name))


def run_images(cfg, epochs_done: int) -> tuple[int, int, int]:
    """Images trained, test-evaluated and BN-refreshed in the epochs after `epochs_done`,
    counting evaluations (and SWA evaluations with their BN refresh, once averaging has begun,
    the EMAs' and the SWAG model average's, refreshes only if the model has BN layers) as the
    training loop does."""
    train_images, test_images = split_sizes(cfg)
    refresh_images = min(cfg.bn_refresh_images or train_images, train_images)
    readings_at = budget_epochs(cfg)
    evals = [
        e for e in range(epochs_done + 1, cfg.epochs + 1) if is_eval_epoch(e, cfg, readings_at)
    ]
    averaging_from = 0 if cfg.method.get("swa_include_start") else cfg.method.swa_start
    swa_evals = [e for e in evals if cfg.method.swa and e >= averaging_from]
    start_evals = int(cfg.eval_at_start and epochs_done == 0)
    average_tests, average_refreshes = averaged_model_passes(cfg, evals, epochs_done)
    tests = start_evals + len(evals) + len(swa_evals) + average_tests
    refreshes = len(swa_evals) + average_refreshes
    if not refreshes_bn(cfg.model.name, cfg.data.num_classes):
        refreshes = 0
    return (
        train_images * (cfg.epochs - epochs_done),
        tests * test_images,
        refreshes * refresh_images,
    )


def averaged_model_passes(cfg, evals: list[int], epochs_done: int) -> tuple[int, int]:
    """Test passes and BN refreshes of the EMAs and the SWAG model average left to do: each EMA
    at its evaluation epochs (the BN-averaged ablation: one test pass; the refreshed model: one
    refresh and one test pass), and at an SWA run's end `swag.samples` samples of each SWAG
    variant (each one refresh and one test pass)."""
    ema_epochs = ema_eval_epochs(cfg)
    ema_epochs = set(evals) if ema_epochs is None else ema_epochs
    ema_evals = len(ema_epochs.intersection(evals)) * len(cfg.ema.decays)
    swag_samples = 0
    if cfg.method.swa and cfg.swag.collect and epochs_done < cfg.epochs:
        swag_samples = cfg.swag.samples * (2 if cfg.swag.low_rank else 1)
    return 2 * ema_evals + swag_samples, ema_evals + swag_samples


def run_flops(cfg, macs: float, epochs_done: int) -> float:
    trained, tested, refreshed = run_images(cfg, epochs_done)
    return 6 * macs * trained + 2 * macs * (tested + refreshed)


def load_bench(option: str | None) -> dict | None:
    """A benchmark JSON's device, speed settings and our measured images/s per model. `option`:
    a path, "none" (FLOP counts only), or None: GPU_BENCH if it exists."""
    if option == "none" or (option is None and not GPU_BENCH.is_file()):
        return None
    path = Path(option) if option is not None else GPU_BENCH
    bench = read_json(path, "--bench")
    try:
        rates = {
            name: {
                **{k: m["measurements"][k]["ours"] for k in BENCH_RATES},
                # the flatness analyses' estimate (analysis_cost); JSONs before it lack it
                "hvp_over_gradient": (m.get("hessian") or {}).get("hvp_over_gradient"),
            }
            for name, m in bench["models"].items()
        }
        return {
            "path": path,
            "device": bench["environment"]["device_name"],
            "speed": bench["settings"]["speed"],
            "batch_size": bench["settings"]["batch_size"],
            "rates": rates,
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a benchmark JSON of swa_repro.bench ({exc!r})") from None


def measured_rates(cfg, bench: dict | None) -> dict | None:
    """The benchmark's images/s for this run's model, if it measured the run's pipeline: its
    speed settings, batch size and CIFAR-sized images (the benchmark's data)."""
    if bench is None or cfg.model.name not in bench["rates"]:
        return None
    same = (
        Speed.from_cfg(cfg.get("speed")).as_dict() == bench["speed"]
        and cfg.optim.batch_size == bench["batch_size"]
        and cfg.data.get("image_size", 32) == 32
    )
    return bench["rates"][cfg.model.name] if same else None


def run_seconds(cfg, rates: dict, epochs_done: int) -> float:
    trained, tested, refreshed = run_images(cfg, epochs_done)
    return (
        trained / rates["train_images_per_s"]
        + tested / rates["eval_images_per_s"]
        + refreshed / rates["bn_refresh_images_per_s"]
    )


def plan(
    experiments: list[str],
    seeds: list[int],
    runs: Path,
    extra: list[str],
    tflops: float,
    bench: dict | None = None,
) -> list[dict]:
    """Every run with its state and GPU-hours left: measured (`bench`) where it applies, else
    from the FLOP count at `tflops`."""
    macs_cache: dict[tuple, float] = {}
    return [
        plan_row(TableRun.of(experiment, seed, runs, extra), tflops, bench, macs_cache)
        for experiment in experiments
        for seed in seeds
    ]


def plan_row(run: TableRun, tflops: float, bench: dict | None, macs_cache: dict) -> dict:
    """The run's state and its GPU-hours left (FLOP counts cached by model in `macs_cache`)."""
    cfg, status = run.cfg, run.status()
    done = cfg.epochs if status.state == "finished" else status.epochs_done
    rates = measured_rates(cfg, bench)
    if rates is None:
        key = (cfg.model.name, cfg.data.num_classes, cfg.data.get("image_size", 32))
        if key not in macs_cache:
            macs_cache[key] = macs_per_image(*key)
        seconds = run_flops(cfg, macs_cache[key], done) / (tflops * 1e12)
        basis = f"FLOPs at {tflops:g} TFLOP/s"
    else:
        seconds = run_seconds(cfg, rates, done)
        epoch_s = run_images(cfg, 0)[0] / cfg.epochs / rates["train_images_per_s"]
        basis = f"measured, {epoch_s:.3g} s/epoch"
    return {
        "experiment": run.experiment,
        "seed": run.seed,
        "run": run,
        "run_dir": run.run_dir,
        "finished": status.state == "finished",
        "run_status": status,
        "status": "to do" if status.state == "missing" else status.short(),
        "hours_left": seconds / 3600,
        "basis": basis,
    }


def print_plan(rows: list[dict], bench: dict | None, gpus: int = 1) -> None:
    """The runs with their state and GPU-hours left; `gpus` per run for the wall time; below,
    each failed run or run of another config with its cause."""
    if any(r["basis"].startswith("measured") for r in rows):
        print(f"measured throughput: {bench['path']} ({bench['device']})")
    print(f"{'experiment':<34}{'seed':>5}  {'state':<24}{'GPU-h left':>10}  estimate")
    for r in rows:
        print(
            f"{r['experiment']:<34}{r['seed']:>5}  {r['status']:<24}{r['hours_left']:>10.2f}"
            f"  {r['basis']}"
        )
    total = sum(r["hours_left"] for r in rows)
    todo = sum(not r["finished"] for r in rows)
    flops = any(r["basis"].startswith("FLOPs") for r in rows)
    print(
        f"{todo} of {len(rows)} runs left, about {total:.1f} GPU-hours"
        + (f"; {total / gpus:.1f} h of wall time with {gpus} GPUs per run" if gpus > 1 else "")
        + (
            " (FLOP counts assume a sustained rate: memory-bound models such as the PreResNets "
            f"take longer; `make bench-gpu` on the GPU measures them into {GPU_BENCH.name})"
            if flops
            else ""
        )
    )
    for r in rows:
        if r["run_status"].state in ("failed", "other config"):
            print(f"  {r['experiment']} seed {r['seed']}: {r['run_dir']} {r['run_status']}")


def launch_commands(
    gpus: int, experiments: list[str], rows: list[dict], runs: Path, extra: list[str]
) -> list[list[str]]:
    """The commands that run what is left.

    One GPU per run, or SLURM (hydra/launcher=slurm in `extra`, the GPUs becoming tasks of each
    job): one Hydra multirun over every cell. Several local GPUs: one torchrun per unfinished
    run, so that a failing run (which ends all its processes) does not stop the others.
    """
    train = [sys.executable, "-m", "swa_repro.train"]
    everywhere = [f"paths.runs={runs}", *extra]
    if gpus == 1 or "hydra/launcher=slurm" in extra:
        seeds = sorted({r["seed"] for r in rows})
        cells = [f"experiment={','.join(experiments)}", f"seed={','.join(map(str, seeds))}"]
        tasks = (
            [f"hydra.launcher.gpus_per_node={gpus}", f"hydra.launcher.tasks_per_node={gpus}"]
            if gpus > 1
            else []
        )
        return [[*train, "-m", *cells, *everywhere, *tasks]]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [
        [*torchrun, f"--nproc_per_node={gpus}", "-m", "swa_repro.train",
         f"experiment={r['experiment']}", f"seed={r['seed']}", *everywhere]
        for r in rows
        if not r["finished"]
    ]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run a paper table as a Hydra multirun, then aggregate it."
    )
    parser.add_argument("table", choices=sorted(aggregate.TABLES))
    parser.add_argument("--dataset", required=True, help="cifar10, cifar100, imagenet, synthetic")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated (default: every model the data set's experiment configs define)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs root (paths.runs)")
    parser.add_argument("--extra", default="", help="more Hydra overrides for every run")
    parser.add_argument(
        "--tflops", type=float, default=30.0, help="assumed sustained TFLOP/s for the estimate"
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="processes (GPUs) per run: torchrun, or SLURM tasks"
    )
    parser.add_argument(
        "--bench",
        help="benchmark JSON whose measured throughput replaces the FLOP count where it applies "
        f"(default: {GPU_BENCH.relative_to(REPO_ROOT)} when it exists; none: FLOP counts only)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--wandb", action="store_true", help="log the aggregated table to W&B")
    parser.add_argument(
        "--out",
        type=Path,
        default=aggregate.RESULTS_DIR,
        help=f"results folder of the table (default {aggregate.RESULTS_DIR})",
    )
    parser.add_argument(
        "--readme", type=Path, default=REPO_ROOT / "README.md", help="its results block is updated"
    )
    args = parser.parse_args(argv)
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be a positive integer, got {args.gpus}")
    if not args.tflops > 0:
        raise ConfigError(f"--tflops must be a positive number, got {args.tflops}")
    return args


def launch(args: argparse.Namespace, rows: list[dict], extra: list[str]) -> int:
    """Run what is left (not the runs of another config, which would be refused); the first
    non-zero exit code of a launch, else 0."""
    todo = [r for r in rows if not r["finished"] and r["run_status"].state != "other config"]
    if not todo:
        return 0
    experiments = list(dict.fromkeys(r["experiment"] for r in todo))
    returncode = 0
    for command in launch_commands(args.gpus, experiments, todo, args.runs, extra):
        print("+ " + shlex.join(command), flush=True)
        code = subprocess.run(command).returncode
        if code != 0:
            returncode = returncode or code
            print(f"exit code {code}; rerun the same command to continue what is left")
    return returncode


def report_unfinished(rows: list[dict]) -> int:
    """Name every cell not finished now with its cause (the run directories say: a Hydra
    multirun under the submitit launchers exits 0 past failing cells); 1 if there is one, else 0."""
    unfinished = [(r, status) for r in rows if (status := r["run"].status()).state != "finished"]
    for r, status in unfinished:
        print(f"not finished: {r['experiment']} seed {r['seed']} ({status}) in {r['run_dir']}")
    if not unfinished:
        return 0
    print(f"{len(unfinished)} of {len(rows)} runs not finished; rerun the same command to continue")
    if any(status.state == "other config" for _, status in unfinished):
        print(
            "a directory holding a run of another config is never trained over: move it away "
            "(or give the sweep another --runs), or give --extra the overrides it was trained with"
        )
    return 1


def aggregate_args(args: argparse.Namespace, models: list[str]) -> list[str]:
    """The aggregation of what the sweep ran, with its overrides (aggregate compares them)."""
    return [
        args.table, "--dataset", args.dataset, "--runs", str(args.runs), "--models", ",".join(models),
        "--seeds", args.seeds, "--extra", args.extra, "--out", str(args.out),
        "--readme", str(args.readme), *(["--wandb"] if args.wandb else []),
    ]  # fmt: skip


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    models = args.models.split(",") if args.models else table_models(args.table, args.dataset)
    check_models(args.table, args.dataset, models)
    seeds, extra = parse_seeds(args.seeds), aggregate.split_overrides(args.extra)
    bench = load_bench(args.bench)
    experiments = experiments_of(args.table, args.dataset, models)
    rows = plan(experiments, seeds, args.runs, extra, args.tflops, bench)
    nodes = [int(o.split("=", 1)[1]) for o in extra if o.startswith("hydra.launcher.nodes=")]
    print_plan(rows, bench, args.gpus * (nodes[-1] if nodes else 1))
    if args.dry_run:
        return
    launched = launch(args, rows, extra)
    unfinished = report_unfinished(rows)
    tabled = aggregate.run(aggregate_args(args, models))
    code = launched or unfinished or tabled
    if code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
