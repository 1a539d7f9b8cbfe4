"""Curvature of the data loss at a weight vector: Hessian-vector products, extreme eigenvalues,
trace and spectral density (the mathematics of the `hessian` analysis).

Loss. Fixed batches B_1..B_m of N = sum_b n_b images (unaugmented, in a fixed order), the model
in eval mode (BatchNorm uses its running statistics, so the loss is a function of the parameters
w alone and the operator is the same at every product):

    L(w) = (1/N) sum_b sum_{i in B_b} CE(f(x_i; w), y_i) = sum_b (n_b / N) mean_{i in B_b} CE_i

the mean cross-entropy weighted by sample. It is the data term only: the L2 term
(weight_decay / 2) ||w||^2 of training would add weight_decay to every eigenvalue and
weight_decay * P to the trace. Deliberately different from other tools: loss-landscape's and
the SWAG repository's Hessian scripts sum per-batch means (eigenvalues scaled by the number of
batches; SWAG's also on augmented batches, so its operator changes between products), and
hessian-eigenthings weights batches equally (a short last batch over-weighted).

Hessian-vector product (Pearlmutter 1994), double backward through torch.autograd.grad, one
batch at a time, accumulated in float64:
    H v = sum_b d/dw < grad L_b(w), v >,   L_b(w) = (1/N) sum_{i in B_b} CE_i
(torch.func's jvp-of-grad would also do in eval mode; train-mode BatchNorm breaks torch.func.)

Extreme eigenvalues: scipy.sparse.linalg.eigsh (ARPACK implicitly restarted Lanczos) on a
float64 LinearOperator whose product is H v; which="LA" gives the top k, "SA" the smallest.
The start vector v0 ~ N(0, I) comes from derive_seed(seed, "eigsh", which), the same for every
origin. ARPACK stops when every Ritz pair's residual estimate is below tol * |lambda|; each
returned pair's true residual ||H v - lambda v|| is measured by one more product and reported.
On ArpackNoConvergence the pairs that did converge are kept and the others reported as NaN.
(PyHessian finds eigenvalues by deflated power iteration with a relative-change rule.)

Trace: Hutchinson (1990), tr H = E[z^T H z] for Rademacher z. A fixed number m of probes z_j
from derive_seed(seed, "hutchinson", j) (the same for every origin); estimate mean_j z_j^T H z_j,
standard error std_j / sqrt(m) (ddof 1). (PyHessian stops when the running mean changes by less
than a tolerance, which can end after a few probes.)

Spectral density: stochastic Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani, Krishnan, Xiao
2019). Run r starts from v = z / sqrt(P), z Rademacher from derive_seed(seed, "slq", r); s steps
of Lanczos with full re-orthogonalisation (every new vector orthogonalised twice against all
previous ones, which are kept: s x P float64 on the device) give the tridiagonal T_s, whose
eigenpairs (theta_j, u_j) are the nodes theta_j and weights tau_j = u_j[0]^2 of the Gauss
quadrature  v^T f(H) v ~ sum_j tau_j f(theta_j)  (exact for polynomials of degree <= 2s - 1).
Lanczos stops early when the Krylov space is exhausted (beta <= 1e-10 * |T|). The density
    phi(t) = (1/R) sum_r sum_j tau_j^r exp(-(t - theta_j^r)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))
integrates to 1; sigma = sigma_fraction * (largest node - smallest node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.nn.utils import vector_to_parameters

from swa_repro.rng import derive_seed

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
BREAKDOWN = 1e-10  # Lanczos stops when beta <= BREAKDOWN * (largest |alpha| or beta so far)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode inside the block (BN on its running statistics); mode restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def sample_count(batches: Batches) -> int:
    return sum(len(labels) for _, labels in batches)


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors as one float64 vector, in order."""
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def split_like(vector: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`vector` cut into views shaped (and typed) as `params`."""
    vector = vector.to(params[0].device, params[0].dtype)
    pieces = torch.split(vector, [p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]


def set_parameters(model: torch.nn.Module, vector: torch.Tensor) -> None:
    """Point the model's parameters (model.parameters() order) at a private copy of the flat
    `vector`: nothing the caller holds is written to later, nor aliased (RunContext.evaluate
    leaves the parameters as views of the vector it was given)."""
    params = list(model.parameters())
    vector_to_parameters(vector.to(params[0].device, params[0].dtype, copy=True), params)


def batch_share(model: torch.nn.Module, inputs, labels, total: int) -> torch.Tensor:
    """(1/N) sum_{i in batch} CE_i: this batch's share of the sample-weighted mean loss."""
    return F.cross_entropy(model(inputs), labels, reduction="sum") / total


def data_loss(model: torch.nn.Module, batches: Batches) -> torch.Tensor:
    """L(w) over all batches, weighted by sample, in eval mode (differentiable)."""
    total = sample_count(batches)
    with eval_mode(model):
        return sum(batch_share(model, x, y, total) for x, y in batches)


def data_gradient(model: torch.nn.Module, batches: Batches) -> torch.Tensor:
    """grad L(w) as one float64 vector (one batch at a time)."""
    params, total = list(model.parameters()), sample_count(batches)
    out = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
    with eval_mode(model):
        for x, y in batches:
            out += flat(torch.autograd.grad(batch_share(model, x, y, total), params))
    return out


class HessianOperator:
    """The Hessian of L at the model's current parameters over fixed batches, as products."""

    def __init__(self, model: torch.nn.Module, batches: Batches):
        self.model, self.batches = model, list(batches)
        self.params = list(model.parameters())
        self.size = sum(p.numel() for p in self.params)
        self.total = sample_count(self.batches)
        self.device = self.params[0].device
        self.products = 0  # Hessian-vector products computed (each one pass over the batches)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v as float64 on the model's device (v: any float vector of size P)."""
        pieces = split_like(v, self.params)
        out = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        with eval_mode(self.model):
            for x, y in self.batches:
                loss = batch_share(self.model, x, y, self.total)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, pieces, strict=True))
                out += flat(torch.autograd.grad(dot, self.params))
        self.products += 1
        return out

    def linear_operator(self) -> LinearOperator:
        """H as a float64 scipy LinearOperator (numpy vectors in and out)."""

        def product(v: np.ndarray) -> np.ndarray:
            vector = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).ravel())
            return self.matvec(vector.to(self.device)).cpu().numpy()

        return LinearOperator((self.size, self.size), matvec=product, dtype=np.float64)


