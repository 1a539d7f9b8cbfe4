"""Fast Geometric Ensembling from an SGD checkpoint (dnn-mode-connectivity's fge.py).

SGD continues from the checkpoint's model and optimizer state (the run's momentum, weight
decay and batch size) for `epochs` epochs over the RunContext's training stream (purpose
"fge"), with the triangle cyclical LR, per iteration i = 1, 2, ... and c = cycle_epochs x
steps per epoch:

    t = (((i - 1) mod c) + 1) / c                      in (0, 1]
    lr = (1 - 2t) lr1 + 2t lr2        if t <= 0.5
       = (2 - 2t) lr2 + (2t - 1) lr1  if t >  0.5

A sample is taken at each lr2 minimum, the cycle midpoint t = 0.5 (the end of epoch
cycle_epochs / 2 of each cycle; cycle_epochs must be even), so epochs / cycle_epochs samples.
Each sample is evaluated with RunContext.evaluate (BN refresh, train and test metrics); its
test predictions p_s are the softmax of the model so refreshed, and the ensemble after S
samples predicts argmax of (1/S) sum_s p_s.

Outputs: the samples, save_checkpoint({"vectors": (S, P) float32, "epochs": [...]}) with
epochs counted on from the checkpoint's epoch; and an .npz with sample_test_acc (S,),
ensemble_test_acc (S,) (running ensemble after each sample), epochs (S,), <metric> (S,) for
each metric in METRICS, config (JSON: lr1, lr2, cycle_epochs, epochs, checkpoint, ...).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from tqdm.auto import tqdm

from swa_repro.analysis.common import (
    AnalysisError,
    check_number,
    context_settings,
    save_npz_atomic,
)
from swa_repro.analysis.points import METRICS, RunContext
from swa_repro.checkpoint import load_checkpoint, save_checkpoint
from swa_repro.data import eval_batches
from swa_repro.rng import seed_everything


@dataclass(frozen=True)
class FGESchedule:
    lr1: float
    lr2: float
    cycle_epochs: int

    def __call__(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The LR of step `step` (0-based) of epoch `epoch` (0-based, counted from the start)."""
        cycle = self.cycle_epochs * steps_per_epoch
        i = epoch * steps_per_epoch + step + 1
        t = (((i - 1) % cycle) + 1) / cycle
        if t <= 0.5:
            return (1.0 - 2.0 * t) * self.lr1 + 2.0 * t * self.lr2
        return (2.0 - 2.0 * t) * self.lr2 + (2.0 * t - 1.0) * self.lr1

    def samples_after(self, epoch: int) -> bool:
        """Whether 0-based epoch `epoch` ends at a cycle midpoint (lr = lr2)."""
        return epoch % self.cycle_epochs + 1 == self.cycle_epochs // 2


@torch.no_grad()
def test_probabilities(ctx: RunContext) -> torch.Tensor:
    """Softmax test predictions of ctx.model as RunContext.evaluate left it (point, refreshed BN)."""
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        batches = eval_batches(ctx.data.test_x, ctx.data.test_y, ctx.eval_batch_size, ctx.normalize)
        return torch.cat([ctx.model(x).float().softmax(dim=1).double() for x, _ in batches])
    finally:
        ctx.model.train(was_training)


def check_settings(lr1, lr2, cycle_epochs, epochs) -> None:
    """AnalysisError naming the first bad FGE setting."""
    if not isinstance(cycle_epochs, int) or cycle_epochs < 2 or cycle_epochs % 2:
        raise AnalysisError(f"cycle_epochs must be an even integer >= 2, got {cycle_epochs!r}")
    if not isinstance(epochs, int) or epochs < cycle_epochs // 2:
        raise AnalysisError(
            f"epochs must be an integer >= cycle_epochs / 2 (one sample), got {epochs!r}"
        )
    if not (check_number(lr1, "lr1") > 0 and check_number(lr2, "lr2") > 0):
        raise AnalysisError(f"lr1 and lr2 must be > 0, got {lr1!r} and {lr2!r}")


