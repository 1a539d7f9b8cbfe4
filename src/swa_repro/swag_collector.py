"""SWAG as a collector of the training loop: the posterior of swa_repro.swag, collected at the SWA
epochs (the same swa_start and swa_c_epochs, and the starting weights when
method.swa_include_start), around the SWA collector's mean.

The first moment is the SWA average itself (no second copy): this collector comes after the SWA
collector in build_collectors, so that at each collection it sees the mean AFTER the new
model's inclusion, as the reference (wjmaddox/swa_gaussian, SWAG.collect_model) takes its
deviation. Memory: the SWA mean, sq_mean and max_rank deviations, (max_rank + 2) copies of the
parameters (swag.deviations_on_cpu moves the max_rank deviations to CPU memory; swag.low_rank
false keeps none, SWAG-Diag only). Nothing is evaluated during training; at the end of the run
the Bayesian model average of SWAG-Diag and SWAG samples (swa_repro.posterior) gives the
"swag_diag" and "swag" entries of the summary.

Checkpoints carry count, sq_mean and the deviations, kept ones (epoch_NNNN.pt) too: any of them
is a point a run resumes from bitwise (a damaged last.pt falls back to them), at the price of
max_rank copies of the parameters per kept epoch on disk (docs/beyond_paper.md).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from swa_repro.averaging import is_averaging_epoch
from swa_repro.collectors import SWA, Collector
from swa_repro.posterior import PosteriorSettings
from swa_repro.swag import Swag


class SwagCollector(Collector):
    """The SWAG posterior of an SWA run (collects when its SWA collector does)."""

    name = "swag"

    def __init__(self, swa: SWA, settings: DictConfig) -> None:
        self.swa = swa
        self.posterior = Swag(
            self.mean(),
            settings.max_rank,
            low_rank=settings.low_rank,
            deviation_device="cpu" if settings.deviations_on_cpu else None,
        )
        self.settings = PosteriorSettings.from_cfg(settings)

    def mean(self) -> list[torch.Tensor]:
        """The SWA mean: the averaged model's parameters."""
        return list(self.swa.average.parameters())

    def begin(self, model: nn.Module) -> None:
        """The starting weights, when the SWA collector has just taken them as its first model."""
        if self.swa.include_start and self.swa.n_averaged == 1 and self.posterior.count == 0:
            self.posterior.update(list(model.parameters()), self.mean())

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if is_averaging_epoch(epoch, self.swa.start, self.swa.every):
            self.posterior.update(list(model.parameters()), self.mean())

    def final_metrics(self, end) -> dict:
        return end.finish_posterior(self.posterior, self.swa.average.module, self.settings)

    def identical_tensors(self) -> list[torch.Tensor]:
        return [*self.posterior.sq_mean, *(self.posterior.deviations or [])]

    def state_dict(self) -> dict:
        return self.posterior.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.posterior.load_state_dict(state)
