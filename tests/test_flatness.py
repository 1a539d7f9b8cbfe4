"""Flatness measured (issue 16): Hessian, sharpness, filter-normalised directions.

Exactness on a tiny BatchNorm network in float64 against explicit computations (the Hessian
of the flattened parameters by torch.autograd.functional.hessian, its eigenvalues by numpy,
closed forms), then the analyses (hessian, sharpness, around, rays with filter directions) on a
tiny synthetic run on CPU, their command line and the two plot scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from swa_repro import analysis_cost, figures, layout
from swa_repro.analysis import flatness
from swa_repro.analysis.__main__ import ANALYSIS_CONF_DIR, EXIT_USER_ERROR, main
from swa_repro.analysis.common import AnalysisError
from swa_repro.analysis.directions import filter_direction, filter_normalized, parameter_shapes
from swa_repro.analysis.flatness import (
    AroundSettings,
    HessianSettings,
    SharpnessSettings,
    compute_around,
    compute_hessian,
    compute_sharpness,
    origin_buffers,
    origin_points,
    origin_specs,
)
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
from swa_repro.analysis.origins import load_origin, subset_indices
from swa_repro.analysis.points import load_context
from swa_repro.analysis.rays import compute_rays
from swa_repro.analysis.sharpness import (
    apgd_checkpoints,
    average_sharpness,
    loss_gradient,
    sam_sharpness,
    worst_sharpness,
)
from swa_repro.checkpoint import load_checkpoint, save_checkpoint
from swa_repro.cli import read_yaml
from swa_repro.compose import compose_config
from swa_repro.config_check import ConfigError
from swa_repro.layout import RunPaths
from swa_repro.train import train

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


# --------------------------------------------------------------------------- the analyses on a run

RUN_OVERRIDES = [
    "experiment=synthetic/small_cnn_swa",
    "data.train_size=96",
    "data.test_size=64",
    "epochs=3",
    "budget=2",
    "method.swa_start=2",
    "optim.batch_size=32",
    "progress=false",
    "device=cpu",
    "checkpoint.keep_epochs=[1]",  # before averaging: no swa there yet
]
HESSIAN = HessianSettings(
    images=8, batch_size=5, top_k=1, tol=1e-2, maxiter=3, ncv=6, probes=2, density_images=6,
    density_runs=1, density_steps=4, density_points=500,
)  # fmt: skip
SHARPNESS = SharpnessSettings(
    images=10, batch_size=4, rho_avg=(0.01, 0.05), rho_max=(0.5,), rho_sam=(0.05, 0.1),
    avg_samples=2, max_steps=3,
)  # fmt: skip
AROUND = AroundSettings(images=10, batch_size=6, grid_points=3, span=0.5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An SWA run of 3 epochs on 96 synthetic images, averaging from epoch 2 (epoch 1 kept)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("flatness_run") / "swa"
    train(compose_config(RUN_OVERRIDES), root)
    return root


@pytest.fixture(scope="module")
def ctx(run_dir):
    return load_context(run_dir, device="cpu", seed=0)


@pytest.fixture(scope="module")
def specs(run_dir):
    last = run_dir / "checkpoints" / "last.pt"
    return {"SGD": f"{last}:model", "SWA": f"{last}:swa"}


@pytest.fixture(scope="module")
def origins(ctx, specs):
    return origin_points(specs, ctx.model)


@pytest.fixture(scope="module")
def hessian_full(ctx, specs, origins, tmp_path_factory):
    out = tmp_path_factory.mktemp("hessian") / "hessian.npz"
    buffers = origin_buffers(specs, ctx.model)
    return compute_hessian(ctx, origins, out, HESSIAN, buffers, progress=False)


def _load(path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _assert_same(a: dict, b: dict, skip=("config", "seconds")) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key not in skip:
            assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key


def subset_loss(ctx, vector, images: int, seed: int = 0) -> float:
    """Mean CE over the fixed subset in ONE batch, at `vector` with refreshed BN statistics."""
    load_origin(ctx, vector)
    index = subset_indices(len(ctx.data.train_y), images, seed)
    ctx.model.eval()
    with torch.no_grad():
        logits = ctx.model(ctx.normalize(ctx.data.train_x[index]))
    return float(nn.functional.cross_entropy(logits, ctx.data.train_y[index]))


def test_ema_origins_are_the_emas_the_checkpoint_holds(ctx, run_dir, specs, tmp_path):
    last = run_dir / "checkpoints" / "last.pt"
    cfg = OmegaConf.create({"origins": specs, "ema_checkpoint": str(last)})
    found = origin_specs(cfg)
    assert list(found) == ["SGD", "SWA", "EMA 0.99", "EMA 0.995"]  # the run's ema.decays
    points, state = origin_points(found, ctx.model), load_checkpoint(last)
    for decay in ("0.99", "0.995"):
        saved = state["collectors"][f"ema_{decay}"]  # EMA.state_dict(): "module.<parameter>"
        expected = torch.cat(
            [saved[f"module.{n}"].reshape(-1) for n, _ in ctx.model.named_parameters()]
        )
        torch.testing.assert_close(points[f"EMA {decay}"], expected, rtol=0, atol=0)
    assert not torch.equal(points["EMA 0.99"], points["SWA"])
    # a checkpoint without EMAs, or none named: SGD and SWA only
    collectors = {k: v for k, v in state["collectors"].items() if not k.startswith("ema_")}
    save_checkpoint({**state, "collectors": collectors}, tmp_path / "no_ema.pt")
    for checkpoint in (str(tmp_path / "no_ema.pt"), None):
        assert list(origin_specs(OmegaConf.merge(cfg, {"ema_checkpoint": checkpoint}))) == [
            "SGD",
            "SWA",
        ]
    # an origin the config names itself is not measured twice
    named = OmegaConf.merge(cfg, {"origins": {"EMA 0.99": f"{last}:ema_0.99"}})
    assert list(origin_specs(named)) == ["SGD", "SWA", "EMA 0.99", "EMA 0.995"]


def test_hessian_of_two_origins(ctx, run_dir, origins, hessian_full):
    res, p = hessian_full, 77850
    assert list(res["origins"]) == ["SGD", "SWA"] and res["done"].all()
    assert int(res["n_params"]) == p == res["param_sizes"].sum()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # before the refresh: the statistics stored with each model, as training measured them
    assert list(res["test_acc_own_bn"]) == [metrics[-1]["test_acc"], metrics[-1]["swa_test_acc"]]
    for o, w in enumerate(origins.values()):
        # after it: the refresh every analysis makes (RunContext.evaluate)
        assert res["test_acc"][o] == 100.0 - ctx.evaluate(w)["test_err"]
        assert res["weight_norm"][o] == pytest.approx(float(w.double().norm()), rel=1e-12)
        assert (res["param_norms"][o] ** 2).sum() == pytest.approx(res["weight_norm"][o] ** 2)
        assert res["train_nll"][o] == pytest.approx(subset_loss(ctx, w, 8), rel=1e-5)
        top = res["top_eigenvalues"][o, 0]
        assert res["top_converged"][o] == 1 and res["top_residuals"][o, 0] < 1e-2 * top
        # Rayleigh quotients of the probes lie below the top eigenvalue
        assert (res["trace_samples"][o] / p <= top).all()
        assert res["min_eigenvalue"][o] < top or np.isnan(res["min_eigenvalue"][o])
        assert np.nansum(res["slq_weights"][o]) == pytest.approx(1.0, abs=1e-9)
        assert np.trapezoid(res["density"][o], res["density_grid"][o]) == pytest.approx(1, abs=0.05)
        assert res["hvp_products"][o] > 0 and res["seconds"][o] > 0
    assert res["trace_samples"].shape == (2, 2) and res["slq_nodes"].shape == (2, 1, 4)
    assert res["top_eigenvalues"][0, 0] != res["top_eigenvalues"][1, 0]
    settings = json.loads(str(res["config"]))["hessian"]
    assert settings["probes"] == 2 and "batch_size" not in settings


def test_hessian_resumes_to_the_same_numbers_and_refuses_other_inputs(
    ctx, specs, origins, hessian_full, tmp_path, monkeypatch
):
    out = tmp_path / "hessian.npz"
    buffers = origin_buffers(specs, ctx.model)
    measure, calls = flatness.hessian_of_origin, []

    def interrupted(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return measure(*args)

    monkeypatch.setattr(flatness, "hessian_of_origin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compute_hessian(ctx, origins, out, HESSIAN, buffers, progress=False)
    monkeypatch.undo()
    partial = _load(out)
    assert list(partial["done"]) == [True, False] and np.isnan(partial["trace"][1])
    resumed = compute_hessian(ctx, origins, out, HESSIAN, buffers, progress=False)
    _assert_same(resumed, hessian_full)
    assert resumed["seconds"][0] == partial["seconds"][0]  # the first origin was not redone
    before = out.read_bytes()
    other = dataclasses.replace(HESSIAN, probes=3)
    with pytest.raises(AnalysisError, match="different inputs"):
        compute_hessian(ctx, origins, out, other, buffers, progress=False)
    assert out.read_bytes() == before
    # batch_size changes nothing but summation order: the same file resumes
    again = compute_hessian(ctx, origins, out, dataclasses.replace(HESSIAN, batch_size=3))
    _assert_same(again, hessian_full)


def test_sharpness_is_paired_and_weighted_by_sample(ctx, origins, tmp_path):
    res = compute_sharpness(ctx, origins, tmp_path / "s.npz", SHARPNESS, progress=False)
    assert res["done"].all() and list(res["rho_avg"]) == [0.01, 0.05]
    assert (
        res["s_avg"].shape == (2, 2) and res["s_max"].shape == (2, 1) and res["sam"].shape == (2, 2)
    )
    assert (res["s_max"] >= 0).all() and (res["s_avg_se"] > 0).all()
    assert res["train_nll"][0] == pytest.approx(subset_loss(ctx, origins["SGD"], 10), rel=1e-5)
    # the same draws and data for an origin alone as beside another one
    alone = compute_sharpness(
        ctx, {"SWA": origins["SWA"]}, tmp_path / "alone.npz", SHARPNESS, progress=False
    )
    for key in ("s_avg", "s_avg_se", "s_max", "sam", "train_nll"):
        np.testing.assert_array_equal(alone[key][0], res[key][1], err_msg=key)
    # the batches are part of sharpness' definition: another batch size is another input
    with pytest.raises(AnalysisError, match="different inputs"):
        compute_sharpness(
            ctx, origins, tmp_path / "s.npz", dataclasses.replace(SHARPNESS, batch_size=5)
        )


def test_around_planes_resume_row_by_row(ctx, origins, tmp_path, monkeypatch):
    full = compute_around(ctx, origins, tmp_path / "full.npz", AROUND, progress=False)
    assert full["train_nll"].shape == (2, 3, 3) and full["done"].shape == (2, 3)
    np.testing.assert_allclose(full["a"], [-0.5, 0.0, 0.5])
    for o, w in enumerate(origins.values()):
        assert full["train_nll"][o, 1, 1] == pytest.approx(subset_loss(ctx, w, 10), rel=1e-5)
        weights_only = [p for p in ctx.model.parameters() if p.dim() > 1]
        start, norm2 = 0, 0.0
        for p in ctx.model.parameters():
            if p.dim() > 1:
                norm2 += float(w[start : start + p.numel()].double().norm()) ** 2
            start += p.numel()
        assert weights_only and full["direction_norms"][o] == pytest.approx([norm2**0.5] * 2)
    assert np.ptp(full["train_nll"][0]) > 1e-3
    out = tmp_path / "partial.npz"
    row, rows = flatness.around_row, []

    def interrupted(*args):
        if len(rows) == 4:
            raise KeyboardInterrupt
        rows.append(1)
        return row(*args)

    monkeypatch.setattr(flatness, "around_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compute_around(ctx, origins, out, AROUND, progress=False)
    monkeypatch.undo()
    assert _load(out)["done"].sum() == 4  # the second origin half done
    _assert_same(compute_around(ctx, origins, out, AROUND, progress=False), full)


def test_rays_with_filter_directions(ctx, origins, tmp_path, monkeypatch):
    seen, evaluate = [], ctx.evaluate

    def recording(vector):
        seen.append(vector.double().clone())
        return evaluate(vector)

    monkeypatch.setattr(ctx, "evaluate", recording)
    out = tmp_path / "rays.npz"
    options = {"n_directions": 1, "max_distance": 0.5, "n_distances": 2, "seed": 3,
               "progress": False, "points_per_pass": 1}  # fmt: skip
    saved = compute_rays(ctx, origins, out, directions="filter", **options)
    monkeypatch.undo()
    shapes = parameter_shapes(ctx.model)
    for o, w in enumerate(origins.values()):
        direction = (seen[2 * o + 1] - w.double()) / 0.5
        expected = filter_direction(3, 0, w.double(), shapes)
        torch.testing.assert_close(direction, expected, atol=1e-5, rtol=0)
    assert json.loads(str(saved["config"]))["directions"] == "filter"
    with pytest.raises(AnalysisError, match="different inputs"):
        compute_rays(ctx, origins, out, **options)  # unit directions: another input
    with pytest.raises(AnalysisError, match="directions must be unit or filter"):
        compute_rays(ctx, origins, tmp_path / "r2.npz", directions="sphere", **options)


# --------------------------------------------------------------------------- command line


FITS_THE_RUN = {  # defaults beyond the run's 96 training images
    "hessian": ["density_images=null"],
    "sharpness": ["images=8"],
}


def _common(run_dir, tmp_path, name: str = "") -> list[str]:
    return [
        *FITS_THE_RUN.get(name, []),
        f"run_dir={run_dir}",
        f"swa_run={run_dir}",
        f"sgd_solution={run_dir}/checkpoints/last.pt",
        f"out_dir={tmp_path}",
        "device=cpu",
        "progress=false",
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["hessian", "top_k=0"], "top_k must be an integer in 1..77849"),
        (["hessian", "top_k=77850"], "top_k must be an integer in 1..77849"),
        (["hessian", "probes=1"], "probes must be an integer >= 2, got 1"),
        (["hessian", "images=0"], "images must be an integer in 1..96"),
        (["hessian", "images=97"], "images must be an integer in 1..96"),
        (["hessian", "density_images=1000"], "density_images must be an integer in 1..96"),
        (["hessian", "ncv=1"], "ncv must be an integer >= 6"),
        (["hessian", "tol=abc"], "tol must be a number, got 'abc'"),
        (["sharpness", "images=97"], "images must be an integer in 1..96"),
        (["sharpness", "rho_avg=[0.1,0]"], "rho_avg must hold numbers > 0, got 0"),
        (["sharpness", "rho_max=[-1]"], "rho_max must hold numbers > 0, got -1"),
        (["sharpness", "rho_sam=[]"], "rho_sam must be a non-empty list"),
        (["sharpness", "avg_samples=1"], "avg_samples must be an integer >= 2"),
        (["around", "grid_points=1"], "grid_points must be an integer >= 2"),
        (["around", "span=0"], "span must be > 0"),
        (["around", "origins.SGD={ckpt}/last.pt:weights"], "unknown selector 'weights'"),
        (["hessian", "origins.SWA={ckpt}/epoch_0001.pt:swa"], "holds no swa yet"),
        (["sharpness", "+origins.X={ckpt}/nope.pt:model"], "cannot read checkpoint"),
        (["around", "~origins.SGD", "~origins.SWA"], "origins must map names to points"),
        (["sharpness", "out={out}"], "is not a readable analysis file"),
        (["rays", "directions=sphere"], "directions must be unit or filter"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_overwrites_nothing(run_dir, tmp_path, capsys, argv, needle):
    out = tmp_path / f"{argv[0]}.npz"
    name, *overrides = (a.format(ckpt=run_dir / "checkpoints", out=out) for a in argv)
    out.write_bytes(b"results of an earlier run")
    assert main([name, *_common(run_dir, tmp_path, name), *overrides]) == EXIT_USER_ERROR
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert needle in lines[0]
    assert out.read_bytes() == b"results of an earlier run"


def test_cli_hessian_and_sharpness_write_their_files(run_dir, tmp_path, capsys):
    small = ["images=6", "batch_size=4", "top_k=1", "maxiter=1", "ncv=3", "probes=2",
             "density_images=4", "density_runs=1", "density_steps=3", "density_points=20"]  # fmt: skip
    assert main(["hessian", *_common(run_dir, tmp_path), *small]) == 0
    assert f"results in {tmp_path / 'hessian.npz'}" in capsys.readouterr().out
    saved = _load(tmp_path / "hessian.npz")
    # the defaults add the EMAs of the SWA run's last checkpoint (ema_checkpoint)
    assert saved["done"].all()
    assert list(saved["origins"]) == ["SWA", "SGD", "EMA 0.99", "EMA 0.995"]
    assert np.isfinite(saved["test_acc_own_bn"]).all()
    config = json.loads(str(saved["config"]))
    assert config["settings"]["origins"]["SGD"].endswith("last.pt:model")
    assert config["hessian"]["top_k"] == 1 and config["hessian"]["maxiter"] == 1
    sharp = ["images=4", "batch_size=4", "rho_avg=[0.1]", "rho_max=[1.0]", "rho_sam=[0.05]",
             "avg_samples=2", "max_steps=2"]  # fmt: skip
    assert main(["sharpness", *_common(run_dir, tmp_path), *sharp]) == 0
    assert _load(tmp_path / "sharpness.npz")["s_max"].shape == (4, 1)


def test_configs_document_their_keys():
    for name, cls in (("hessian", HessianSettings), ("sharpness", SharpnessSettings),
                      ("around", AroundSettings)):  # fmt: skip
        text = (Path(ANALYSIS_CONF_DIR) / f"{name}.yaml").read_text()
        cfg = OmegaConf.load(Path(ANALYSIS_CONF_DIR) / f"{name}.yaml")
        for field in dataclasses.fields(cls):
            if field.name == "seed":
                continue  # base.yaml's
            line = next(line for line in text.splitlines() if line.startswith(f"{field.name}:"))
            assert "#" in line, line
            default = field.default
            value = cfg[field.name]
            value = tuple(value) if OmegaConf.is_list(value) else value
            assert value == default, (name, field.name)


# --------------------------------------------------------------------------- figures

PLOTS = Path(__file__).resolve().parents[1] / "plots"
PLOT_CONFIG = json.dumps({"model": "PreResNet164", "data": "synthetic", "synthetic": True})


def make_hessian_npz(path: Path) -> Path:
    """Two origins (SWA flatter), the second one's smallest eigenvalue not converged."""
    grid = np.linspace(-5, 60, 400)
    density = np.stack([np.exp(-0.5 * grid**2) + 1e-3 * np.exp(-0.5 * (grid - c) ** 2)
                        for c in (25.0, 50.0)])  # fmt: skip
    np.savez(
        path,
        origins=np.array(["SWA", "SGD"]),
        done=np.array([True, True]),
        density_grid=np.stack([grid, grid]),
        density=density / np.trapezoid(density, grid)[:, None],
        top_eigenvalues=np.array([[25.0, 20.0, 12.0], [50.0, 41.0, 30.0]]),
        min_eigenvalue=np.array([-1.5, np.nan]),
        trace=np.array([410.0, 880.0]),
        trace_se=np.array([12.0, 20.0]),
        config=np.array(PLOT_CONFIG),
    )
    return path