def start_from(ctx: RunContext, checkpoint: str | Path, lr: float):
    """(model, optimiser, epoch) of a training checkpoint: the run's SGD state to continue."""
    state = load_checkpoint(checkpoint)
    if not {"model", "optimizer", "epoch"} <= state.keys():
        raise AnalysisError(f"{checkpoint} is not a training checkpoint (model, optimizer, epoch)")
    model = copy.deepcopy(ctx.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise AnalysisError(f"checkpoint {checkpoint} does not hold run_dir's model") from None
    optim = ctx.cfg.optim
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, int(state["epoch"])


def fge_epoch(ctx: RunContext, model, optimizer, schedule: FGESchedule, epoch: int) -> None:
    """One epoch of SGD on the cyclical LR over the training stream (purpose "fge")."""
    model.train()
    steps = len(ctx.stream)
    for step, (inputs, targets) in enumerate(ctx.stream.batches("fge", epoch)):
        for group in optimizer.param_groups:
            group["lr"] = schedule(epoch, step, steps)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class Samples:
    """The FGE samples so far: weights, metrics, each sample's and the ensemble's accuracy."""

    def __init__(self, labels: torch.Tensor):
        self.labels, self.probability_sum = labels, None
        self.vectors, self.epochs, self.rows = [], [], []
        self.sample_acc, self.ensemble_acc = [], []

    def add(self, ctx: RunContext, model, epoch: int) -> None:
        """Evaluate `model` as a point (BN refresh, metrics) and add it to the ensemble."""
        vector = parameters_to_vector(model.parameters()).detach().cpu().clone()
        self.rows.append(ctx.evaluate(vector))
        probabilities = test_probabilities(ctx)
        total = self.probability_sum
        self.probability_sum = probabilities if total is None else total + probabilities
        self.sample_acc.append(self.accuracy(probabilities))
        self.ensemble_acc.append(self.accuracy(self.probability_sum))
        self.vectors.append(vector)
        self.epochs.append(epoch)
        tqdm.write(
            f"FGE sample {len(self.vectors)} (epoch {epoch}): test acc {self.sample_acc[-1]:.2f}, "
            f"ensemble of {len(self.vectors)}: {self.ensemble_acc[-1]:.2f}"
        )

    def accuracy(self, probabilities: torch.Tensor) -> float:
        return 100.0 * float((probabilities.argmax(1) == self.labels).double().mean())

    def arrays(self, settings: dict) -> dict[str, np.ndarray]:
        return {
            "sample_test_acc": np.array(self.sample_acc),
            "ensemble_test_acc": np.array(self.ensemble_acc),
            "epochs": np.array(self.epochs),
            **{m: np.array([row[m] for row in self.rows]) for m in METRICS},
            "config": np.array(json.dumps(settings)),
        }


def compute_fge(
    ctx: RunContext,
    checkpoint: str | Path,
    out_path: str | Path,
    samples_path: str | Path,
    lr1: float = 0.05,
    lr2: float = 0.01,
    cycle_epochs: int = 2,
    epochs: int = 40,
    progress: bool = True,
    config: dict | None = None,
) -> dict[str, np.ndarray]:
    """Run FGE from `checkpoint`, write the samples and the .npz; returns the .npz arrays."""
    check_settings(lr1, lr2, cycle_epochs, epochs)
    out_path, samples_path = Path(out_path), Path(samples_path)
    model, optimizer, start_epoch = start_from(ctx, checkpoint, lr1)
    schedule = FGESchedule(lr1, lr2, cycle_epochs)
    seed_everything(ctx.seed)
    samples = Samples(ctx.data.test_y)
    for epoch in tqdm(range(epochs), desc="fge", disable=None if progress else True):
        fge_epoch(ctx, model, optimizer, schedule, epoch)
        if schedule.samples_after(epoch):
            samples.add(ctx, model, start_epoch + epoch + 1)
    settings = {
        "analysis": "fge",
        "lr1": lr1,
        "lr2": lr2,
        "cycle_epochs": cycle_epochs,
        "epochs": epochs,
        "checkpoint": str(checkpoint),
        "start_epoch": start_epoch,
        "samples": str(samples_path),
        "momentum": float(ctx.cfg.optim.momentum),
        **context_settings(ctx),
        **(config or {}),
    }
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    vectors = {"vectors": torch.stack(samples.vectors), "epochs": samples.epochs}
    save_checkpoint({**vectors, "config": json.dumps(settings)}, samples_path)
    arrays = samples.arrays(settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(out_path, arrays)
    return arrays
