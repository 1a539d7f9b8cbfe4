"""Train one run with SGD or SWA, as in the authors' train.py: CIFAR (Table 1) or ImageNet
fine-tuning (Table 2), on one device or many.

    python -m swa_repro.train experiment=cifar100/preresnet164_swa seed=1
    torchrun --nproc_per_node=8 -m swa_repro.train experiment=imagenet/resnet50_swa seed=0

The loop itself is swa_repro.loop (Algorithm 1 over named steps); its set-up swa_repro.build.
The run directory (swa_repro.layout) receives config.yaml, metrics.jsonl (one line per
evaluated epoch), summary.json and checkpoints/. Relaunching the same command resumes from the
last good checkpoint. With several processes (torchrun, or SLURM tasks under submitit;
swa_repro.distributed) each takes its part of every global batch of `optim.batch_size` images,
DistributedDataParallel averages the gradients, evaluation and BN refresh are sharded and
summed, and only rank 0 writes files.
"""

from __future__ import annotations

import signal
import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from swa_repro import report
from swa_repro.build import build_run, choose_start_on_ranks, start
from swa_repro.checkpoint import CheckpointError
from swa_repro.cli import EXIT_USER_ERROR, one_line_errors
from swa_repro.compose import CONF_DIR, check_override_keys, check_overrides
from swa_repro.config_check import ConfigError, validate_config
from swa_repro.data import DataError
from swa_repro.distributed import Distributed
from swa_repro.loop import NonFiniteError, Preempted, train_epochs
from swa_repro.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from swa_repro.run_files import RunFiles, RunInUseError

EXIT_NON_FINITE = 3
USER_ERRORS = (ConfigError, DataError, CheckpointError)


def train(cfg: DictConfig, run_dir: str | Path, dist: Distributed | None = None) -> dict:
    """Run (or resume, or recognise as finished) the run in `run_dir`; returns its summary.
    `cfg` must have passed validate_config."""
    dist = dist or Distributed()
    files = RunFiles(run_dir)
    with ExitStack() as stack:
        dist.agree(lambda: stack.enter_context(files.locked()))  # one job per run directory
        finished, resumed = choose_start_on_ranks(cfg, files, dist)
        if finished is not None:
            if dist.is_main:
                print(f"{files.root}: already finished, nothing to do (summary: {files.summary})")
            return finished
        run = build_run(cfg, files, dist, resumed)
        start(run, resumed)
        summary = train_epochs(run)
    if dist.is_main:
        print(report.closing_table(summary, files))
    return summary


def train_and_report(cfg: DictConfig, files: RunFiles, multirun: bool = False) -> dict | None:
    """validate_config, then train() with a command's outcome: the summary; or one `error:` line
    per rank and exit code 2 (bad input) / 3 (diverged), the run marked failed (failed.json) if
    it diverged or never started; or, after a stop signal's checkpoint, exit 75 (130 for Ctrl-C).
    In a single-process multirun a failing cell returns None instead of exiting, so that the
    other cells go on."""
    dist = Distributed()
    try:
        validate_config(cfg)  # before joining a process group on cfg.device
        dist = Distributed.from_env(cfg.device)
        summary = train(cfg, files.root, dist)
        if dist.is_main:  # only rank 0 writes into the run directory
            files.clear_failure()
        return summary
    except (*USER_ERRORS, NonFiniteError) as exc:
        return failed(exc, files, dist, multirun)
    except Preempted as exc:
        if dist.is_main:
            print(
                f"{exc}; checkpoint written, relaunch the same command to resume", file=sys.stderr
            )
        sys.exit(EXIT_INTERRUPTED if exc.signum == signal.SIGINT else EXIT_PREEMPTED)
    except KeyboardInterrupt:  # Ctrl-C before the loop listens (set-up), or a second Ctrl-C
        print(f"interrupted; relaunch the same command to resume from {files.latest_description()}",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)


def failed(exc: Exception, files: RunFiles, dist: Distributed, multirun: bool) -> None:
    """Report a run's error in one line per rank, mark the run failed if it diverged or never
    started, and exit 2 or 3 (a single-process multirun's cell returns instead)."""
    code = EXIT_NON_FINITE if isinstance(exc, NonFiniteError) else EXIT_USER_ERROR
    # every rank says it: an error may be one rank's own (an unreadable image it was given)
    rank = f"rank {dist.rank}: " if dist.enabled else ""
    print(f"error: {rank}{exc}", file=sys.stderr)
    # A refused relaunch of a healthy run (other config, directory in use) leaves it as it is.
    never_started = not (files.candidates() or isinstance(exc, RunInUseError))
    if dist.is_main and (isinstance(exc, NonFiniteError) or never_started):
        files.record_failure(str(exc), code)
    if multirun and not dist.enabled:
        return None  # the other cells of the sweep go on; this one is reported as failed
    # Several processes: exit, so the launcher (torchrun; SLURM with SLURM_KILL_BAD_EXIT)
    # ends the others, which may be waiting for this one.
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    files = RunFiles(hydra_cfg.runtime.output_dir)
    train_and_report(cfg, files, multirun=hydra_cfg.mode == RunMode.MULTIRUN)


def cli() -> None:
    """`python -m swa_repro.train`: the overrides' keys are checked first (one line naming the
    nearest valid keys); a single run's are composed first too (an unknown group option is one
    line); with Hydra's flags (-m, --cfg, ...) or settings (hydra.*, hydra/launcher=...) the
    composition is left to Hydra."""
    args = sys.argv[1:]
    overrides = [a for a in args if not a.startswith("-")]
    hydra_run = any(a.startswith(("-", "hydra.", "hydra/", "+hydra")) for a in args)
    if "--help" not in args and "-h" not in args:
        one_line_errors(check_override_keys if hydra_run else check_overrides)(overrides)
    main()


if __name__ == "__main__":
    cli()
