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
    if not isinstance(cycle_epochs, int) or cycle_epochs < 2 or cycle_epochs % 2:
        raise AnalysisError(f"cycle_epochs must be an even integer >= 2, got {cycle_epochs!r}")
    if not isinstance(epochs, int) or epochs < cycle_epochs // 2:
        raise AnalysisError(
            f"epochs must be an integer >= cycle_epochs / 2 (one sample), got {epochs!r}"
        )
    if not (check_number(lr1, "lr1") > 0 and check_number(lr2, "lr2") > 0):
        raise AnalysisError(f"lr1 and lr2 must be > 0, got {lr1!r} and {lr2!r}")
    out_path, samples_path = Path(out_path), Path(samples_path)
    state = load_checkpoint(checkpoint)
    if not {"model", "optimizer", "epoch"} <= state.keys():
        raise AnalysisError(f"{checkpoint} is not a training checkpoint (model, optimizer, epoch)")
    model = copy.deepcopy(ctx.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise AnalysisError(f"checkpoint {checkpoint} does not hold run_dir's model") from None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr1,
        momentum=ctx.cfg.optim.momentum,
        weight_decay=ctx.cfg.optim.weight_decay,
    )
    optimizer.load_state_dict(state["optimizer"])
    schedule = FGESchedule(lr1, lr2, cycle_epochs)
    steps = len(ctx.stream)
    start_epoch = int(state["epoch"])
    seed_everything(ctx.seed)

    vectors, sample_epochs, rows = [], [], []
    sample_acc, ensemble_acc = [], []
    labels = ctx.data.test_y
    probability_sum = None
    for epoch in tqdm(range(epochs), desc="fge", disable=None if progress else True):
        model.train()
        for step, (inputs, targets) in enumerate(ctx.stream.batches("fge", epoch)):
            for group in optimizer.param_groups:
                group["lr"] = schedule(epoch, step, steps)
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if not schedule.samples_after(epoch):
            continue
        vector = parameters_to_vector(model.parameters()).detach().cpu().clone()
        rows.append(ctx.evaluate(vector))
        probabilities = test_probabilities(ctx)
        probability_sum = (
            probabilities if probability_sum is None else probability_sum + probabilities
        )
        sample_acc.append(100.0 * float((probabilities.argmax(1) == labels).double().mean()))
        ensemble_acc.append(100.0 * float((probability_sum.argmax(1) == labels).double().mean()))
        vectors.append(vector)
        sample_epochs.append(start_epoch + epoch + 1)
        tqdm.write(
            f"FGE sample {len(vectors)} (epoch {sample_epochs[-1]}): test acc {sample_acc[-1]:.2f}, "
            f"ensemble of {len(vectors)}: {ensemble_acc[-1]:.2f}"
        )

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
    save_checkpoint(
        {"vectors": torch.stack(vectors), "epochs": sample_epochs, "config": json.dumps(settings)},
        samples_path,
    )
    arrays = {
        "sample_test_acc": np.array(sample_acc),
        "ensemble_test_acc": np.array(ensemble_acc),
        "epochs": np.array(sample_epochs),
        **{m: np.array([row[m] for row in rows]) for m in METRICS},
        "config": np.array(json.dumps(settings)),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(out_path, arrays)
    return arrays