def make_around_npz(path: Path, g: int = 9) -> Path:
    a = np.linspace(-1, 1, g)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    bowl = np.stack([0.05 + 2 * (aa**2 + bb**2), 0.02 + 8 * (aa**2 + 0.5 * bb**2)])
    done = np.ones((2, g), dtype=bool)
    done[1, -2:] = False
    np.savez(path, origins=np.array(["SGD", "SWA"]), a=a, b=a, done=done, train_nll=bowl,
             train_err=100 * bowl / bowl.max(), config=np.array(PLOT_CONFIG))  # fmt: skip
    return path


def _run_plot(script: str, *args: str):
    return subprocess.run(
        [sys.executable, str(PLOTS / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("script", "make", "extra"),
    [("spectrum", make_hessian_npz, []), ("around", make_around_npz, ["--metric", "train_err"])],
)
def test_plot_cli_writes_png_and_pdf_and_leaves_its_input(script, make, extra, tmp_path):
    given = make(tmp_path / f"{script}.npz")
    before = given.read_bytes()
    out = tmp_path / "fig" / f"{script}.png"
    result = _run_plot(script, str(given), "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and f"wrote {out.with_suffix('.pdf')}" in result.stdout
    assert out.with_suffix(".pdf").stat().st_size > 1000
    image = mpimg.imread(out)
    assert image.ndim == 3 and 300 <= image.shape[0] <= 3000 and image.std() > 0.05
    assert given.read_bytes() == before


def test_plots_draw_in_process(tmp_path):
    sys.path.insert(0, str(PLOTS))
    import around as around_plot
    import spectrum as spectrum_plot

    out = tmp_path / "s.png"
    assert spectrum_plot.draw(make_hessian_npz(tmp_path / "h.npz"), out)[0] == out
    assert spectrum_plot.number(np.nan, ".3g") == "n/c"
    data = {"train_nll": np.ones((2, 3, 3)), "done": np.array([[1, 1, 0], [1, 0, 0]], bool)}
    panels = around_plot.panels(data, "train_nll")
    assert np.isnan(panels[0, 2]).all() and np.isfinite(panels[0, :2]).all()
    assert data["train_nll"].sum() == 18  # the input is not changed
    written = around_plot.draw(make_around_npz(tmp_path / "a.npz"), tmp_path / "a.png", vmax=5.0)
    assert [p.suffix for p in written] == [".png", ".pdf"]


def test_plot_bad_input_is_one_line(tmp_path):
    sys.path.insert(0, str(PLOTS))
    import around as around_plot
    import spectrum as spectrum_plot
    from plot_common import PlotInputError

    hessian, around = make_hessian_npz(tmp_path / "h.npz"), make_around_npz(tmp_path / "a.npz")
    unfinished = tmp_path / "unfinished.npz"
    with np.load(around) as saved:
        arrays = dict(saved)
    np.savez(unfinished, **{**arrays, "done": np.zeros_like(arrays["done"])})
    out = tmp_path / "figure.png"
    with pytest.raises(PlotInputError, match="a.npz has no density_grid, density, top_eigenvalues"):
        spectrum_plot.draw(around, out)
    with pytest.raises(PlotInputError, match="h.npz has no a, b, train_nll"):
        around_plot.draw(hessian, out)
    with pytest.raises(PlotInputError, match="unfinished.npz has no finished row"):
        around_plot.draw(unfinished, out)
    result = _run_plot("spectrum", str(tmp_path / "missing.npz"), "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and lines[0].endswith(
        "missing.npz: no such file; expected an .npz of python -m swa_repro.analysis hessian"
    )
    assert not out.exists()


# --------------------------------------------------------------------------- figures' steps, costs


class PassCounter:
    """Images through the model by kind of pass (analysis_cost): refresh (train mode), gradient
    (autograd on), forward (the rest)."""

    def __init__(self, model: nn.Module):
        self.counts = dict.fromkeys(("forward", "refresh", "gradient"), 0)
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        kind = (
            "refresh" if module.training else "gradient" if torch.is_grad_enabled() else "forward"
        )
        self.counts[kind] += len(inputs[0])


def test_counted_passes_are_the_passes_the_analyses_make(ctx, origins, tmp_path):
    """analysis_cost's counts of sharpness and around against the images that go through the
    model (the training set is 96 images)."""
    for compute, settings, counted in (
        (compute_sharpness, SHARPNESS, analysis_cost.sharpness(SHARPNESS, 96)),
        (compute_around, AROUND, analysis_cost.around(AROUND, 96)),
    ):
        counter = PassCounter(ctx.model)
        try:
            compute(ctx, origins, tmp_path / f"{compute.__name__}.npz", settings, progress=False)
        finally:
            counter.handle.remove()
        expected = counted * len(origins)
        assert counter.counts == {k: getattr(expected, k) for k in counter.counts}
    assert expected.hvp == 0
    # hessian: every Hessian-vector product is counted, ARPACK's by assumption (EIGSH_PRODUCTS)
    s, o = HESSIAN, analysis_cost.hessian(HESSIAN, 96, 64)
    products = (2 * analysis_cost.EIGSH_PRODUCTS + s.top_k + 1 + s.probes) * s.images
    assert o.hvp == products + s.density_runs * s.density_steps * s.density_images
    assert (o.forward, o.refresh) == (2 * 64 + s.images, 96)
    rates = analysis_cost.Rates(forward=10, refresh=20, gradient=5, hvp=1, basis="")
    assert rates.seconds(analysis_cost.Passes(100, 40, 10, 3)) == 10 + 2 + 2 + 3


def test_rates_from_flop_counts_or_a_benchmark():
    flops = analysis_cost.flop_rates(macs=1e6, tflops=2.0)
    assert (flops.forward, flops.gradient) == (1e6, 2e12 / 6e6)
    assert flops.hvp == flops.gradient / analysis_cost.HVP_OVER_GRADIENT
    rates = {"eval_images_per_s": 900.0, "bn_refresh_images_per_s": 800.0,
             "train_images_per_s": 300.0, "hvp_over_gradient": 2.0}  # fmt: skip
    bench = {"path": Path("bench_gpu_faithful.json"), "device": "H100", "rates": {"m": rates},
             "speed": {"channels_last": False, "bf16": False, "tf32": False, "compile": False,
                       "eval_batch_size": None, "bn_refresh_batch_size": None}}  # fmt: skip
    bench["batch_size"] = 128

    def run_cfg(model="m", batch_size=128, image_size=32):
        return OmegaConf.create({"model": {"name": model}, "optim": {"batch_size": batch_size},
                                 "data": {"image_size": image_size}})  # fmt: skip

    measured = analysis_cost.measured_rates(bench, run_cfg())
    assert (measured.forward, measured.refresh, measured.gradient, measured.hvp) == (
        900.0, 800.0, 300.0, 150.0,
    )  # fmt: skip
    assert "measured by bench_gpu_faithful.json on H100" in measured.basis
    assert analysis_cost.measured_rates(bench, run_cfg(model="other")) is None
    fast = {**bench, "speed": {**bench["speed"], "bf16": True}}  # not how the analyses run
    assert analysis_cost.measured_rates(fast, run_cfg()) is None
    # another batch size or image size than the benchmark measured: not its figures
    assert analysis_cost.measured_rates(bench, run_cfg(batch_size=256)) is None
    assert analysis_cost.measured_rates(bench, run_cfg(image_size=224)) is None


@pytest.fixture(scope="module")
def figure_runs(run_dir, tmp_path_factory):
    """The tiny SWA run where the layout puts the demo's SWA run, as figures looks for it."""
    runs = tmp_path_factory.mktemp("figure_runs") / "runs"
    shutil.copytree(run_dir, layout.run_dir(runs, "synthetic", "small_cnn", "swa", 0))
    return runs


def figures_of(runs, out, **sizes) -> figures.Figures:
    args = argparse.Namespace(flatness="smoke", out=out, **sizes)
    return figures.Figures(runs, "synthetic/small_cnn", 0, args)


def test_figures_flatness_steps_in_process(figure_runs, tmp_path, monkeypatch):
    figs = figures_of(figure_runs, tmp_path / "figures")
    swa_run, commands = RunPaths(figs.run_dir("swa")), []

    def in_process(command):
        commands.append(command[3])
        assert command[1:3] == ["-m", "swa_repro.analysis"] and main(command[3:]) == 0

    monkeypatch.setattr(figures, "run", in_process)
    base = [f"runs={figure_runs}", "setup=synthetic/small_cnn", "run_seed=0", "device=cpu",
            f"out_dir={figs.data_dir}", "progress=false"]  # fmt: skip
    figures.flatness_analyses(figs, base, swa_run, f"{swa_run.last}:model", 96)
    assert commands == ["hessian", "sharpness", "around"]
    for name, preset in figures.FLATNESS["smoke"].items():
        saved = _load(layout.analysis_file(figure_runs, figs.setup, 0, name))
        assert saved["done"].all(), name
        assert sorted(saved["origins"]) == ["EMA 0.99", "EMA 0.995", "SGD", "SWA"], name
        stored = json.loads(str(saved["config"]))[name]  # the settings hashed, as run
        for key, value in preset.items():
            if key != "batch_size" or name == "sharpness":  # speed only elsewhere: not stored
                assert stored[key] == (list(value) if isinstance(value, tuple) else value)
    figures.flatness_analyses(figs, base, swa_run, f"{swa_run.last}:model", 96)
    assert len(commands) == 3  # complete: nothing computed again
    hessian = layout.analysis_file(figure_runs, figs.setup, 0, "hessian")
    assert figures.complete(hessian, ["batch_size=99"])  # speed only
    with pytest.raises(ConfigError, match="was computed with probes=2, not 3"):
        figures.complete(hessian, ["probes=3"])
    text = figures.flatness_table(figs).read_text()  # markdown beside the figures
    assert figures.flatness_table(figs) == tmp_path / "figures" / "sharpness_synthetic.md"
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    assert rows == ["| solution", "| SGD", "| EMA 0.99", "| EMA 0.995", "| SWA"]
    assert f"no {layout.analysis_file(figure_runs, figs.setup, 0, 'rays')}" in text


def test_figures_unknown_flatness_sizes_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        figures.main(["--runs", str(tmp_path / "runs"), "--flatness", "huge"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --flatness must be one of paper, demo, smoke, got 'huge'"
    ]
    assert not (tmp_path / "runs").exists()


def test_figures_subsets_fit_the_training_set(figure_runs, tmp_path):
    figs = figures_of(figure_runs, tmp_path)
    figs.args.flatness = "demo"
    settings = figures.flatness_settings(figs, 100)
    assert settings["hessian"]["images"] == 100 and settings["around"]["images"] == 100
    assert settings["hessian"]["density_images"] == 100 and settings["sharpness"]["images"] == 100
    assert figures.flatness_settings(figs, 5000)["around"]["images"] == 1000
    assert figures.FLATNESS["paper"]["around"] == {"grid_points": 51}  # Li et al.'s planes


def test_figures_plan_counts_every_analysis_and_prints_gpu_hours(figure_runs, tmp_path, capsys):
    sizes = {"grid": 3, "line_points": 5, "rays_directions": 2, "rays_distances": 4}
    figs = figures_of(figure_runs, tmp_path, **sizes)
    cfg = read_yaml(RunPaths(figs.run_dir("swa")).config, "run config")  # 96 train, 64 test
    passes = figures.planned(figs, 2, cfg, cfg)
    point = analysis_cost.Passes(forward=96 + 64, refresh=96)
    assert passes["plane"] == passes["plane_fge"] == passes["trajectory_cyclic"] == point * 9
    assert passes["line"] == point * 5
    assert passes["rays"] == point * (4 * 2 * 4)  # SGD, SWA and the two EMAs
    assert passes["fge"] == analysis_cost.Passes(gradient=6 * 96) + point * 3  # at least 6 epochs
    smoke = {n: figures.FLATNESS_SETTINGS[n](**s) for n, s in figures.FLATNESS["smoke"].items()}
    assert (
        passes["hessian"]
        == analysis_cost.Passes(
            forward=2 * 64 + 16, refresh=96, hvp=(2 * analysis_cost.EIGSH_PRODUCTS + 4) * 16 + 3 * 8
        )
        * 4
    )
    assert (
        passes["sharpness"]
        == analysis_cost.Passes(forward=16 * (1 + 3 + 2 + 2), refresh=96, gradient=16 * 2) * 4
    )  # train metrics; base + 2 draws; 1 Auto-PGD step + its base; SAM and its base
    assert passes["around"] == analysis_cost.around(smoke["around"], 96) * 4
    figures.print_plan(figs, passes, cfg)
    out = capsys.readouterr().out.splitlines()
    assert "FLOPs at an assumed 30 TFLOP/s" in out[0]
    rates = analysis_cost.flop_rates(figures.macs_per_image("small_cnn", 10))
    done = {line.split()[0]: line.split()[1:] for line in out[1:-1]}
    # the hessian.npz of the in-process test, when it ran first, is done; the rest is to do
    for name, counted in passes.items():
        state, hours = done[name][0], float(done[name][-2])
        if state == "to":
            assert hours == pytest.approx(rates.seconds(counted) / 3600, rel=1e-2)
        else:
            assert (state, hours) == ("done", 0.0)
    assert out[-1].startswith("  about ") and "GPU-hours left" in out[-1]
