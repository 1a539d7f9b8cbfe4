"""Sharpness of the data loss by perturbation (the mathematics of the `sharpness` analysis).

Fixed batches B_b of n_b images (N in all), the model in eval mode, L_b(w) = mean cross-entropy
over B_b (data term only), c = |w| elementwise (adaptive sharpness, Kwon et al. 2021). As
Andriushchenko et al. (ICML 2023; tml-epfl/sharpness-vs-generalization) every parameter is
perturbed (BN weights and biases included, no eta added to |w|) and every batch is treated on
its own (per-batch, not whole-set, maximisation). The batch values are combined weighted by
sample, sum_b (n_b / N) S_b (the reference averages equally over its equal batches of 128).

Average case (adaptive, l2):
    S_avg(rho) = sum_b (n_b / N) (1/s) sum_j [L_b(w + rho c * z_bj) - L_b(w)],  z_bj ~ N(0, I)
from derive_seed(seed, "average_sharpness", b, j): the same draws for every rho and every
origin (common random numbers); s = 20 samples per batch in the reference. Standard error over
the draws: sqrt(sum_b (n_b / N)^2 var_j / s).

Worst case (adaptive, l2):
    S_max(rho) = sum_b (n_b / N) max_{||d / c||_2 <= rho} [L_b(w + d) - L_b(w)]
by Auto-PGD (Croce & Hein 2020) as the reference uses it: T = 20 steps from d = 0, step size
2 rho, momentum alpha = 0.75 (x1 = z1; x_{t+1} = P(x_t + alpha (z_{t+1} - x_t) + (1 - alpha)
(x_t - x_{t-1})), z_{t+1} = P(x_t + eta grad / |grad|)), the step size halved, and the iterate
reset to the best one, at the checkpoints ceil(p_j T), p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), when fewer than 0.75 of the steps since the
last checkpoint improved the best loss or neither the step size nor the best loss changed. The
batch's value is the best loss seen, d = 0 included (so S_max >= 0).
Deliberately different from the reference: the ascent works in u = d / c, where the constraint is
the ball ||u|| <= rho, the steepest-ascent direction is c * grad L (normalised), and projection
is a rescaling; the reference steps along c * grad / ||grad|| in d and projects onto the
ellipsoid in d's Euclidean metric by bisection. Same feasible set and objective, other iterates.
Coordinates with w_i = 0 do not move (c_i = 0), in both.

The two rho are on different scales: a Gaussian d has ||d / c|| ~ rho sqrt(P), so S_avg(rho) is
to be compared with S_max(rho sqrt(P)), not S_max(rho). The reference's l2 grids for ResNet-18 on
CIFAR-10 are {0.05, 0.1, 0.2, 0.4} (average) and {0.25, 0.5, 1, 2} (worst).

SAM sharpness (Foret et al. 2021), first order, not adaptive, per batch as SAM's ascent step:
    S_sam(rho) = sum_b (n_b / N) [L_b(w + rho g_b / ||g_b||) - L_b(w)],  g_b = grad L_b(w).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from swa_repro.analysis.hessian import Batches, eval_mode, flat, set_parameters
from swa_repro.rng import derive_seed

ALPHA = 0.75  # Auto-PGD momentum
MIN_IMPROVING = 0.75  # Auto-PGD: fraction of improving steps below which the step is halved


@contextlib.contextmanager
def at_origin(model: torch.nn.Module):
    """Yield the parameters w as a float64 vector, in eval mode; the model gets w back after."""
    w = flat([p.detach() for p in model.parameters()])
    try:
        with eval_mode(model):
            yield w
    finally:
        set_parameters(model, w)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, vector: torch.Tensor, inputs, labels) -> float:
    """Mean cross-entropy of the batch at the parameters `vector`."""
    set_parameters(model, vector)
    return float(F.cross_entropy(model(inputs), labels).double())


def loss_gradient(model: torch.nn.Module, vector: torch.Tensor, inputs, labels) -> torch.Tensor:
    """grad of the batch's mean cross-entropy at `vector`, as float64."""
    set_parameters(model, vector)
    loss = F.cross_entropy(model(inputs), labels)
    return flat(torch.autograd.grad(loss, list(model.parameters())))


def batch_weights(batches: Batches) -> np.ndarray:
    """n_b / N of every batch."""
    sizes = np.array([len(labels) for _, labels in batches], dtype=np.float64)
    return sizes / sizes.sum()


