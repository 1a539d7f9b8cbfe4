"""Model zoo tests: the paper models must match the SWA authors' code parameter for parameter."""

import functools
import math

import pytest
import torch
from torch import nn

from swa_repro.models import MODEL_NAMES, build_model, count_parameters, has_batchnorm

# Counts of timgaripov/swa's models, for 10 and 100 classes.
PAPER_PARAM_COUNTS = {
    "vgg16": {10: 15_245_130, 100: 15_291_300},
    "vgg16bn": {10: 15_253_578, 100: 15_299_748},
    "preresnet110": {10: 1_146_842, 100: 1_169_972},
    "preresnet164": {10: 1_703_258, 100: 1_726_388},
    "wrn28x10": {10: 36_489_290, 100: 36_546_980},
}
PAPER_CASES = [(name, c) for name in PAPER_PARAM_COUNTS for c in (10, 100)]


@functools.cache
def _model(name: str, num_classes: int) -> nn.Module:
    """Cache builds: WRN-28-10 alone has 36M parameters to initialise."""
    torch.manual_seed(0)
    return build_model(name, num_classes)


@pytest.mark.parametrize(("name", "num_classes"), PAPER_CASES)
def test_paper_model_parameter_count(name, num_classes):
    assert count_parameters(_model(name, num_classes)) == PAPER_PARAM_COUNTS[name][num_classes]


@pytest.mark.parametrize(("name", "num_classes"), PAPER_CASES)
def test_paper_model_forward_shape(name, num_classes):
    model = _model(name, num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)


TABLE2_MODELS = ["densenet161", "resnet152", "resnet50"]


def test_model_names_sorted_and_complete():
    extra = ["small_cnn", "small_cnn_nobn", *TABLE2_MODELS]
    assert MODEL_NAMES == tuple(sorted(list(PAPER_PARAM_COUNTS) + extra))


@pytest.mark.parametrize("name", TABLE2_MODELS)
def test_torchvision_models_match_their_pretrained_weights(name):
    """Table 2's models are torchvision's, with the parameter count of their V1 weights."""
    import torchvision

    weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
    assert count_parameters(_model(name, 1000)) == weights.meta["num_params"]
    assert (
        count_parameters(_model(name, 10)) < weights.meta["num_params"]
    )  # the head follows classes


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        build_model("foo", 10)
    msg = str(excinfo.value)
    assert "'foo'" in msg
    assert (
        "preresnet110, preresnet164, resnet152, resnet50, small_cnn, small_cnn_nobn, vgg16" in msg
    )


@pytest.mark.parametrize("num_classes", [0, -1])
def test_bad_num_classes_rejected(num_classes):
    with pytest.raises(ValueError):
        build_model("small_cnn", num_classes)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_has_batchnorm(name):
    assert has_batchnorm(_model(name, 10)) == (name not in ("vgg16", "small_cnn_nobn"))


@pytest.mark.parametrize("name", ["vgg16", "vgg16bn"])
def test_vgg_conv_init(name):
    convs = [m for m in _model(name, 10).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0
    big = convs[-1]  # 512x512x3x3: 2.4M samples, so the empirical std is tight
    expected = math.sqrt(2.0 / (9 * big.out_channels))
    assert big.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(big.weight.mean().item()) < 0.05 * expected


@pytest.mark.parametrize(("name", "blocks"), [("preresnet110", 12), ("preresnet164", 18)])
def test_preresnet_structure(name, blocks):
    model = _model(name, 10)
    assert model.conv1.bias is None
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == blocks
        for i, block in enumerate(stage):
            if i == 0:
                (proj,) = block.downsample
                assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1)
                assert proj.bias is None
            else:
                assert block.downsample is None
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].downsample[0].stride == (2, 2)


def test_preresnet_shortcut_uses_raw_input():
    """The projection must see x itself, not BN-ReLU(x): zeroing the main path leaves proj(x)."""
    block = _model("preresnet110", 10).layer2[0]
    x = torch.randn(2, 64, 32, 32)
    saved = block.conv3.weight.detach().clone()
    try:
        with torch.no_grad():
            block.conv3.weight.zero_()
            torch.testing.assert_close(block(x), block.downsample(x))
    finally:
        with torch.no_grad():
            block.conv3.weight.copy_(saved)


def test_wrn_structure():
    model = _model("wrn28x10", 10)
    assert model.conv1.bias is not None
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [4, 4, 4]
    for stage in (model.layer2, model.layer3):
        first = stage[0]
        assert first.conv1.stride == (1, 1)
        assert first.conv2.stride == (2, 2)
        (proj,) = first.shortcut
        assert proj.stride == (2, 2) and proj.bias is not None
    assert len(model.layer1[1].shortcut) == 0  # identity
    assert model.bn1.momentum == 0.9
    assert model.bn1.num_features == 640
    assert model.linear.in_features == 640


@pytest.mark.parametrize("name", ["wrn28x10", "vgg16bn"])
def test_default_init_bn_weights_are_uniform_as_in_the_authors_pytorch(name):
    """The authors' WRN / VGG16BN keep PyTorch's default init; theirs (0.3/0.4) drew BN weights
    from U(0, 1); today's default is 1."""
    bns = [m for m in _model(name, 10).modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    assert weights.min() >= 0 and weights.max() < 1
    assert abs(weights.mean().item() - 0.5) < 0.02 and abs(weights.var().item() - 1 / 12) < 0.005
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    ones = build_model("vgg16bn", 10, bn_weight_init="ones")
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight))
        for m in ones.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


def test_preresnet_bn_weights_are_one_and_take_no_bn_init_option():
    model = _model("preresnet164", 10)
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    with pytest.raises(ValueError, match="bn_weight_init applies to vgg16bn, wrn28x10 only"):
        build_model("preresnet164", 10, bn_weight_init="uniform")
    with pytest.raises(ValueError, match="must be one of uniform, ones"):
        build_model("wrn28x10", 10, bn_weight_init="normal")


def test_small_cnn_trains_on_cpu():
    model = build_model("small_cnn", 10)
    assert count_parameters(model) < 100_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    out = model(torch.randn(8, 3, 32, 32))
    assert out.shape == (8, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


class OwnNet(nn.Module):
    """A network of the user's own, built through model._target_ (docs/config.md)."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_a_network_of_ones_own_trains_through_its_target(tmp_path):
    from swa_repro.compose import compose_config
    from swa_repro.config_check import validate_config
    from swa_repro.train import train

    overrides = [
        "model=custom", f"model._target_={__name__}.OwnNet", "model.name=ownnet",
        "+model.width=4", "data.train_size=128", "data.test_size=32", "epochs=2", "budget=2",
        "method.swa_start=2", "progress=false",
    ]  # fmt: skip
    cfg = compose_config(overrides)
    validate_config(cfg)
    summary = train(cfg, tmp_path)
    assert summary["model"] == "ownnet" and summary["final"]["swa"]["n_averaged"] == 1
    from swa_repro.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["model"]["conv.weight"].shape == (4, 3, 3, 3)
