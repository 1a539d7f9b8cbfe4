"""Filter-normalised random directions (Li, Xu, Taylor, Studer, Goldstein, NeurIPS 2018;
tomgoldstein/loss-landscape net_plotter.py with --dir_type weights --xnorm filter --xignore biasbn).

A Gaussian g ~ N(0, I) over all P parameters is drawn from derive_seed(seed, "filter_direction",
index): the same draw around every origin. Then, parameter tensor by parameter tensor W of the
origin w (in model.parameters() order, as the flat vectors):

    dim(W) <= 1 (biases, BatchNorm weights and biases):  d = 0
    otherwise, for every filter f (index along dim 0: a conv output channel, a linear row):
        d_f = g_f ||W_f|| / (||g_f|| + 1e-10)

so every filter of d has the norm of the same filter of w: a step along d changes each filter
relative to its own scale, which BatchNorm makes the scale that matters (Li et al., section 4).
Deliberately different: g is drawn as one flat vector (loss-landscape draws tensor by tensor),
the same distribution with other numbers, so that it depends on (seed, index) only.
"""

from __future__ import annotations

import torch

from swa_repro.rng import derive_seed

EPS = 1e-10  # loss-landscape's guard against a zero filter of g


def parameter_shapes(model: torch.nn.Module) -> list[torch.Size]:
    """Shapes of the model's parameters, in the order of the flat vectors."""
    return [p.shape for p in model.parameters()]


def filter_normalized(
    direction: torch.Tensor, w: torch.Tensor, shapes: list[torch.Size]
) -> torch.Tensor:
    """`direction` with every filter rescaled to the norm of w's filter, 1-d tensors zeroed."""
    out = direction.to(w.device, torch.float64).clone()
    origin = w.to(torch.float64)
    start = 0
    for shape in shapes:
        size = shape.numel()
        piece = out[start : start + size]
        if len(shape) <= 1:
            piece.zero_()
        else:
            d = piece.view(shape[0], -1)
            target = origin[start : start + size].view(shape[0], -1).norm(dim=1, keepdim=True)
            d.mul_(target / (d.norm(dim=1, keepdim=True) + EPS))
        start += size
    if start != out.numel():
        raise ValueError(f"shapes hold {start} parameters, the vector {out.numel()}")
    return out


def filter_direction(
    seed: int, index: int, w: torch.Tensor, shapes: list[torch.Size]
) -> torch.Tensor:
    """Filter-normalised direction `index` around w (float64, on w's device)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "filter_direction", index))
    g = torch.randn(w.numel(), generator=generator, dtype=torch.float64)
    return filter_normalized(g, w, shapes)
