"""Stochastic weight averaging: the equal-weight running mean of SGD iterates.

After 0-based epoch e the model is collected when
    (e + 1) >= swa_start  and  (e + 1 - swa_start) mod swa_c_epochs == 0,
and the average is updated as
    w_swa <- w_swa + (w - w_swa) / (n + 1),   n <- n + 1,
the first update copying w. Only parameters are averaged; BatchNorm statistics are
recomputed for the averaged weights (see bn_refresh). The averaged copy never feeds
back into SGD.

torch.optim.swa_utils.AveragedModel implements exactly this update with a fused
multi-tensor lerp, so it is used as is (use_buffers=False: BN buffers are not averaged).
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def is_averaging_epoch(epoch: int, swa_start: float, swa_c_epochs: int) -> bool:
    """Whether the model is collected after 0-based epoch `epoch` (swa_start may be real)."""
    done = epoch + 1
    if done < swa_start:
        return False
    offset = done - swa_start
    return offset == int(offset) and int(offset) % swa_c_epochs == 0


def make_averaged_model(model: torch.nn.Module) -> AveragedModel:
    """An AveragedModel of `model`'s parameters (equal weights, fused update)."""
    return AveragedModel(model, use_buffers=False)