@dataclass
class Eigenpairs:
    """Extreme eigenvalues, ordered from the extreme inwards (descending for the top ones)."""

    values: np.ndarray  # (k,) NaN where ARPACK did not converge
    residuals: np.ndarray  # (k,) ||H v - lambda v|| of the returned unit vectors
    converged: int  # pairs that converged


def extreme_eigenpairs(
    op: HessianOperator,
    k: int,
    which: str = "LA",
    tol: float = 1e-3,
    seed: int = 0,
    maxiter: int | None = None,
    ncv: int | None = None,
) -> Eigenpairs:
    """The k largest (which="LA") or smallest ("SA") eigenpairs of H by eigsh (see module doc);
    maxiter (restarts) and ncv (Lanczos vectors, k < ncv <= P) as eigsh's, None its default."""
    if which not in ("LA", "SA"):
        raise ValueError(f"which must be LA or SA, got {which!r}")
    if not 1 <= k < op.size:
        raise ValueError(f"k must be in 1..{op.size - 1} (the number of parameters - 1), got {k}")
    v0 = np.random.default_rng(derive_seed(seed, "eigsh", which)).standard_normal(op.size)
    try:
        values, vectors = eigsh(
            op.linear_operator(), k=k, which=which, tol=tol, v0=v0, maxiter=maxiter, ncv=ncv
        )
    except ArpackNoConvergence as exc:
        values, vectors = exc.eigenvalues, exc.eigenvectors
    order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
    out = Eigenpairs(np.full(k, np.nan), np.full(k, np.nan), len(values))
    for slot, j in enumerate(order):
        v = torch.from_numpy(np.ascontiguousarray(vectors[:, j])).to(op.device)
        out.values[slot] = values[j]
        out.residuals[slot] = float((op.matvec(v) - values[j] * v).norm())
    return out


