"""SWA averaging (docs/protocol.md, Averaging): which epochs are collected, and the equal-weight mean."""

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from swa_repro.averaging import is_averaging_epoch, make_averaged_model
from swa_repro.models import build_model


def _collected(total_epochs, swa_start, swa_c_epochs):
    return sum(is_averaging_epoch(e, swa_start, swa_c_epochs) for e in range(total_epochs))


@pytest.mark.parametrize(
    ("swa_start", "total_epochs", "expected"),
    [(161, 200, 40), (161, 250, 90), (161, 300, 140), (126, 150, 25), (126, 225, 100)],
)
def test_number_of_collected_models_matches_protocol(swa_start, total_epochs, expected):
    assert _collected(total_epochs, swa_start, 1) == expected
    # swa_start given as a real number (as it is in the configs) changes nothing
    assert _collected(total_epochs, float(swa_start), 1) == expected


@pytest.mark.parametrize(
    ("swa_start", "total_epochs", "expected"),
    # collected after epochs done = swa_start, swa_start + 2, ... <= total
    [(161, 200, 20), (161, 250, 45), (161, 300, 70), (126, 150, 13), (126, 225, 50)],
)
def test_number_of_collected_models_every_second_epoch(swa_start, total_epochs, expected):
    assert _collected(total_epochs, swa_start, 2) == expected


def test_first_collection_is_after_epoch_swa_start():
    # 0-based epoch e completes e + 1 epochs; collection starts once swa_start epochs are done
    assert not is_averaging_epoch(159, 161, 1)
    assert is_averaging_epoch(160, 161, 1)
    assert is_averaging_epoch(161, 161, 1)
    assert not is_averaging_epoch(124, 126, 1)
    assert is_averaging_epoch(125, 126, 1)
    # every second epoch
    assert is_averaging_epoch(160, 161, 2)
    assert not is_averaging_epoch(161, 161, 2)
    assert is_averaging_epoch(162, 161, 2)
    collected = [e for e in range(170) if is_averaging_epoch(e, 161, 2)]
    assert collected == [160, 162, 164, 166, 168]


def _perturb(model, gen, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, _BatchNorm):  # training would move these too
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.mul_(1.5)


def _snapshot(model):
    return {name: p.detach().double().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("n_snapshots", [1, 2, 5])
def test_averaged_parameters_are_the_plain_mean_of_snapshots(n_snapshots):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_model("small_cnn", 10)
    swa = make_averaged_model(model)
    buffers_at_construction = {k: v.clone() for k, v in swa.module.named_buffers()}
    initial = _snapshot(model)

    snapshots, buffer_snapshots = [], []
    for _ in range(n_snapshots):
        _perturb(model, gen)  # "a few SGD epochs later"
        snapshots.append(_snapshot(model))
        buffer_snapshots.append({k: v.double().clone() for k, v in model.named_buffers()})
        before = _snapshot(model)
        swa.update_parameters(model)
        after = _snapshot(model)
        for name in before:  # the average never feeds back into the trained model
            assert torch.equal(before[name], after[name]), name

    assert int(swa.n_averaged) == n_snapshots
    averaged = dict(swa.module.named_parameters())
    assert set(averaged) == set(initial)
    for name in initial:
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        got = averaged[name].detach().double()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
        # the pre-SWA point (the weights at construction) is not part of the average
        if n_snapshots == 1:
            assert not torch.allclose(got, initial[name]), name

    # BN buffers are not averaged. torch's AveragedModel(use_buffers=False) keeps them in
    # sync with the source model (a copy of the latest SGD buffers; the authors' code left
    # them untouched instead): either way they are recomputed by the BN refresh.
    model_buffers = dict(model.named_buffers())
    for name, value in swa.module.named_buffers():
        if not name.endswith(("running_mean", "running_var")):
            continue
        assert not torch.equal(value, buffers_at_construction[name]), name
        torch.testing.assert_close(value, model_buffers[name], rtol=0, atol=0, msg=name)
        if n_snapshots > 1:
            assert not torch.allclose(
                value.double(), torch.stack([s[name] for s in buffer_snapshots]).mean(0), atol=1e-3
            ), name


def test_averaged_model_is_a_separate_copy():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    swa = make_averaged_model(model)
    swa_params = set(map(id, swa.module.parameters()))
    assert not swa_params & set(map(id, model.parameters()))
    assert int(swa.n_averaged) == 0
    # averaging along the SWA epochs of a short simulated run
    gen = torch.Generator().manual_seed(3)
    snapshots = []
    for epoch in range(12):
        _perturb(model, gen, scale=0.05)
        if is_averaging_epoch(epoch, 8, 2):  # after 8 and 10 and 12 epochs done
            snapshots.append(_snapshot(model))
            swa.update_parameters(model)
    assert int(swa.n_averaged) == len(snapshots) == 3
    for name, p in swa.module.named_parameters():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6)
