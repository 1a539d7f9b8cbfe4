"""Metrics of predicted probabilities, reliability-diagram numbers and temperature scaling.

For probabilities p (N images x C classes), labels y, confidence c = max_k p_k, hit = argmax = y:
    acc   = 100 * mean hit                       (err = 100 - acc)
    nll   = mean over images of -log max(p_y, 1e-12)   (a MEAN: the SWAG code prints a sum)
    brier = mean over images of sum_k (p_k - [k = y])^2 = mean of (sum_k p_k^2 - 2 p_y + 1)
    ece   = sum_b (n_b / N) |acc_b - conf_b|, 15 equal-width bins over (0, 1], an edge going to
            the lower bin (metrics.bin_sums, the convention of every ECE in this project)
Reliability diagram (Guo et al., ICML 2017, Fig. 1): per bin the count, the accuracy (a fraction)
and the mean confidence. Not comparable with the SWAG code's own curves (20 equal-MASS bins).

All of these are formed from a float64 vector of sums (probability_sums), so a distributed run
sums the vectors of its ranks' shards and forms the metrics once (metrics_from_sums).
torchmetrics' MulticlassCalibrationError (l1, 15 bins) gives the same ECE except at bin edges:
its bins are [lower, upper) and a confidence of exactly 1.0 gets a bin of its own.

Temperature scaling (Guo et al. 2017; gpleiss/temperature_scaling): softmax(logits / T), one
scalar T > 0 fitted on held-out data (never the test set) by minimising the NLL. Fitted as log T
(T > 0 without constraints) in float64 by LBFGS with a strong-Wolfe line search from T = 1: the
reference's fixed lr 0.01 and 50 iterations can stop short of the optimum (gpleiss issues #20,
#28). For a Bayesian model average the "logits" are the log of the averaged probabilities (as
swa_gaussian's temp_scaling.py). When the held-out NLL does not decrease, T stays 1 with the
reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swa_repro.config_check import ConfigError
from swa_repro.metrics import ECE_BINS, bin_sums, ece_from_bins

PROB_FLOOR = 1e-12
HEAD = ("nll_sum", "hits", "count", "brier_sum")
BINNING = f"{ECE_BINS} equal-width confidence bins over (0, 1], an edge going to the lower bin"
NO_HELD_OUT = "no held-out split to fit a temperature on (data.val_size=0)"


def probability_sums(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CPU float64 [nll sum, hits, count, Brier sum, per-bin confidence sums (15), hit sums (15),
    counts (15)] of probabilities `probs` (N x C) for `labels` (N): add these over shards."""
    probs = probs.detach().double()
    labels = labels.to(probs.device)
    confidence, predicted = probs.max(dim=1)
    hits = (predicted == labels).cpu()
    true_class = probs.gather(1, labels[:, None]).squeeze(1)
    brier = probs.square().sum(dim=1) - 2 * true_class + 1
    nll = -true_class.clamp_min(PROB_FLOOR).log()
    confidence = confidence.cpu()
    head = [nll.sum().cpu(), hits.double().sum(), torch.tensor(float(len(labels))), brier.sum()]
    per_bin = (*bin_sums(confidence, hits), bin_sums(confidence, torch.ones_like(confidence))[1])
    return torch.cat([torch.stack([v.double().cpu() for v in head]), *per_bin])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """acc and err (%), nll, ece (fraction), brier from (summed) probability_sums."""
    nll_sum, hits, n, brier_sum = (float(v) for v in sums[: len(HEAD)])
    conf_sums, hit_sums, _ = _per_bin(sums)
    acc = 100.0 * hits / n
    return {
        "acc": acc,
        "err": 100.0 - acc,
        "nll": nll_sum / n,
        "ece": ece_from_bins(conf_sums, hit_sums, n),
        "brier": brier_sum / n,
    }


def reliability_from_sums(sums: torch.Tensor) -> dict[str, list]:
    """Per bin: edges (16), count, accuracy and mean confidence (fractions; None where empty)."""
    conf_sums, hit_sums, counts = _per_bin(sums)
    nonempty = [int(c) > 0 for c in counts]
    return {
        "edges": torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64).tolist(),
        "count": [int(c) for c in counts],
        "accuracy": [
            float(h / c) if ok else None
            for h, c, ok in zip(hit_sums, counts, nonempty, strict=True)
        ],
        "confidence": [
            float(s / c) if ok else None
            for s, c, ok in zip(conf_sums, counts, nonempty, strict=True)
        ],
    }


def probability_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc, err, nll, ece, brier of one probability matrix (see metrics_from_sums)."""
    return metrics_from_sums(probability_sums(probs, labels))


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """Reliability-diagram numbers of one probability matrix (see reliability_from_sums)."""
    return reliability_from_sums(probability_sums(probs, labels))


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of sum_k (p_k - [k = y])^2."""
    return probability_metrics(probs, labels)["brier"]


def as_logits(probs: torch.Tensor) -> torch.Tensor:
    """log max(p, 1e-12) in float64: averaged probabilities as logits for temperature scaling."""
    return probs.detach().double().clamp_min(PROB_FLOOR).log()


def scaled_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in float64."""
    return (logits.detach().double() / temperature).softmax(dim=1)


@dataclass(frozen=True)
class TemperatureFit:
    """T, the held-out NLL at T = 1 and at T; reason says why T was kept at 1 (else None)."""

    temperature: float
    nll_before: float
    nll_after: float
    reason: str | None = None

    @property
    def fitted(self) -> bool:
        return self.reason is None


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100
) -> TemperatureFit:
    """T minimising the NLL of softmax(logits / T) on held-out `logits` (gathered from all ranks),
    or T = 1 with a reason when that does not lower the held-out NLL."""
    if len(labels) == 0:
        raise ConfigError(
            "temperature scaling needs held-out data: set data.val_size > 0 (it has 0 images)"
        )
    logits, labels = logits.detach().double(), labels.to(logits.device)
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(logits * torch.exp(-log_t), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = float(log_t.detach().exp())
    before = float(F.cross_entropy(logits, labels))
    after = float(F.cross_entropy(logits / temperature, labels))
    if not (math.isfinite(temperature) and temperature > 0 and after < before):
        reason = f"held-out NLL did not decrease ({before:.6g} at T = 1, {after:.6g} at T = {temperature:.6g})"
        return TemperatureFit(1.0, before, before, reason)
    return TemperatureFit(temperature, before, after)


def _per_bin(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return sums[len(HEAD) :].view(3, ECE_BINS).unbind(0)


def calibration_record(
    test_probs: torch.Tensor,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    no_fit_reason: str = NO_HELD_OUT,
) -> dict:
    """One model's calibration: test metrics and reliability of `test_probs` (this rank's
    share; `reduce` sums the shares' sums over the ranks); with `held_out` (logits, labels of
    the whole held-out split) the temperature fitted there and the test metrics and reliability
    of softmax(test_logits / T); without, temperature None and `no_fit_reason`."""

    def summed(probs):
        sums = probability_sums(probs, test_labels)
        sums = sums if reduce is None else reduce(sums)
        return {"metrics": metrics_from_sums(sums), "reliability": reliability_from_sums(sums)}

    record = {"binning": BINNING, **summed(test_probs)}
    if held_out is None:
        return {**record, "temperature": None, "scaled": None, "reason": no_fit_reason}
    fit = fit_temperature(*held_out)
    return {
        **record,
        "temperature": fit.temperature,
        "held_out_nll": {"at_1": fit.nll_before, "at_t": fit.nll_after},
        "scaled": summed(scaled_probabilities(test_logits, fit.temperature)),
        "reason": fit.reason,
    }
