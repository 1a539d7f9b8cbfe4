"""Run a paper table as one Hydra multirun, then aggregate it.

    python -m swa_repro.sweep table1 --dataset cifar100 [--models vgg16,wrn28x10] [--seeds 0,1,2]
                              [--runs runs] [--extra "logger=wandb hydra/launcher=slurm"] [--dry-run]
    python -m swa_repro.sweep table2 --dataset imagenet --gpus 8 [--extra "data.root=/datasets/imagenet"]

Prints every run with its state (finished / partial / to do) and an estimate of the
GPU-hours left, then launches `python -m swa_repro.train -m experiment=... seed=...`.
Finished runs are skipped and partial ones resumed (stable run directories, resume=auto),
so rerunning the same command only does what is missing. With --gpus N > 1 every run uses N
processes: one torchrun per run on this machine, or N SLURM tasks per node of each job under
hydra/launcher=slurm (more nodes: hydra.launcher.nodes=K in --extra). The estimate counts
6 x MACs per trained image (forward + backward) and 2 x MACs per evaluated one (test
sets, BN-refresh passes), at an assumed sustained --tflops; memory-bound models (the
PreResNets) run slower than that.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from swa_repro import REPO_ROOT, aggregate
from swa_repro.cli import one_line_errors, parse_seeds
from swa_repro.config_check import ConfigError
from swa_repro.models import build_model
from swa_repro.train import budget_epochs, compose_config, is_eval_epoch

TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 50_000}
# Table 2 has SWA runs only: its SGD column is the pretrained model each SWA run evaluates first.
METHODS = {"table1": ("sgd", "swa"), "fixed_lr": ("sgd", "swa"), "table2": ("swa",)}


def experiments_of(table: str, dataset: str, models: list[str]) -> list[str]:
    suffix = "_fixed_lr" if table == "fixed_lr" else ""
    return [f"{dataset}/{model}{suffix}_{method}" for model in models for method in METHODS[table]]


def macs_per_image(model_name: str, num_classes: int, image_size: int = 32) -> float:
    model = build_model(model_name, num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 2


def run_flops(cfg, macs: float, epochs_done: int) -> float:
    """Training plus evaluation FLOPs of the epochs after `epochs_done`, counting evaluations
    (and SWA evaluations with their BN refresh, once averaging has begun) as train.py does."""
    train_images = cfg.data.get("train_size", TRAIN_IMAGES.get(cfg.data.name))
    test_images = cfg.data.get("test_size", TEST_IMAGES.get(cfg.data.name))
    refresh_images = min(cfg.bn_refresh_images or train_images, train_images)
    readings_at = budget_epochs(cfg)
    evals = [
        e for e in range(epochs_done + 1, cfg.epochs + 1) if is_eval_epoch(e, cfg, readings_at)
    ]
    swa_evals = [e for e in evals if cfg.method.swa and e >= cfg.method.swa_start]
    start_evals = int(cfg.eval_at_start and epochs_done == 0)
    forward_images = (start_evals + len(evals) + len(swa_evals)) * test_images
    forward_images += len(swa_evals) * refresh_images
    return 6 * macs * train_images * (cfg.epochs - epochs_done) + 2 * macs * forward_images


def plan(experiments: list[str], seeds: list[int], runs: Path, extra: list[str]) -> list[dict]:
    rows, macs_cache = [], {}
    for experiment in experiments:
        cfg = compose_config([f"experiment={experiment}", f"paths.runs={runs}", *extra])
        key = (cfg.model.name, cfg.data.num_classes, cfg.data.get("image_size", 32))
        if key not in macs_cache:
            macs_cache[key] = macs_per_image(*key)
        for seed in seeds:
            cfg.seed = seed
            run_dir = runs / cfg.name
            status = aggregate.run_status(run_dir)
            done = cfg.epochs if status.state == "finished" else status.epochs_done
            rows.append({
                "experiment": experiment,
                "seed": seed,
                "run_dir": run_dir,
                "finished": status.state == "finished",
                "status": "to do" if status.state == "missing" else str(status),
                "flops_left": run_flops(cfg, macs_cache[key], done),
            })  # fmt: skip
    return rows


def print_plan(rows: list[dict], tflops: float, gpus: int = 1) -> None:
    """The runs with their state and GPU-hours left; `gpus` per run for the wall time."""
    print(f"{'experiment':<34}{'seed':>5}  {'state':<24}{'GPU-h left':>10}")
    for r in rows:
        hours = r["flops_left"] / (tflops * 1e12) / 3600
        print(f"{r['experiment']:<34}{r['seed']:>5}  {r['status']:<24}{hours:>10.2f}")
    total = sum(r["flops_left"] for r in rows) / (tflops * 1e12) / 3600
    todo = sum(not r["finished"] for r in rows)
    print(
        f"{todo} of {len(rows)} runs left, about {total:.1f} GPU-hours at an assumed {tflops:g} TFLOP/s sustained "
        "(a FLOP count: memory-bound models such as the PreResNets take longer)"
        + (f"; {total / gpus:.1f} h of wall time with {gpus} GPUs per run" if gpus > 1 else "")
    )


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


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run a paper table as a Hydra multirun, then aggregate it."
    )
    parser.add_argument("table", choices=sorted(aggregate.TABLES))
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--models", default=None, help="comma-separated (default: all of the table)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--extra", default="", help="more Hydra overrides for every run")
    parser.add_argument(
        "--tflops", type=float, default=30.0, help="assumed sustained TFLOP/s for the estimate"
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="processes (GPUs) per run: torchrun, or SLURM tasks"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--wandb", action="store_true", help="log the aggregated table to W&B")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "experiments" / "results")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    args = parser.parse_args(argv)

    models = args.models.split(",") if args.models else list(aggregate.DEFAULT_MODELS[args.table])
    seeds = parse_seeds(args.seeds)
    extra = shlex.split(args.extra)
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be a positive integer, got {args.gpus}")
    experiments = experiments_of(args.table, args.dataset, models)
    rows = plan(experiments, seeds, args.runs, extra)
    nodes = [int(o.split("=", 1)[1]) for o in extra if o.startswith("hydra.launcher.nodes=")]
    print_plan(rows, args.tflops, args.gpus * (nodes[-1] if nodes else 1))
    if args.dry_run:
        return
    returncode = 0
    if not all(r["finished"] for r in rows):
        for command in launch_commands(args.gpus, experiments, rows, args.runs, extra):
            print("+ " + shlex.join(command), flush=True)
            code = subprocess.run(command).returncode
            if code != 0:
                returncode = code
                print(f"exit code {code}; rerun the same command to continue what is left")
    aggregate_args = [
        args.table,
        "--dataset",
        args.dataset,
        "--runs",
        str(args.runs),
        "--models",
        ",".join(models),
    ]
    aggregate_args += ["--seeds", args.seeds, "--out", str(args.out), "--readme", str(args.readme)]
    aggregate.main(aggregate_args + (["--wandb"] if args.wandb else []))
    if returncode != 0:
        sys.exit(returncode)


if __name__ == "__main__":
    main()
