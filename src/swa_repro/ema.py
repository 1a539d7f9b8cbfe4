"""Exponential moving average of the weights (EMA), one collector per decay.

After every SGD step t, for each parameter (and, for the ablation, each floating-point buffer):

    w_ema <- decay * w_ema + (1 - decay) * w_t          w_ema = w_0 before the first step

so after T steps  w_ema = decay^T w_0 + (1 - decay) sum_{t=1..T} decay^(T - t) w_t : a window of
about 1 / (1 - decay) steps (0.999, 0.9998, 0.9999: 2.6, 13 and 26 CIFAR epochs at batch 128).
The update is torch.optim.swa_utils' fused EMA (get_ema_multi_avg_fn: one foreach lerp per
tensor list) called directly: AveragedModel.update_parameters reads its step counter on the host
(`n_averaged == 0`), a host-device sync per step, and with use_buffers=False copies the live
model's BN buffers into the average.

Evaluated as SWA is: BN statistics recomputed for the EMA weights over the training stream
(bn_refresh), then the test set ("ema_<decay>"). Stale BN statistics are the most reported EMA
bug (timm #245, pytorch/ignite #2590): as an ablation the same weights are also evaluated with
the EMA of the BN buffers, the timm ModelEmaV3 convention, without refresh ("ema_<decay>_bnavg").
Integer buffers (num_batches_tracked) are not averaged (they do not enter evaluation).

In a distributed run the parameters are identical on every rank (DDP), the live BN buffers are
not: the averaged buffers are broadcast from rank 0 after every epoch, as timm's distribute_bn
does for its EMA copy. The evaluations keep the global RNG as it was (a BN refresh of a model
with dropout draws from it), so adding an EMA changes no SGD or SWA number.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from swa_repro.collectors import Collector, Evaluation
from swa_repro.distributed import Distributed


def ema_name(decay: float) -> str:
    """The collector's name and metric key: ema_0.999, ema_0.9998, ... (the decay as written)."""
    return f"ema_{float(decay)!r}"


def float_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for b in module.buffers() if b.is_floating_point()]


class EMA(Collector):
    """The EMA of the SGD iterates for one decay; evaluated at `eval_epochs` (1-based; None:
    whenever the loop evaluates)."""

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        eval_epochs: set[int] | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.name, self.decay = ema_name(decay), decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.average_buffers = [b.detach().clone() for b in float_buffers(model)]
        self.eval_epochs, self.dist = eval_epochs, dist or Distributed()
        self.update = get_ema_multi_avg_fn(decay)
        self.updates = 0  # SGD steps averaged in
        self.epochs_done = 0
        self.loaded = False
        self.buffers_agree = True  # the averaged buffers are the same on every rank (not mid-epoch)

    def begin(self, model: nn.Module) -> None:
        """Start from the model's weights now (a run seeded by resume=PATH has loaded them),
        unless the checkpoint that seeded the run carried this EMA."""
        if not self.loaded:
            self.module.load_state_dict(model.state_dict())
            for average, live in zip(self.average_buffers, float_buffers(model), strict=True):
                average.copy_(live)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        self.update(list(self.module.parameters()), [p.detach() for p in model.parameters()], None)
        if self.average_buffers:
            self.update(self.average_buffers, float_buffers(model), None)
        self.updates += 1
        self.buffers_agree = False

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.epochs_done = epoch + 1
        self.dist.broadcast(self.average_buffers)
        self.buffers_agree = True

    def evaluations(self) -> list[Evaluation]:
        """At an evaluation epoch: first the averaged BN buffers as they are (the ablation),
        then a BN refresh (which leaves the module with its own statistics, as exported).
        The loop evaluates the list in order."""
        if self.eval_epochs is not None and self.epochs_done not in self.eval_epochs:
            return []
        for buffer, average in zip(float_buffers(self.module), self.average_buffers, strict=True):
            buffer.copy_(average)
        return [
            Evaluation(f"{self.name}_bnavg", self.module, refresh_bn=False, keep_rng=True),
            Evaluation(self.name, self.module, keep_rng=True),
        ]

    def final_metrics(self, end) -> dict:
        end.finish_model(self.name, self.module, ema_decay=self.decay, ema_updates=self.updates)
        return {}

    def identical_tensors(self) -> list[torch.Tensor]:
        """The EMA weights; the averaged BN buffers too, except mid-epoch (each rank averages
        its own live BN buffers until they are broadcast)."""
        return [*self.module.parameters(), *(self.average_buffers if self.buffers_agree else [])]

    def state_dict(self) -> dict:
        """Flat: "module.<key>" (the weights and the BN buffers of the last evaluation),
        "average.<i>" (the averaged float buffers), "updates"."""
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        state.update({f"average.{i}": b for i, b in enumerate(self.average_buffers)})
        state["updates"] = torch.tensor(self.updates)
        return state

    def load_state_dict(self, state: dict) -> None:
        module = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
        self.module.load_state_dict(module)
        averages = [state[f"average.{i}"] for i in range(len(self.average_buffers))]
        for buffer, saved in zip(self.average_buffers, averages, strict=True):
            buffer.copy_(saved)
        self.updates, self.loaded = int(state["updates"]), True
