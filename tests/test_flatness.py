"""Flatness measured (issue 16): Hessian, sharpness, filter-normalised directions.

Exactness on a tiny BatchNorm network in float64 against explicit computations (the Hessian
of the flattened parameters by torch.autograd.functional.hessian, its eigenvalues by numpy,
closed forms), then the analyses (hessian, sharpness, around, rays with filter directions) on a
tiny synthetic run on CPU, their command line and the two plot scripts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from swa_repro.analysis.directions import filter_direction, filter_normalized, parameter_shapes
from swa_repro.analysis.hessian import (
    HessianOperator,
    data_gradient,
    data_loss,
    extreme_eigenpairs,
    flat,
    gaussian_density,
    hutchinson_trace,
    set_parameters,
    slq,
    slq_start,
)
from swa_repro.analysis.sharpness import (
    apgd_checkpoints,
    average_sharpness,
    loss_gradient,
    sam_sharpness,
    worst_sharpness,
)

# --------------------------------------------------------------------------- a tiny BN network


class TinyBN(nn.Module):
    """conv(2 -> 3, bias) - BN - ReLU - mean pool - linear(3 -> 4): 79 parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny():
    """(model, batches of 7, 2 and 1 images, the same 10 images as one batch), float64, with
    BN running statistics of its own (eval mode uses them)."""
    torch.manual_seed(0)
    model = TinyBN().double()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.bn.running_var.copy_(torch.tensor([0.5, 1.5, 0.8]))
        model.bn.weight.copy_(torch.tensor([1.2, 0.7, -0.9]))
    x = torch.randn(10, 2, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    batches = [(x[:7], y[:7]), (x[7:9], y[7:9]), (x[9:], y[9:])]
    return model, batches, [(x, y)]


def explicit_hessian(model, batches) -> torch.Tensor:
    """d^2 L / dw^2 of the flattened parameters, L the mean CE over all images, in eval mode."""
    names = [name for name, _ in model.named_parameters()]
    shapes = parameter_shapes(model)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model.eval()

    def loss(vector):
        pieces = torch.split(vector, [s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    w = flat([p.detach() for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, w)


@pytest.fixture(scope="module")
def hessian_matrix(tiny):
    model, _, whole = tiny
    return explicit_hessian(model, whole)


def test_sample_weighted_loss_over_unequal_batches_equals_one_batch(tiny):
    model, batches, whole = tiny
    one = data_loss(model, whole).item()
    assert data_loss(model, batches).item() == pytest.approx(one, rel=1e-14)
    # what a sum or an equal-weight mean of per-batch means would give: not the loss
    means = [data_loss(model, [b]).item() for b in batches]
    assert abs(np.mean(means) - one) > 1e-3 and abs(np.sum(means) - one) > 1e-1
    torch.testing.assert_close(
        data_gradient(model, batches), data_gradient(model, whole), rtol=1e-12, atol=1e-14
    )
    v = torch.randn(79, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        HessianOperator(model, batches).matvec(v),
        HessianOperator(model, whole).matvec(v),
        rtol=1e-12,
        atol=1e-13,
    )


def test_hvp_equals_explicit_hessian_and_finite_difference(tiny, hessian_matrix):
    model, batches, _ = tiny
    op = HessianOperator(model, batches)
    assert op.size == 79 and op.total == 10
    v = torch.randn(79, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hv = op.matvec(v)
    torch.testing.assert_close(hv, hessian_matrix @ v, rtol=1e-10, atol=1e-12)
    w = flat([p.detach() for p in model.parameters()])
    eps = 1e-5
    set_parameters(model, w + eps * v)
    g_plus = data_gradient(model, batches)
    set_parameters(model, w - eps * v)
    g_minus = data_gradient(model, batches)
    set_parameters(model, w)
    central = (g_plus - g_minus) / (2 * eps)
    assert float((central - hv).norm()) <= 1e-7 * float(hv.norm())
    assert op.products == 1
    # the operator is symmetric, as a Hessian
    u = torch.randn(79, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert float(u @ op.matvec(v)) == pytest.approx(float(v @ op.matvec(u)), rel=1e-10)


def test_lanczos_eigenvalues_equal_the_explicit_hessians(tiny, hessian_matrix):
    model, batches, _ = tiny
    exact = np.linalg.eigvalsh(hessian_matrix.numpy())  # ascending
    op = HessianOperator(model, batches)
    top = extreme_eigenpairs(op, 5, "LA", tol=1e-12, seed=4)
    np.testing.assert_allclose(top.values, exact[::-1][:5], rtol=1e-6)
    assert top.converged == 5
    assert (top.residuals < 1e-8 * abs(exact).max()).all()
    low = extreme_eigenpairs(op, 1, "SA", tol=1e-12, seed=4)
    assert exact[0] < 0  # away from a minimum the Hessian is indefinite
    np.testing.assert_allclose(low.values, exact[:1], rtol=1e-6)
    # the same seed gives the same start vector, hence the same numbers
    again = extreme_eigenpairs(HessianOperator(model, batches), 5, "LA", tol=1e-12, seed=4)
    np.testing.assert_array_equal(top.values, again.values)


def test_non_convergence_is_reported_with_partial_results(tiny):
    model, batches, _ = tiny
    op = HessianOperator(model, batches)
    pairs = extreme_eigenpairs(op, 6, "LA", tol=1e-14, seed=0, maxiter=1)
    assert pairs.converged < 6
    assert np.isnan(pairs.values[pairs.converged :]).all()
    assert np.isfinite(pairs.values[: pairs.converged]).all()


def test_bad_eigen_and_trace_settings_are_refused(tiny):
    model, batches, _ = tiny
    op = HessianOperator(model, batches)
    for k in (0, 79):
        with pytest.raises(ValueError, match="k must be in 1..78"):
            extreme_eigenpairs(op, k)
    with pytest.raises(ValueError, match="probes must be >= 2"):
        hutchinson_trace(op, probes=1)
    assert op.products == 0


def test_hutchinson_trace_within_three_standard_errors(tiny, hessian_matrix):
    model, batches, _ = tiny
    exact = float(torch.trace(hessian_matrix))
    estimate = hutchinson_trace(HessianOperator(model, batches), probes=300, seed=5)
    assert estimate.standard_error > 0 and len(estimate.samples) == 300
    assert abs(estimate.mean - exact) <= 3 * estimate.standard_error
    assert estimate.standard_error == pytest.approx(
        estimate.samples.std(ddof=1) / math.sqrt(300), rel=1e-12
    )


def test_slq_is_a_gauss_quadrature_of_the_explicit_hessian(tiny, hessian_matrix):
    """With s steps, sum_j tau_j theta_j^p = v^T H^p v for p <= 2s - 1 (exact for polynomials)."""
    model, batches, _ = tiny
    steps = 4
    nodes, weights = slq(HessianOperator(model, batches), runs=2, steps=steps, seed=6)
    assert nodes.shape == weights.shape == (2, steps)
    scale = float(torch.linalg.matrix_norm(hessian_matrix, ord=2))
    for r in range(2):
        v = slq_start(79, 6, r)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-14)
        hv = v.clone()
        for p in range(2 * steps):
            quadrature = float((weights[r] * nodes[r] ** p).sum())
            assert quadrature == pytest.approx(float(v @ hv), abs=1e-9 * scale**p), p
            hv = hessian_matrix @ hv


def test_slq_with_all_steps_finds_the_spectrum(tiny, hessian_matrix):
    model, batches, _ = tiny
    exact = np.linalg.eigvalsh(hessian_matrix.numpy())
    nodes, weights = slq(HessianOperator(model, batches), runs=1, steps=200, seed=7)
    found = nodes[np.isfinite(nodes)]
    assert len(found) <= 79  # no steps beyond P, and no more nodes than eigenvalues
    assert np.nansum(weights) == pytest.approx(1.0, abs=1e-10)
    gaps = np.abs(found[:, None] - exact[None, :]).min(axis=1)
    assert (gaps <= 1e-6 * abs(exact).max()).all()
    assert np.max(found) == pytest.approx(exact[-1], rel=1e-8)
    grid, density = gaussian_density(nodes, weights, points=4000, sigma_fraction=0.01)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert grid[0] < exact[0] and grid[-1] > exact[-1]


# --------------------------------------------------------------------------- filter normalisation


def test_filter_normalisation_gives_every_filter_the_weights_norm(tiny):
    model, _, _ = tiny
    shapes = parameter_shapes(model)
    w = flat([p.detach() for p in model.parameters()])
    d = filter_direction(3, 0, w, shapes)
    start = 0
    for (name, p), shape in zip(model.named_parameters(), shapes, strict=True):
        piece, origin = d[start : start + p.numel()], w[start : start + p.numel()]
        if p.dim() <= 1:  # conv and linear biases, BN weight and bias
            assert (piece == 0).all(), name
        else:
            np.testing.assert_allclose(
                piece.view(shape[0], -1).norm(dim=1),
                origin.view(shape[0], -1).norm(dim=1),
                rtol=1e-9,
                err_msg=name,
            )
        start += p.numel()
    assert {n for n, p in model.named_parameters() if p.dim() <= 1} == {
        "conv.bias", "bn.weight", "bn.bias", "fc.bias"}  # fmt: skip
    # seeded: the same draw for another origin, rescaled to that origin's filters
    other = 3.0 * w
    d_other = filter_direction(3, 0, other, shapes)
    torch.testing.assert_close(d_other, 3.0 * d, rtol=1e-12, atol=0)
    assert not torch.equal(d, filter_direction(3, 1, w, shapes))
    assert torch.equal(d, filter_direction(3, 0, w, shapes))
    with pytest.raises(ValueError, match="shapes hold"):
        filter_normalized(torch.ones(5), torch.ones(5), [torch.Size([2, 2])])


# --------------------------------------------------------------------------- sharpness


def test_average_sharpness_is_zero_at_rho_zero(tiny):
    model, batches, _ = tiny
    before = flat([p.detach() for p in model.parameters()])
    s_avg, se = average_sharpness(model, batches, [0.0, 0.1], samples=4, seed=0)
    assert s_avg[0] == 0.0 and se[0] == 0.0
    assert s_avg[1] != 0.0 and se[1] > 0
    assert torch.equal(flat([p.detach() for p in model.parameters()]), before)  # restored


def test_worst_case_above_average_case_on_the_same_data(tiny):
    """A Gaussian d of per-element scale rho|w| has ||d/|w||| ~ rho sqrt(P): the worst case over
    that ball is above the average case."""
    model, batches, _ = tiny
    rho = 0.05
    s_avg, _ = average_sharpness(model, batches, [rho], samples=10, seed=1)
    s_max = worst_sharpness(model, batches, rho * math.sqrt(79), steps=20)
    assert s_max >= s_avg[0] and s_max > 0


def test_worst_case_and_sam_match_their_first_order_closed_forms(tiny):
    """For small rho: max over ||u|| <= rho of g.(c u) = rho ||c g||, and L(w + rho g/|g|) - L(w)
    = rho ||g||, each batch with its own gradient, weighted by n_b / N."""
    model, batches, _ = tiny
    w = flat([p.detach() for p in model.parameters()])
    weights = np.array([7, 2, 1]) / 10
    grads = [loss_gradient(model, w, x, y) for x, y in batches]
    set_parameters(model, w)
    rho = 1e-5
    adaptive = sum(a * float((w.abs() * g).norm()) for a, g in zip(weights, grads, strict=True))
    plain = sum(a * float(g.norm()) for a, g in zip(weights, grads, strict=True))
    assert worst_sharpness(model, batches, rho, steps=20) == pytest.approx(rho * adaptive, rel=1e-3)
    assert sam_sharpness(model, batches, [rho])[0] == pytest.approx(rho * plain, rel=1e-3)
    assert worst_sharpness(model, batches, 0.5, steps=20) >= 0.5 * adaptive  # beyond linear
    assert torch.equal(flat([p.detach() for p in model.parameters()]), w)


def test_apgd_checkpoints():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of 20 steps, rounded up; in floating
    # point p_4 = 0.7000000000000001, so 15, as the reference's schedule for n_iters = 20
    assert apgd_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert apgd_checkpoints(1) == [1]