def rademacher(size: int, *keys: object) -> torch.Tensor:
    """+-1 entries (float64, CPU) from a generator seeded by derive_seed(*keys)."""
    generator = torch.Generator().manual_seed(derive_seed(*keys))
    return torch.randint(0, 2, (size,), generator=generator).to(torch.float64) * 2 - 1


@dataclass
class TraceEstimate:
    mean: float
    standard_error: float
    samples: np.ndarray  # (m,) z_j^T H z_j


def hutchinson_trace(op: HessianOperator, probes: int = 100, seed: int = 0) -> TraceEstimate:
    """Hutchinson's estimate of tr H with `probes` seeded Rademacher probes (see module doc)."""
    if probes < 2:
        raise ValueError(f"probes must be >= 2 (for a standard error), got {probes}")
    samples = np.empty(probes)
    for j in range(probes):
        z = rademacher(op.size, seed, "hutchinson", j).to(op.device)
        samples[j] = float(z @ op.matvec(z))
    return TraceEstimate(
        float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes)), samples
    )


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """alpha (s,) and beta (s - 1,) of the Lanczos tridiagonal from v0 / |v0|, s <= steps,
    with full re-orthogonalisation (twice, against every previous vector)."""
    basis = torch.zeros((steps, v0.numel()), dtype=torch.float64, device=v0.device)
    v = v0.to(torch.float64) / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        basis[j] = v
        w = matvec(v)
        alphas.append(float(w @ v))
        if j == steps - 1:
            break
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if beta <= BREAKDOWN * max(map(abs, alphas + betas)):
            break  # the Krylov space is exhausted: T is exact
        betas.append(beta)
        v = w / beta
    return np.array(alphas), np.array(betas)


def slq_start(size: int, seed: int, run: int) -> torch.Tensor:
    """Start vector of SLQ run `run`: Rademacher / sqrt(P) (float64, CPU)."""
    return rademacher(size, seed, "slq", run) / np.sqrt(size)


def slq(
    op: HessianOperator, runs: int = 10, steps: int = 80, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (runs, steps) of stochastic Lanczos quadrature, NaN where a run ended
    early; steps beyond P are not taken."""
    if runs < 1 or steps < 1:
        raise ValueError(f"runs and steps must be >= 1, got {runs} and {steps}")
    nodes, weights = np.full((runs, steps), np.nan), np.full((runs, steps), np.nan)
    for r in range(runs):
        v0 = slq_start(op.size, seed, r).to(op.device)
        alpha, beta = lanczos(op.matvec, v0, min(steps, op.size))
        theta, u = eigh_tridiagonal(alpha, beta)
        nodes[r, : len(theta)], weights[r, : len(theta)] = theta, u[0] ** 2
    return nodes, weights


def gaussian_density(
    nodes: np.ndarray, weights: np.ndarray, points: int = 1000, sigma_fraction: float = 0.005
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, phi(grid)): the SLQ density smoothed by Gaussians of width sigma (module doc),
    on `points` points from 5 sigma below the smallest node to 5 sigma above the largest."""
    keep = np.isfinite(nodes)
    theta, tau = nodes[keep], weights[keep]
    low, high = float(theta.min()), float(theta.max())
    sigma = sigma_fraction * (high - low if high > low else max(abs(high), 1.0))
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    kernel = np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
    density = kernel @ tau / (sigma * np.sqrt(2 * np.pi) * nodes.shape[0])
    return grid, density
