"""BatchNorm refresh for averaged weights (authors' utils.bn_update).

Averaged weights need BN statistics of their own. Every BN layer is reset (mean 0,
variance 1) and one pass is made over the training stream in train mode without
gradients. Before a batch of size b, after n samples, each BN momentum is set to
    m = b / (n + b),   so   stat <- (1 - m) stat + m batch_stat
leaves the exact sample-weighted mean  sum_k b_k stat_k / sum_k b_k  of the per-batch
statistics (batch variances unbiased, as PyTorch's BN keeps them).

In a distributed run every rank refreshes over its share of the batches and the ranks then
combine their statistics weighted by their image counts n_r,  stat = sum_r n_r stat_r / sum_r n_r,
which is the same sample-weighted mean over all batches that one process would compute.

Written here instead of torch.optim.swa_utils.update_bn because that one weights every
batch equally (momentum=None), which differs on a short last batch, and leaves wiped
statistics and momentum=None behind when a forward pass raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def refresh_bn(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Recompute BN running statistics of `model` over `batches`; returns images seen.

    `reduce` sums a tensor over the ranks of a distributed run (each passing its own batches).
    A model without BN is left untouched (0 is returned). Momenta and train/eval mode
    are restored even when the pass raises.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    seen = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
        model.train()
        for inputs in batches:
            b = inputs.shape[0]
            for bn in bns:
                bn.momentum = b / (seen + b)
            model(inputs)
            seen += b
        if reduce is not None:
            seen = combine_ranks(bns, seen, reduce)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return seen


def combine_ranks(bns: list[_BatchNorm], seen: int, reduce) -> int:
    """Replace each rank's statistics by the image-weighted mean over ranks; returns all images."""
    device = bns[0].running_mean.device
    local = [torch.tensor([float(seen)], dtype=torch.float64, device=device)]
    for bn in bns:
        local += [bn.running_mean.double() * seen, bn.running_var.double() * seen]
    total = reduce(torch.cat(local))
    n, offset = total[0], 1
    for bn in bns:
        for stat in (bn.running_mean, bn.running_var):
            stat.copy_(total[offset : offset + stat.numel()] / n)
            offset += stat.numel()
    return int(n.item())
