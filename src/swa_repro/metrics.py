"""Evaluation of a model on a stream of batches.

nll  = mean cross-entropy of the predictions
loss = nll + (weight_decay / 2) * ||w||^2   (the L2-regularised objective SGD minimises;
       equal to nll when weight_decay = 0, as in the training-time test metrics)
acc  = 100 * fraction correct;  err = 100 - acc
ece  = sum_b (n_b / N) |acc_b - conf_b| over 15 equal-width confidence bins, as a fraction
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

ECE_BINS = 15


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    weight_decay: float = 0.0,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Metrics of `model` in eval mode over `batches` (mode restored afterwards).

    The batches are summed into one float64 vector (NLL sum, hits, count, and per ECE bin the
    confidence sum and hit sum); `reduce` (a sum over the ranks of a distributed run,
    each evaluating its share of the data) is applied to it before the metrics are formed.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3 + 2 * ECE_BINS, dtype=torch.float64)
    try:
        for inputs, labels in batches:
            logits = model(inputs).float()
            nll = F.cross_entropy(logits, labels, reduction="sum").double().cpu()
            conf, pred = logits.softmax(dim=1).max(dim=1)
            sums += batch_sums(nll, conf.cpu(), (pred == labels).cpu())
    finally:
        model.train(was_training)
    if reduce is not None:
        device = next(model.parameters()).device
        sums = reduce(sums.to(device)).cpu()
    nll_sum, correct, n = (float(v) for v in sums[:3])
    bin_conf, bin_hits = sums[3:].view(2, ECE_BINS)
    nll = nll_sum / n
    l2 = (
        sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
        if weight_decay
        else 0.0
    )
    acc = 100.0 * correct / n
    return {
        "loss": nll + 0.5 * weight_decay * l2,
        "nll": nll,
        "acc": acc,
        "err": 100.0 - acc,
        "ece": ece_from_bins(bin_conf, bin_hits, n),
    }


def batch_sums(nll_sum: torch.Tensor, conf: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """[nll sum, hits, count, per-bin confidence sums (15), per-bin hit sums (15)]."""
    head = torch.stack([nll_sum.double(), hits.double().sum(), torch.tensor(float(len(conf)))])
    return torch.cat([head, *bin_sums(conf, hits)])


def bin_sums(
    confidences: torch.Tensor, hits: torch.Tensor, bins: int = ECE_BINS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin sums of confidences and of hits; equal-width bins over (0, 1], a confidence on a
    bin edge going to the lower bin."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(confidences.double(), edges, right=False) - 1).clamp(0, bins - 1)
    return tuple(
        torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, values.double())
        for values in (confidences, hits)
    )


def ece_from_bins(conf_sums: torch.Tensor, hit_sums: torch.Tensor, n: float) -> float:
    """sum_b (n_b / N) |acc_b - conf_b| = sum_b |hits_b - sum of conf_b| / N."""
    return float((hit_sums - conf_sums).abs().sum()) / n


def expected_calibration_error(
    confidences: torch.Tensor, hits: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE with `bins` equal-width bins over (0, 1] (see bin_sums)."""
    return ece_from_bins(*bin_sums(confidences, hits, bins), len(confidences))
