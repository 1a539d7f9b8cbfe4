"""SWAG moments, deviations and samples against independent computations from the collected
weight vectors (torch.stack / mean / explicit covariance matrices), in float64."""

import io
import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from swa_repro.checkpoint import CheckpointError
from swa_repro.config_check import ConfigError, check_ema_decays, check_swag_settings
from swa_repro.swag import Swag, sample_generator

SHAPES = [(3,), (2, 1)]  # d = 5 in two parameter tensors: cross-tensor correlations are tested
D = 5


def weight_vectors(n: int, seed: int = 0) -> torch.Tensor:
    """n collected weight vectors (n x d), drifting so that the deviations are not symmetric."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, D, generator=gen, dtype=torch.float64)
    return steps.cumsum(0) * torch.tensor([1.0, 0.5, 2.0, 1.5, 0.3], dtype=torch.float64)


def split(vector: torch.Tensor) -> list[torch.Tensor]:
    """A flat d-vector as the list of parameter tensors of SHAPES."""
    parts = vector.split([math.prod(s) for s in SHAPES])
    return [p.reshape(s).clone() for p, s in zip(parts, SHAPES, strict=True)]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def running_means(weights: torch.Tensor) -> list[torch.Tensor]:
    """The SWA mean after each collection, as the SWA average keeps it."""
    means, mean = [], torch.zeros(D, dtype=torch.float64, device=weights.device)
    for n, w in enumerate(weights):
        mean = mean + (w - mean) / (n + 1)
        means.append(mean.clone())
    return means


def collect(weights: torch.Tensor, max_rank: int, **kwargs) -> tuple[Swag, torch.Tensor]:
    """A Swag fed `weights` (with their running means); returns it and the final mean."""
    swag = Swag(split(weights[0]), max_rank=max_rank, **kwargs)
    for w, mean in zip(weights, running_means(weights), strict=True):
        swag.update(split(w), split(mean))
    return swag, mean


def expected_deviations(weights: torch.Tensor, max_rank: int) -> torch.Tensor:
    """Rows w_i - mean(w_1..w_i) of the last max_rank collections, oldest first (K x d)."""
    rows = [w - weights[: i + 1].mean(0) for i, w in enumerate(weights)]
    return torch.stack(rows[-max_rank:])


@pytest.mark.parametrize("n", [2, 3, 7, 12])  # fewer than, exactly, more than K; and wrapped twice
def test_moments_and_deviations_equal_independent_computation(n):
    weights = weight_vectors(n)
    swag, mean = collect(weights, max_rank=3)
    assert swag.count == n and swag.rank == min(n, 3)
    torch.testing.assert_close(mean, weights.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(flat(swag.sq_mean), weights.square().mean(0), rtol=0, atol=1e-12)
    rows = torch.cat(swag.chronological_deviations(), dim=1)
    torch.testing.assert_close(rows, expected_deviations(weights, 3), rtol=0, atol=1e-12)
    variance = (weights.square().mean(0) - weights.mean(0).square()).clamp(min=1e-30)
    torch.testing.assert_close(flat(swag.variance(split(mean))), variance, rtol=0, atol=1e-12)


def test_variance_clamped_at_1e_30():
    weights = torch.ones(3, D, dtype=torch.float64)  # identical models: zero variance
    swag, mean = collect(weights, max_rank=3)
    assert torch.equal(
        flat(swag.variance(split(mean))), torch.full((D,), 1e-30, dtype=torch.float64)
    )


def test_collects_from_averaged_model_parameters():
    """The mean passed in is AveragedModel's (the SWA average), after its update."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    average = AveragedModel(model, use_buffers=False)
    swag = Swag(list(model.parameters()), max_rank=2)
    collected = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update_parameters(model)
        swag.update(list(model.parameters()), list(average.module.parameters()))
        collected.append(flat(model.parameters()).detach().clone())
    weights = torch.stack(collected)
    torch.testing.assert_close(flat(swag.sq_mean), weights.square().mean(0), rtol=0, atol=1e-12)
    rows = torch.cat(swag.chronological_deviations(), dim=1)
    torch.testing.assert_close(rows, expected_deviations(weights, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [4, 9])  # K = 4 = max_rank - 1 collected; K = max_rank, wrapped
def test_sample_with_given_z_equals_formula(n):
    weights = weight_vectors(n, seed=1)
    swag, mean = collect(weights, max_rank=5)
    k = min(n, 5)
    gen = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(D, generator=gen).double(), torch.randn(k, generator=gen).double()
    deviations = expected_deviations(weights, 5)  # K x d, oldest first
    std = (weights.square().mean(0) - mean.square()).clamp(min=1e-30).sqrt()
    s = 0.5
    swag_w = mean + math.sqrt(s) * (std * z1 + deviations.T @ z2 / math.sqrt(k - 1))
    diag_w = mean + math.sqrt(s) * std * z1
    torch.testing.assert_close(
        flat(swag.sample(split(mean), split(z1), z2, s)), swag_w, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        flat(swag.sample(split(mean), split(z1), None, s)), diag_w, rtol=0, atol=1e-12
    )


def test_sample_written_into_out_and_scale_zero_is_the_mean():
    weights = weight_vectors(4)
    swag, mean = collect(weights, max_rank=3)
    model = nn.ParameterList([nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES])
    swag.draw(split(mean), sample_generator(0, 0), scale=0.0, low_rank=True, out=list(model))
    assert torch.equal(flat(model), mean)


def test_draws_match_mean_and_covariance():
    """Sample mean and covariance of many seeded draws against s (diag(var) + D^T D / (K - 1)),
    within 5 standard errors per entry; the (K - 1) divisor uses the K = 3 collected < max_rank."""
    weights = weight_vectors(3, seed=2)
    swag, mean = collect(weights, max_rank=6)
    deviations = expected_deviations(weights, 6)
    variance = (weights.square().mean(0) - mean.square()).clamp(min=1e-30)
    s, draws = 0.7, 3000
    for low_rank in (True, False):
        covariance = s * torch.diag(variance)
        if low_rank:
            covariance += s * deviations.T @ deviations / (3 - 1)
        samples = torch.stack(
            [
                flat(swag.draw(split(mean), sample_generator(7, i), s, low_rank))
                for i in range(draws)
            ]
        )
        spread = covariance.diag().sqrt()
        assert ((samples.mean(0) - mean).abs() < 5 * spread / math.sqrt(draws)).all()
        error = torch.cov(samples.T) - covariance
        standard_error = ((torch.outer(spread, spread) ** 2 + covariance**2) / draws).sqrt()
        assert (error.abs() < 5 * standard_error).all(), (error, standard_error)
        assert low_rank == bool(covariance[0, 3].abs() > 10 * standard_error[0, 3])


def test_seeded_draw_leaves_global_rng_alone_and_diag_shares_z1():
    weights = weight_vectors(5)
    swag, mean = collect(weights, max_rank=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    low_rank = flat(swag.draw(split(mean), sample_generator(0, 4), 0.5, low_rank=True))
    diag = flat(swag.draw(split(mean), sample_generator(0, 4), 0.5, low_rank=False))
    assert torch.equal(torch.get_rng_state(), before)
    gen = sample_generator(0, 4)
    z2 = torch.randn(3, generator=gen, dtype=torch.float64)
    z1 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    assert torch.equal(low_rank, flat(swag.sample(split(mean), z1, z2, 0.5)))
    assert torch.equal(diag, flat(swag.sample(split(mean), z1, None, 0.5)))
    assert not torch.equal(diag, low_rank)
    other = flat(swag.draw(split(mean), sample_generator(0, 5), 0.5, low_rank=True))
    assert not torch.equal(other, low_rank)


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trip_resumes_bitwise():
    """Interrupted after 4 of 8 collections (K = 3, so the ring has wrapped), saved and loaded:
    the later updates, states and draws are bitwise those of an uninterrupted run."""
    weights, means = weight_vectors(8, seed=4), running_means(weight_vectors(8, seed=4))
    whole, _ = collect(weights, max_rank=3)
    first, _ = collect(weights[:4], max_rank=3)
    resumed = Swag(split(weights[0]), max_rank=3)
    resumed.load_state_dict(round_trip(first.state_dict()))
    for w, mean in zip(weights[4:], means[4:], strict=True):
        resumed.update(split(w), split(mean))
    assert resumed.count == whole.count == 8
    for a, b in zip(
        resumed.sq_mean + resumed.deviations, whole.sq_mean + whole.deviations, strict=True
    ):
        assert torch.equal(a, b)
    for i in range(3):
        draw = [
            s.draw(split(means[-1]), sample_generator(1, i), 0.5, True) for s in (whole, resumed)
        ]
        assert torch.equal(flat(draw[0]), flat(draw[1]))


def test_state_without_deviations_gives_swag_diag_only():
    weights = weight_vectors(5)
    swag, mean = collect(weights, max_rank=3)
    state = round_trip(swag.state_dict(deviations=False))
    assert set(state) == {"max_rank", "count", "sq_mean"}
    diag_only = Swag.from_state_dict(state)
    assert not diag_only.low_rank and diag_only.rank == 3
    expected = swag.draw(split(mean), sample_generator(0, 0), 1.0, low_rank=False)
    got = diag_only.draw(split(mean), sample_generator(0, 0), 1.0, low_rank=False)
    assert torch.equal(flat(expected), flat(got))
    with pytest.raises(ConfigError, match="only SWAG-Diag"):
        diag_only.draw(split(mean), sample_generator(0, 0), 0.5, low_rank=True)
    with pytest.raises(CheckpointError, match="no deviations"):
        Swag(split(mean), max_rank=3).load_state_dict(state)
    full = Swag.from_state_dict(round_trip(swag.state_dict()))
    rows = torch.cat(full.chronological_deviations(), 1)
    torch.testing.assert_close(rows, expected_deviations(weights, 3), rtol=0, atol=1e-12)


def test_state_of_other_model_or_rank_rejected():
    swag, _ = collect(weight_vectors(4), max_rank=3)
    with pytest.raises(CheckpointError, match="max_rank 3"):
        Swag(split(torch.zeros(D)), max_rank=4).load_state_dict(swag.state_dict())
    with pytest.raises(CheckpointError, match="sq_mean"):
        Swag([torch.zeros(5, dtype=torch.float64)], max_rank=3).load_state_dict(swag.state_dict())


def test_deviations_on_another_device_give_the_same_samples():
    """deviation_device keeps the K rows apart from the parameters (CPU with parameters on the
    GPU where there is one; here both on the CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = weight_vectors(6).to(device)
    here, mean = collect(weights, max_rank=4)
    apart, _ = collect(weights, max_rank=4, deviation_device="cpu")
    assert all(d.device.type == "cpu" for d in apart.deviations)
    for low_rank in (True, False):
        a, b = (s.draw(split(mean), sample_generator(0, 0), 0.5, low_rank) for s in (here, apart))
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=1e-12)
        assert flat(b).device == mean.device


def test_too_few_models_for_low_rank():
    swag, mean = collect(weight_vectors(1), max_rank=3)
    with pytest.raises(ConfigError, match="at least 2 collected models"):
        swag.draw(split(mean), sample_generator(0, 0), 0.5, low_rank=True)
    swag.draw(split(mean), sample_generator(0, 0), 1.0, low_rank=False)  # SWAG-Diag works
    with pytest.raises(ConfigError, match="no model"):
        Swag(split(mean)).draw(split(mean), sample_generator(0, 0), 1.0, low_rank=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_rank": 1}, "swag.max_rank must be an integer >= 2, got 1"),
        ({"max_rank": 2.5}, "swag.max_rank must be an integer >= 2, got 2.5"),
        ({"max_rank": True}, "swag.max_rank must be an integer >= 2, got True"),
        ({"samples": 0}, "swag.samples must be a positive integer, got 0"),
        ({"scale": 0}, "swag.scale must be a finite positive number, got 0"),
        ({"scale": float("nan")}, "swag.scale must be a finite positive number, got nan"),
        ({"scale_diag": -1.0}, "swag.scale_diag must be a finite positive number, got -1.0"),
    ],
)
def test_bad_swag_settings(kwargs, message):
    settings = {"max_rank": 20, "samples": 30, "scale": 0.5, "scale_diag": 1.0, **kwargs}
    with pytest.raises(ConfigError) as error:
        check_swag_settings(**settings)
    assert str(error.value) == message


def test_swag_settings_accepted_and_max_rank_only_for_low_rank():
    check_swag_settings(20, 30, 0.5, 1.0)
    check_swag_settings(1, 30, 0.5, 1.0, low_rank=False)
    with pytest.raises(ConfigError, match="swag.max_rank"):
        Swag(split(torch.zeros(D)), max_rank=1)


@pytest.mark.parametrize(
    "decays, message",
    [
        ([0.999, 1.0], "ema.decays entries must lie in (0, 1), got 1.0"),
        ([0.0], "ema.decays entries must lie in (0, 1), got 0.0"),
        (["0.9"], "ema.decays entries must lie in (0, 1), got '0.9'"),
        ([0.9, 0.9], "ema.decays lists 0.9 twice"),
        (0.999, "ema.decays must be a list such as [1, 2], got 0.999"),
    ],
)
def test_bad_ema_decays(decays, message):
    with pytest.raises(ConfigError) as error:
        check_ema_decays(decays)
    assert str(error.value) == message


def test_ema_decays_accepted():
    check_ema_decays([0.999, 0.9998, 0.9999])
    check_ema_decays([])


def test_weights_of_another_shape_rejected():
    swag = Swag(split(torch.zeros(D)), max_rank=3)
    with pytest.raises(ValueError, match=r"tensor 1 has shape \(2,\), not \(2, 1\)"):
        swag.update([torch.zeros(3), torch.zeros(2)], split(torch.zeros(D)))
    with pytest.raises(ValueError, match="1 tensors, not 2"):
        swag.update(split(torch.zeros(D)), [torch.zeros(3)])
    assert swag.count == 0
