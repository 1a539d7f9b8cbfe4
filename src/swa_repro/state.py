"""What a training run carries from one process to the next: the TrainState, and the one place
where it is written into a checkpoint with the modules and the optimiser, and read back.

A checkpoint (swa_repro.checkpoint: checksummed, atomic, loaded with weights_only=True) holds

    epoch, step         the position: `epoch` epochs done, then `step` steps of the next one
    totals              [loss sum, correct, images] of that epoch's steps, summed over the ranks
    metrics, readings   the evaluated records and the budget readings so far (JSON text)
    elapsed_s           training time so far;  logger_run_id: the W&B run to continue
    model, optimizer    the SGD model's and the optimiser's state_dicts
    collectors          {name: state_dict} of every averaged model (swa_repro.collectors)
    rng, rng_ranks      every global random state (of each rank, in a distributed run)
    config              the resolved config (YAML text)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from swa_repro.checkpoint import CheckpointError
from swa_repro.cli import first_line
from swa_repro.rng import capture_rng_state, restore_rng_state

STATE_KEYS = ("epoch", "step", "totals", "metrics", "readings", "elapsed_s", "logger_run_id")
CHECKPOINT_KEYS = {*STATE_KEYS, "model", "optimizer", "collectors", "rng", "rng_ranks", "config"}
LATER_COLLECTORS = ("ema_", "swag")  # added to the project after the first runs were saved


def zero_totals() -> list:
    return [0.0, 0.0, 0]


@dataclass
class TrainState:
    """The run's progress beyond its modules; everything here is checkpointed."""

    epoch: int = 0  # epochs done
    step: int = 0  # steps done of epoch `epoch` (0 at an epoch boundary)
    totals: list = field(default_factory=zero_totals)  # [loss sum, correct, images] so far
    metrics: list[dict] = field(default_factory=list)  # one record per evaluated epoch
    readings: dict[str, dict] = field(default_factory=dict)  # budget label -> test metrics
    elapsed_s: float = 0.0  # training time before this process took over
    logger_run_id: str | None = None

    def position(self) -> str:
        """Where the run stands, for messages: "epoch 3 step 41" or "epoch 3"."""
        return f"epoch {self.epoch + 1}" + (f" step {self.step + 1}" if self.step else "")


def checkpoint_of(run, elapsed_s: float) -> dict:
    """The checkpoint of `run` (a swa_repro.loop.Run) at its state's position; called on every
    rank: the ranks' random states are gathered (a collective call)."""
    state, dist = run.state, run.dist
    rngs = dist.gather(capture_rng_state())
    return {
        "epoch": state.epoch,
        "step": state.step,
        "totals": list(state.totals),
        "metrics": json.dumps(state.metrics),
        "readings": json.dumps(state.readings),
        "elapsed_s": elapsed_s,
        "logger_run_id": state.logger_run_id,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "collectors": {c.name: c.state_dict() for c in run.collectors},
        "rng": rngs[0],
        "rng_ranks": rngs if dist.enabled else None,
        "config": OmegaConf.to_yaml(run.cfg, resolve=True),
    }


def check_checkpoint(saved: dict) -> None:
    """CheckpointError naming the file unless `saved` is a training checkpoint of this format."""
    missing = CHECKPOINT_KEYS - set(saved)
    if missing:
        raise CheckpointError(
            f"checkpoint {saved['path']} is not a swa_repro training checkpoint of this version "
            f"(lacks {', '.join(sorted(missing))}); move it away to start over"
        )


def restore(run, saved: dict) -> TrainState:
    """Load `saved` into the run's modules, optimiser, collectors and random state; returns the
    TrainState to continue from. A checkpoint of another run (resume=PATH, saved["own"] false)
    gives its weights, optimiser state and position, not its history. The run's own checkpoint
    saved before a collector existed (an EMA or SWAG collector, LATER_COLLECTORS) continues
    without that collector."""
    check_checkpoint(saved)
    try:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        for collector in list(run.collectors):
            if collector.name in saved["collectors"]:
                collector.load_state_dict(saved["collectors"][collector.name])
            elif saved["own"] and collector.name.startswith(LATER_COLLECTORS):
                run.collectors.remove(collector)
                if run.dist.is_main:
                    print(f"note: {saved['path']} has no {collector.name}: continuing without it")
            elif saved["own"]:
                raise KeyError(f"no state of the averaged model {collector.name!r}")
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {saved['path']} does not fit this model: {first_line(exc)}"
        ) from None
    rank = run.dist.rank
    rng_of_ranks = saved["rng_ranks"] or [saved["rng"]]
    if rank < len(rng_of_ranks):  # a rank added since keeps its fresh seeding
        restore_rng_state(rng_of_ranks[rank])
    state = TrainState(saved["epoch"], saved["step"])
    if run.dist.is_main:  # the saved totals are over all ranks: counted once, on rank 0
        state.totals = list(saved["totals"])
    if saved["own"]:
        state.metrics, state.readings = json.loads(saved["metrics"]), json.loads(saved["readings"])
        state.elapsed_s, state.logger_run_id = saved["elapsed_s"], saved["logger_run_id"]
    return state
