"""Evaluation of a model on a stream of batches.

nll  = mean cross-entropy of the predictions
loss = nll + (weight_decay / 2) * ||w||^2   (the L2-regularised objective SGD minimises;
       equal to nll when weight_decay = 0, as in the training-time test metrics)
acc  = 100 * fraction correct;  err = 100 - acc
ece  = sum_b (n_b / N) |acc_b - conf_b| over 15 equal-width confidence bins, as a fraction
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

ECE_BINS = 15


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """Metrics of `model` in eval mode over `batches` (mode restored afterwards)."""
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    confidences, hits = [], []
    try:
        for inputs, labels in batches:
            logits = model(inputs).float()
            nll_sum += F.cross_entropy(logits, labels, reduction="sum").double().cpu()
            conf, pred = logits.softmax(dim=1).max(dim=1)
            hit = pred == labels
            correct += int(hit.sum())
            confidences.append(conf.cpu())
            hits.append(hit.cpu())
    finally:
        model.train(was_training)
    n = sum(len(h) for h in hits)
    nll = float(nll_sum) / n
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
        "ece": expected_calibration_error(torch.cat(confidences), torch.cat(hits)),
    }


def expected_calibration_error(
    confidences: torch.Tensor, hits: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE with `bins` equal-width bins over (0, 1]; a confidence on a bin edge goes to the lower bin."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(confidences.double(), edges, right=False) - 1).clamp(0, bins - 1)
    n = len(confidences)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        count = int(mask.sum())
        if count:
            gap = hits[mask].double().mean() - confidences[mask].double().mean()
            ece += count / n * abs(float(gap))
    return ece
