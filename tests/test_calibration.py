"""Calibration metrics, reliability bins, temperature scaling and the Bayesian model average,
against hand computations, brute force and torchmetrics."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from swa_repro.bma import ModelAverage
from swa_repro.calibration import (
    as_logits,
    brier_score,
    fit_temperature,
    metrics_from_sums,
    probability_metrics,
    probability_sums,
    reliability_diagram,
    scaled_probabilities,
)
from swa_repro.checkpoint import CheckpointError
from swa_repro.config_check import ConfigError

BINS = 15


def random_logits(n: int, classes: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n, classes, generator=gen, dtype=torch.float64)


def random_labels(n: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def test_metrics_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.1, 0.3, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 2])
    metrics = probability_metrics(probs, labels)
    # Brier: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; 0.5^2 + 0.5^2 + 1 = 1.5; 0.1^2 + 0.3^2 + 0.4^2 = 0.26
    assert metrics["brier"] == pytest.approx((0.14 + 1.5 + 0.26) / 3, abs=1e-15)
    # the true class of row 2 has probability 0: clamped at 1e-12
    assert metrics["nll"] == pytest.approx((-math.log(0.7) - math.log(1e-12) - math.log(0.6)) / 3)
    assert metrics["acc"] == pytest.approx(200 / 3) and metrics["err"] == pytest.approx(100 / 3)
    # bins: 0.7 -> (0.6667, 0.7333] hit; 0.5 -> (0.4667, 0.5] miss (argmax takes class 0);
    # 0.6 -> (0.5333, 0.6] hit
    assert metrics["ece"] == pytest.approx((0.3 + 0.5 + 0.4) / 3, abs=1e-15)


def test_brier_against_one_hot():
    probs = random_logits(50, 7, seed=0).softmax(1)
    labels = random_labels(50, 7, seed=1)
    expected = (probs - F.one_hot(labels, 7).double()).square().sum(1).mean()
    assert brier_score(probs, labels) == pytest.approx(float(expected), abs=1e-14)


def test_ece_equals_torchmetrics_away_from_bin_edges():
    """torchmetrics bins are [lower, upper) and confidence 1.0 has a bin of its own; ours are
    (lower, upper]: they agree when no confidence lies on an edge, so such rows are removed."""
    probs = random_logits(4000, 10, seed=2, spread=2.0).softmax(1).float()
    labels = random_labels(4000, 10, seed=3)
    labels[:2000] = probs[:2000].argmax(1)  # enough hits that the ECE is not just 1 - conf
    scaled = probs.max(1).values.double() * BINS
    away = (scaled - scaled.round()).abs() > 1e-4
    assert away.sum() > 3900
    probs, labels = probs[away], labels[away]
    reference = MulticlassCalibrationError(num_classes=10, n_bins=BINS, norm="l1")
    expected = float(reference(probs, labels))
    assert probability_metrics(probs, labels)["ece"] == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_by_brute_force_with_edges_to_the_lower_bin():
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    confidences = torch.cat(
        [edges[8:], torch.rand(40, generator=torch.Generator().manual_seed(4)).double() / 2 + 0.5]
    )  # exact edges 8/15 .. 1 and random values in [0.5, 1)
    probs = torch.stack([confidences, 1 - confidences], dim=1)
    labels = random_labels(len(confidences), 2, seed=5)
    diagram = reliability_diagram(probs, labels)
    assert diagram["edges"] == edges.tolist()
    bounds, values, truth = edges.tolist(), confidences.tolist(), labels.tolist()
    for b in range(BINS):
        members = [i for i, c in enumerate(values) if bounds[b] < c <= bounds[b + 1]]
        assert diagram["count"][b] == len(members)
        if not members:
            assert diagram["accuracy"][b] is None and diagram["confidence"][b] is None
            continue
        hits = sum(truth[i] == 0 for i in members)
        assert diagram["accuracy"][b] == pytest.approx(hits / len(members), abs=1e-15)
        mean_conf = sum(values[i] for i in members) / len(members)
        assert diagram["confidence"][b] == pytest.approx(mean_conf, abs=1e-15)
    assert sum(diagram["count"]) == len(values)  # confidence 1.0 too: in the last bin


def test_sums_of_shards_give_the_whole_sets_metrics():
    probs = random_logits(30, 4, seed=6).softmax(1)
    labels = random_labels(30, 4, seed=7)
    summed = probability_sums(probs[:13], labels[:13]) + probability_sums(probs[13:], labels[13:])
    whole = probability_metrics(probs, labels)
    for key, value in metrics_from_sums(summed).items():
        assert value == pytest.approx(whole[key], abs=1e-12), key


def synthetic_logits(t_true: float, n: int = 20000, classes: int = 10):
    """Logits and labels drawn from softmax(logits / t_true): calibrated at T = t_true."""
    logits = random_logits(n, classes, seed=8)
    gen = torch.Generator().manual_seed(9)
    labels = torch.multinomial((logits / t_true).softmax(1), 1, generator=gen).squeeze(1)
    return logits, labels


def test_temperature_scaling_recovers_known_temperature():
    logits, labels = synthetic_logits(t_true=2.0)
    fit = fit_temperature(logits, labels)
    assert fit.fitted and fit.reason is None
    assert fit.temperature == pytest.approx(2.0, rel=0.05)
    assert fit.nll_before == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert fit.nll_after == pytest.approx(float(F.cross_entropy(logits / fit.temperature, labels)))
    # brute force: no grid point does better, nor do the neighbours at +-0.1%
    grid = [1.5 + 0.05 * i for i in range(21)] + [fit.temperature * (1 + d) for d in (-1e-3, 1e-3)]
    nll = [float(F.cross_entropy(logits / t, labels)) for t in grid]
    assert fit.nll_after <= min(nll) and fit.nll_after < fit.nll_before
    scaled = scaled_probabilities(logits, fit.temperature)
    assert probability_metrics(scaled, labels)["nll"] == pytest.approx(fit.nll_after, abs=1e-9)


def test_temperature_of_an_average_fitted_on_log_probabilities():
    """An overconfident model average: its log-probabilities are its logits (up to a constant)."""
    logits, labels = synthetic_logits(t_true=0.5, n=5000)
    fit = fit_temperature(as_logits(logits.softmax(1)), labels)
    assert fit.temperature == pytest.approx(0.5, rel=0.08)
    direct = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(direct.temperature, rel=1e-5)


def test_temperature_kept_at_one_when_nll_does_not_decrease():
    logits = torch.zeros(20, 5, dtype=torch.float64)  # uniform at every T
    fit = fit_temperature(logits, random_labels(20, 5, seed=10))
    assert not fit.fitted and fit.temperature == 1.0
    assert fit.nll_after == fit.nll_before == pytest.approx(math.log(5))
    assert "did not decrease" in fit.reason


def test_temperature_without_held_out_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.val_size > 0"):
        fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))


def sample_logits(samples: int, n: int = 40, classes: int = 5) -> list[torch.Tensor]:
    """The logits of `samples` posterior samples: a shared signal plus per-sample noise."""
    base = random_logits(n, classes, seed=11)
    return [base + random_logits(n, classes, seed=100 + s) for s in range(samples)]


def test_average_of_one_sample_is_that_sample():
    logits, labels = sample_logits(1)[0], random_labels(40, 5, seed=12)
    average = ModelAverage(labels, num_classes=5)
    metrics = average.add_sample(logits.float())
    assert metrics == probability_metrics(logits.float().double().softmax(1), labels)
    assert metrics["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert metrics["acc"] == pytest.approx(
        100 * float((logits.argmax(1) == labels).double().mean())
    )


def test_curve_equals_metrics_recomputed_from_scratch():
    """Curve point n against the mean of the first n samples' softmax, formed anew."""
    logits, labels = sample_logits(5), random_labels(40, 5, seed=13)
    average = ModelAverage(labels, num_classes=5)
    for sample in logits:
        average.add_sample(sample)
    assert average.samples == len(average.curve) == 5
    for n in range(1, 6):
        mean_probs = torch.stack([s.softmax(1) for s in logits[:n]]).mean(0)
        expected = probability_metrics(mean_probs, labels)
        for key, value in expected.items():
            assert average.curve[n - 1][key] == pytest.approx(value, abs=1e-12), (n, key)
    torch.testing.assert_close(average.probabilities(), mean_probs, rtol=0, atol=1e-15)
    assert average.curve[-1]["nll"] < average.curve[0]["nll"]  # averaging helps here


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resumed_average_equals_uninterrupted():
    logits, labels = sample_logits(4), random_labels(40, 5, seed=14)
    whole = ModelAverage(labels, num_classes=5)
    for sample in logits:
        whole.add_sample(sample)
    first = ModelAverage(labels, num_classes=5)
    for sample in logits[:2]:
        first.add_sample(sample)
    resumed = ModelAverage(labels, num_classes=5)
    resumed.load_state_dict(round_trip(first.state_dict()))
    for sample in logits[2:]:
        resumed.add_sample(sample)
    assert torch.equal(resumed.prob_sum, whole.prob_sum)
    assert resumed.curve == whole.curve and resumed.samples == 4


def test_average_state_of_other_images_rejected():
    average = ModelAverage(random_labels(40, 5, seed=15), num_classes=5)
    average.add_sample(sample_logits(1)[0])
    other = ModelAverage(random_labels(40, 5, seed=16), num_classes=5)
    with pytest.raises(CheckpointError, match="other test images"):
        other.load_state_dict(round_trip(average.state_dict()))


def test_sharded_average_with_reduce_equals_the_whole():
    """Two ranks' shards: `reduce` adds the other shard's sums (an all-reduce in a real run)."""
    logits, labels = sample_logits(3), random_labels(40, 5, seed=17)
    whole = ModelAverage(labels, num_classes=5)
    shards = [ModelAverage(labels[:25], 5), ModelAverage(labels[25:], 5)]
    for sample in logits:
        expected = whole.add_sample(sample)
        shards[1].add_sample(sample[25:])
        other = shards[1].sums()
        got = shards[0].add_sample(sample[:25], reduce=lambda sums, other=other: sums + other)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key
