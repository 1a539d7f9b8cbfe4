"""Averaged models built from the SGD iterates ("collectors"), behind one small interface.

The training loop knows a collector only through these calls:

    name                       its key in checkpoints (state["collectors"][name]) and metrics
    begin(model)               once, when a run starts its own history (not on a resume)
    after_step(model)          after every SGD step (an EMA updates here; must not sync host and
                               device, it runs in the hot loop)
    after_epoch(model, epoch)  after every 0-based epoch (SWA and SWAG collect here when due)
    evaluations()              what to evaluate now: Evaluation(key, module, refresh_bn, extra,
                               keep_rng), evaluated in the list's order; none before anything
                               has been collected
    final_metrics(end)         once at the end of the run: extra summary entries (a SWAG
                               posterior's Bayesian model average), {} by default; `end`
                               (swa_repro.run_end.RunEnd) evaluates, calibrates and exports models
    identical_tensors()        what must be bitwise equal on every rank (checked at checkpoints)
    state_dict() / load_state_dict(state)   what a checkpoint carries for a bitwise resume

A new averaged model subclasses Collector, overrides what it needs and is listed by
`build_collectors`; the loop is not edited. Evaluating an Evaluation means: a BN refresh of its
module over the training stream (when refresh_bn; with keep_rng the global RNG, which a model
with dropout draws from, is restored afterwards), then the test metrics, recorded as
"<key>_test_<metric>" plus `extra` (e.g. n_averaged).

The collectors of a run, in order (build_collectors): "swa" (SWA runs), "swag" (SWA runs with
swag.collect: shares the SWA mean, so it comes after it), "ema_<decay>" for each of ema.decays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn

from swa_repro.averaging import is_averaging_epoch, make_averaged_model
from swa_repro.budgets import ema_eval_epochs
from swa_repro.distributed import Distributed


@dataclass
class Evaluation:
    """One model a collector asks the loop to evaluate."""

    key: str  # metrics are recorded as f"{key}_test_{metric}"
    module: nn.Module
    refresh_bn: bool = True  # recompute BN statistics over the training stream first
    extra: dict = field(default_factory=dict)  # recorded as they are (e.g. {"n_averaged": 5})
    keep_rng: bool = False  # restore the global RNG after the BN refresh (collectors added later)


class Collector:
    """The interface (every method a no-op); see the module docstring."""

    name: str = "collector"

    def begin(self, model: nn.Module) -> None:
        """Called once when the run starts its own history (fresh, or seeded by resume=PATH)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after every SGD step; must not synchronise host and device."""

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after every (0-based) epoch of SGD."""

    def evaluations(self) -> list[Evaluation]:
        """The models to evaluate now (after an epoch, when the loop evaluates)."""
        return []

    def final_metrics(self, end) -> dict:
        """Summary entries computed once at the end; `end.evaluate(module)` = BN refresh + test
        metrics, `end.finish_model(key, module)` = calibration and weights export."""
        return {}

    def identical_tensors(self) -> list[torch.Tensor]:
        """Tensors every rank of a distributed run holds identically."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""


class SWA(Collector):
    """Stochastic weight averaging (averaging.py): the equal-weight mean of the models collected
    after the epochs `is_averaging_epoch` names; with include_start also the starting weights
    (Algorithm 1's w_SWA <- w-hat)."""

    name = "swa"

    def __init__(
        self, model: nn.Module, start: float, every: int, include_start: bool = False
    ) -> None:
        self.average = make_averaged_model(model)
        self.start, self.every, self.include_start = start, every, include_start

    @property
    def n_averaged(self) -> int:
        return int(self.average.n_averaged)

    def begin(self, model: nn.Module) -> None:
        if self.include_start and self.n_averaged == 0:
            self.average.update_parameters(model)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if is_averaging_epoch(epoch, self.start, self.every):
            self.average.update_parameters(model)

    def evaluations(self) -> list[Evaluation]:
        n = self.n_averaged
        return [Evaluation("swa", self.average, extra={"n_averaged": n})] if n else []

    def final_metrics(self, end) -> dict:
        end.finish_model("swa", self.average.module, n_averaged=self.n_averaged)
        return {}

    def identical_tensors(self) -> list[torch.Tensor]:
        return list(self.average.parameters())

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)


def build_collectors(
    cfg: DictConfig, model: nn.Module, dist: Distributed | None = None
) -> list[Collector]:
    """The collectors a run's config asks for, in the order they update and are evaluated."""
    from swa_repro.ema import EMA  # (they subclass Collector: imported here, not at the top)
    from swa_repro.swag_collector import SwagCollector

    collectors: list[Collector] = []
    method = cfg.method
    if method.swa:
        swa = SWA(model, method.swa_start, method.swa_c_epochs, method.swa_include_start)
        collectors.append(swa)
        if cfg.swag.collect:
            collectors.append(SwagCollector(swa, cfg.swag))
    eval_epochs = ema_eval_epochs(cfg)
    collectors += [EMA(model, decay, eval_epochs, dist) for decay in cfg.ema.decays]
    return collectors
