"""BN refresh (docs/protocol.md, BN refresh): exact sample-weighted batch statistics, exception safety."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from swa_repro.bn_refresh import refresh_bn

SIZES = (64, 64, 64, 17)  # a short last batch


def _batches(sizes=SIZES, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # different location/scale per batch so the weighting matters
    return [
        (2.0 + k) * torch.randn(b, channels, 6, 6, generator=gen) + 3.0 * k
        for k, b in enumerate(sizes)
    ]


def _model(seed=0):
    """BN first (its inputs are the raw batches), then conv and a BN with momentum 0.9."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 4, kernel_size=3, padding=1),
        nn.BatchNorm2d(4, momentum=0.9),
        nn.ReLU(),
    )
    with torch.no_grad():  # non-trivial affine parameters and stale statistics
        for bn in (model[0], model[2]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(0.01)
    return model


def _batch_stats(x):
    """Per-channel mean and unbiased variance over (N, H, W), in float64."""
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=True)


def _weighted(stats, weights):
    w = torch.tensor(weights, dtype=torch.float64)
    return (torch.stack(stats) * w[:, None]).sum(0) / w.sum()


def _second_bn_inputs(model, x):
    """Inputs of model[2] in train mode, computed by hand: BN with batch stats, then conv."""
    bn = model[0]
    xd = x.double()
    mean = xd.mean((0, 2, 3), keepdim=True)
    var = xd.var((0, 2, 3), unbiased=False, keepdim=True)
    y = (xd - mean) / torch.sqrt(var + bn.eps)
    y = y * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)
    conv = model[1]
    return torch.nn.functional.conv2d(y, conv.weight.double(), conv.bias.double(), padding=1)


def test_refresh_gives_sample_weighted_statistics():
    model = _model()
    batches = _batches()
    seen = refresh_bn(model, batches)
    assert seen == sum(SIZES) == 209

    stats = [_batch_stats(x) for x in batches]
    exp_mean = _weighted([s[0] for s in stats], SIZES)
    exp_var = _weighted([s[1] for s in stats], SIZES)
    torch.testing.assert_close(model[0].running_mean.double(), exp_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[0].running_var.double(), exp_var, rtol=1e-5, atol=1e-5)

    # the deeper BN (momentum 0.9 in normal use) gets the same exact weighting
    with torch.no_grad():
        stats2 = [_batch_stats(_second_bn_inputs(model, x)) for x in batches]
    torch.testing.assert_close(
        model[2].running_mean.double(),
        _weighted([s[0] for s in stats2], SIZES),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        model[2].running_var.double(),
        _weighted([s[1] for s in stats2], SIZES),
        rtol=1e-5,
        atol=1e-5,
    )
    # momenta are back
    assert model[0].momentum == 0.1
    assert model[2].momentum == 0.9


def test_refresh_does_not_depend_on_stale_statistics():
    a, b = _model(), _model()
    with torch.no_grad():
        b[0].running_mean.fill_(-100.0)
        b[0].running_var.fill_(1e4)
    refresh_bn(a, _batches())
    refresh_bn(b, _batches())
    torch.testing.assert_close(a[0].running_mean, b[0].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(a[0].running_var, b[0].running_var, rtol=0, atol=0)


def test_torch_update_bn_weights_batches_equally_and_differs():
    batches = _batches()
    ours, theirs = _model(), _model()
    refresh_bn(ours, batches)
    update_bn(batches, theirs)

    stats = [_batch_stats(x) for x in batches]
    equal_mean = _weighted([s[0] for s in stats], [1] * len(SIZES))
    equal_var = _weighted([s[1] for s in stats], [1] * len(SIZES))
    # torch's update_bn: each batch counts once, whatever its size
    torch.testing.assert_close(theirs[0].running_mean.double(), equal_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs[0].running_var.double(), equal_var, rtol=1e-5, atol=1e-5)
    # ... which is not the sample-weighted mean refresh_bn computes
    assert (ours[0].running_mean - theirs[0].running_mean).abs().max() > 0.1
    assert (ours[0].running_var - theirs[0].running_var).abs().max() > 0.1


def test_equal_batches_agree_with_torch_update_bn():
    batches = _batches(sizes=(32, 32, 32))
    ours, theirs = _model(), _model()
    refresh_bn(ours, batches)
    update_bn(batches, theirs)
    for i in (0, 2):
        torch.testing.assert_close(
            ours[i].running_mean, theirs[i].running_mean, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(ours[i].running_var, theirs[i].running_var, rtol=1e-5, atol=1e-5)


def test_refresh_accepts_a_generator_and_counts_images():
    model = _model()
    assert refresh_bn(model, (x for x in _batches(sizes=(5, 9)))) == 14


@pytest.mark.parametrize("start_training", [False, True])
def test_failing_forward_restores_momenta_and_mode(start_training):
    model = _model()
    model.train(start_training)
    good = _batches(sizes=(8, 8))
    bad = torch.randn(8, 5, 6, 6)  # wrong number of channels: the first BN raises
    calls = []

    def stream():
        for x in (*good, bad, good[0]):
            calls.append(x.shape[0])
            yield x

    with pytest.raises(RuntimeError):
        refresh_bn(model, stream())
    assert len(calls) == 3  # it did fail on the 3rd batch
    assert model[0].momentum == 0.1
    assert model[2].momentum == 0.9
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())


@pytest.mark.parametrize("start_training", [False, True])
def test_mode_restored_after_success(start_training):
    model = _model()
    model.train(start_training)
    refresh_bn(model, _batches())
    assert all(m.training is start_training for m in model.modules())


def test_cumulative_momentum_none_is_restored():
    model = _model()
    model[2].momentum = None
    refresh_bn(model, _batches())
    assert model[2].momentum is None
    assert model[0].momentum == 0.1


def test_model_without_bn_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, kernel_size=3), nn.ReLU()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert refresh_bn(model, _batches()) == 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not model.training