def gaussian(size: int, *keys: object) -> torch.Tensor:
    """N(0, I) draw (float64, CPU) from a generator seeded by derive_seed(*keys)."""
    generator = torch.Generator().manual_seed(derive_seed(*keys))
    return torch.randn(size, generator=generator, dtype=torch.float64)


def average_sharpness(
    model: torch.nn.Module, batches: Batches, rhos: Sequence[float], samples: int = 20, seed=0
) -> tuple[np.ndarray, np.ndarray]:
    """(S_avg, standard error) for every rho in `rhos` (module doc); rho = 0 gives 0."""
    if samples < 2:
        raise ValueError(f"samples must be >= 2 (for a standard error), got {samples}")
    diffs = np.zeros((len(batches), len(rhos), samples))
    with at_origin(model) as w:
        c = w.abs()
        for b, (x, y) in enumerate(batches):
            base = mean_loss(model, w, x, y)
            for j in range(samples):
                z = gaussian(w.numel(), seed, "average_sharpness", b, j).to(w.device)
                for a, rho in enumerate(rhos):
                    diffs[b, a, j] = mean_loss(model, w + rho * c * z, x, y) - base
    weights = batch_weights(batches)
    variance = diffs.var(axis=2, ddof=1)
    return weights @ diffs.mean(axis=2), np.sqrt(weights**2 @ variance / samples)


def apgd_checkpoints(steps: int) -> list[int]:
    """Steps after which Auto-PGD may halve its step size: ceil(p_j steps) (module doc)."""
    previous, p, out = 0.0, 0.22, []
    while p < 1.0:
        out.append(math.ceil(p * steps))
        previous, p = p, p + max(p - previous - 0.03, 0.06)
    return sorted(set(out))


def project(u: torch.Tensor, rho: float) -> torch.Tensor:
    """u scaled back onto the ball ||u|| <= rho when outside it."""
    norm = float(u.norm())
    return u * (rho / norm) if norm > rho else u


def batch_worst_case(model, w, c, inputs, labels, rho: float, steps: int) -> float:
    """max over the Auto-PGD iterates of L_b(w + c u) - L_b(w), ||u|| <= rho (module doc)."""
    base = mean_loss(model, w, inputs, labels)
    checkpoints = set(apgd_checkpoints(steps))
    u = u_prev = best_u = torch.zeros_like(w)
    best, eta = base, 2.0 * rho
    last, improved, eta_then, best_then = 0, 0, eta, best
    for t in range(1, steps + 1):
        ascent = c * loss_gradient(model, w + c * u, inputs, labels)
        z = project(u + eta * ascent / (float(ascent.norm()) + 1e-12), rho)
        step = z if t == 1 else project(u + ALPHA * (z - u) + (1 - ALPHA) * (u - u_prev), rho)
        u_prev, u = u, step
        value = mean_loss(model, w + c * u, inputs, labels)
        if value > best:
            best, best_u, improved = value, u, improved + 1
        if t in checkpoints and t < steps:
            stalled = improved < MIN_IMPROVING * (t - last) or (eta, best) == (eta_then, best_then)
            last, improved, eta_then, best_then = t, 0, eta, best
            if stalled:
                eta, u, u_prev = eta / 2, best_u, best_u
    return best - base


def worst_sharpness(model: torch.nn.Module, batches: Batches, rho: float, steps: int = 20) -> float:
    """S_max(rho) (module doc)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    weights = batch_weights(batches)
    total = 0.0
    with at_origin(model) as w:
        c = w.abs()
        for weight, (x, y) in zip(weights, batches, strict=True):
            total += weight * batch_worst_case(model, w, c, x, y, rho, steps)
    return total


def sam_sharpness(model: torch.nn.Module, batches: Batches, rhos: Sequence[float]) -> np.ndarray:
    """S_sam for every rho in `rhos` (module doc)."""
    out = np.zeros(len(rhos))
    with at_origin(model) as w:
        for weight, (x, y) in zip(batch_weights(batches), batches, strict=True):
            base = mean_loss(model, w, x, y)
            g = loss_gradient(model, w, x, y)
            unit = g / g.norm() if float(g.norm()) > 0 else g
            for a, rho in enumerate(rhos):
                out[a] += weight * (mean_loss(model, w + rho * unit, x, y) - base)
    return out
