"""Bayesian model average of posterior samples, accumulated one sample at a time.

For samples w_1..w_N (SWAG or SWAG-Diag, each with its own BN refresh), the prediction after n is
    p_n(x) = (1/n) sum_{s <= n} softmax(f(x; w_s))
the average of PROBABILITIES, not of logits (Maddox et al. 2019; swa_gaussian's
experiments/uncertainty/uncertainty.py). Its accuracy, NLL (a mean over images, unlike the sum
the SWAG code prints), ECE and Brier (calibration.py) are recorded after every sample: the curve
against n = 1..N.

Only the running float64 sum of probabilities over this rank's images is kept (N_shard x C x 8
bytes; no model copies), with the sample count and the curve, so a posterior evaluation resumes
sample by sample from state_dict(). In a distributed run each rank holds its own shard of the
test set: `reduce` (a sum over ranks) turns the per-shard probability_sums into the whole set's
before the metrics are formed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from swa_repro.calibration import metrics_from_sums, probability_sums
from swa_repro.checkpoint import CheckpointError


class ModelAverage:
    """Running sum of softmax probabilities of the samples so far over one shard's images."""

    def __init__(self, labels: torch.Tensor, num_classes: int, device: torch.device | str = "cpu"):
        self.labels = labels.detach().to(device=device, dtype=torch.long)
        self.prob_sum = torch.zeros((len(labels), num_classes), dtype=torch.float64, device=device)
        self.samples = 0
        self.curve: list[dict[str, float]] = []

    @torch.no_grad()
    def add_sample(
        self,
        logits: torch.Tensor,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Add one sample's logits for this shard's images (in label order); returns the metrics
        of the average so far (of all ranks' shards when `reduce` sums over them: it gets a CPU
        float64 vector, as metrics.evaluate's), also appended to `curve`."""
        if logits.shape != self.prob_sum.shape:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)}; this average expects "
                f"{tuple(self.prob_sum.shape)}"
            )
        self.prob_sum += logits.detach().double().softmax(dim=1).to(self.prob_sum.device)
        self.samples += 1
        sums = self.sums()
        metrics = metrics_from_sums(sums if reduce is None else reduce(sums))
        self.curve.append(metrics)
        return metrics

    def probabilities(self) -> torch.Tensor:
        """The averaged prediction p_n (N_shard x C, float64)."""
        if self.samples == 0:
            raise ValueError("no sample has been added to the model average")
        return self.prob_sum / self.samples

    def sums(self) -> torch.Tensor:
        """probability_sums of the averaged prediction on this shard (add over ranks)."""
        return probability_sums(self.probabilities(), self.labels)

    def state_dict(self) -> dict:
        """{"samples": int, "prob_sum": Tensor, "labels": Tensor, "curve": [metric dicts]}."""
        return {
            "samples": self.samples,
            "prob_sum": self.prob_sum,
            "labels": self.labels,
            "curve": [dict(point) for point in self.curve],
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(); CheckpointError unless it is of this shard's images."""
        if state["prob_sum"].shape != self.prob_sum.shape or not torch.equal(
            state["labels"].to(self.labels.device), self.labels
        ):
            raise CheckpointError("model-average state is of other test images or classes")
        if len(state["curve"]) != state["samples"]:
            raise CheckpointError("model-average state: curve length differs from sample count")
        self.prob_sum.copy_(state["prob_sum"])
        self.samples = int(state["samples"])
        self.curve = [dict(point) for point in state["curve"]]
