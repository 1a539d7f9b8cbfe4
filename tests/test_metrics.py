"""evaluate() and the expected calibration error, against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swa_repro.metrics import evaluate, expected_calibration_error

W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0], [-1.5, 0.5, 1.0, 1.0]])
B = torch.tensor([0.1, -0.2, 0.3])


def _model():
    """Linear 4 -> 3 with known weights; the dropout makes a train-mode evaluation random."""
    linear = nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(W)
        linear.bias.copy_(B)
    return nn.Sequential(nn.Dropout(0.5), linear)


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(13, 4, generator=gen)
    y = torch.randint(0, 3, (13,), generator=gen)
    y[:3] = (x[:3].double() @ W.double().T + B.double()).argmax(1)  # at least a few right
    return x, y


def _batches(x, y, sizes=(6, 4, 3)):  # unequal batches: the mean is over samples
    out, start = [], 0
    for b in sizes:
        out.append((x[start : start + b], y[start : start + b]))
        start += b
    return out


def _hand_logits(x):
    return x.double() @ W.double().T + B.double()


@pytest.mark.parametrize("weight_decay", [0.0, 3e-4, 0.5])
def test_evaluate_against_hand_computation(weight_decay):
    x, y = _data()
    model = _model().train()
    metrics = evaluate(model, _batches(x, y), weight_decay)

    logits = _hand_logits(x)
    # log-softmax by hand
    log_probs = logits - torch.log(torch.exp(logits).sum(1, keepdim=True))
    nll = -log_probs[torch.arange(len(y)), y].mean().item()
    assert nll == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
    correct = sum(int(logits[i].argmax()) == int(y[i]) for i in range(len(y)))
    acc = 100.0 * correct / len(y)
    l2 = float((W.double() ** 2).sum() + (B.double() ** 2).sum())

    assert 0 < correct < len(y)
    assert metrics["nll"] == pytest.approx(nll, rel=1e-6)
    assert metrics["acc"] == pytest.approx(acc, abs=1e-9)
    assert metrics["err"] == pytest.approx(100.0 - acc, abs=1e-9)
    assert metrics["loss"] == pytest.approx(nll + 0.5 * weight_decay * l2, rel=1e-6)
    if weight_decay == 0:
        assert metrics["loss"] == metrics["nll"]

    probs = torch.softmax(logits, 1)
    conf, pred = probs.max(1)
    assert metrics["ece"] == pytest.approx(_hand_ece(conf.tolist(), (pred == y).tolist()), abs=1e-6)
    # mode restored
    assert model.training and all(m.training for m in model.modules())


def test_evaluate_restores_eval_mode():
    x, y = _data()
    model = _model().eval()
    first = evaluate(model, _batches(x, y))
    assert not model.training
    again = evaluate(model, _batches(x, y, sizes=(13,)))  # batching does not matter
    assert first["nll"] == pytest.approx(again["nll"], rel=1e-6)
    assert first["acc"] == again["acc"]


def test_evaluate_restores_mode_when_forward_raises():
    model = _model().train()
    with pytest.raises(RuntimeError):
        evaluate(model, [(torch.randn(2, 5), torch.tensor([0, 1]))])  # wrong input width
    assert model.training


def _hand_ece(confs, hits, bins=15):
    """Bins (k/15, (k+1)/15], counted by a plain loop."""
    total, n = 0.0, len(confs)
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        members = [i for i, c in enumerate(confs) if lo < c <= hi or (k == 0 and c == 0)]
        if members:
            acc = sum(hits[i] for i in members) / len(members)
            conf = sum(confs[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


def test_ece_hand_example_with_edge_and_one():
    confs = [1.0, 0.95, 0.2, 0.21, 0.54, 0.56, 0.3]
    hits = [0, 1, 0, 1, 1, 0, 1]
    # bins of width 1/15 = 0.0667, bin k = (k/15, (k+1)/15]:
    #   bin 14 (0.933, 1]:  1.0 (miss), 0.95 (hit) -> |0.5 - 0.975| = 0.475, 2 samples
    #   bin 2 (0.133, 0.2]: 0.2 exactly on the edge 3/15 goes here (miss) -> 0.2
    #   bin 3 (0.2, 0.267]: 0.21 (hit) -> 0.79
    #   bin 8 (0.533, 0.6]: 0.54 (hit), 0.56 (miss) -> |0.5 - 0.55| = 0.05, 2 samples
    #   bin 4 (0.267, 0.333]: 0.3 (hit) -> 0.7
    expected = (2 * 0.475 + 0.2 + 0.79 + 2 * 0.05 + 0.7) / 7
    assert expected == pytest.approx(_hand_ece(confs, hits), abs=1e-12)
    got = expected_calibration_error(
        torch.tensor(confs, dtype=torch.float64), torch.tensor(hits, dtype=torch.bool)
    )
    assert got == pytest.approx(expected, abs=1e-9)
    # if the edge went to the upper bin, bin 3 would be {0.2 miss, 0.21 hit}: a different value
    upper = (2 * 0.475 + 2 * abs(0.5 - 0.205) + 2 * 0.05 + 0.7) / 7
    assert not math.isclose(got, upper, abs_tol=1e-6)


def test_ece_second_edge():
    # 0.4 = 6/15 is an edge: it belongs to bin 5 (1/3, 0.4], not with 0.41 in bin 6
    got = expected_calibration_error(
        torch.tensor([0.4, 0.41], dtype=torch.float64), torch.tensor([False, True])
    )
    assert got == pytest.approx((0.4 + 0.59) / 2, abs=1e-9)


def test_ece_perfect_calibration_is_zero_and_accepts_float32():
    confs = torch.tensor([0.75, 0.75, 0.75, 0.75])
    hits = torch.tensor([True, True, True, False])
    assert expected_calibration_error(confs, hits) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(
        torch.ones(3), torch.tensor([True, True, True])
    ) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(
        torch.ones(4), torch.tensor([True, False, False, False])
    ) == pytest.approx(0.75)
