"""Fast paths (swa_repro.fast, conf/speed/) against the faithful default, and the multi-point
evaluation (RunContext.evaluate_many) against the per-point one.

Tolerances on the logits of a fixed batch, relative to the largest logit magnitude:
fp32 paths (channels_last, tf32 on CPU, larger eval batch) 1e-5, torch.compile 1e-4 (other
kernels, other summation order), bf16 autocast 3e-2 with the same argmax on >= 90% of samples.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.utils import parameters_to_vector

from conftest import tiny
from swa_repro.analysis.points import METRICS, RunContext
from swa_repro.averaging import make_averaged_model
from swa_repro.bn_refresh import refresh_bn
from swa_repro.checkpoint import load_checkpoint
from swa_repro.compose import CONF_DIR, compose_config
from swa_repro.config_check import ConfigError
from swa_repro.data import Normalizer, TrainStream, eval_batches
from swa_repro.data.synthetic import make_synthetic
from swa_repro.fast import Speed, flat_parameters
from swa_repro.layout import RunPaths
from swa_repro.metrics import evaluate
from swa_repro.models import build_model
from swa_repro.train import train

FP32_TOL = 1e-5
COMPILE_TOL = 1e-4
BF16_TOL = 3e-2
BF16_ARGMAX_AGREEMENT = 0.9
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    """A small_cnn after a few SGD steps and a BN refresh, synthetic data, a fixed batch."""
    torch.manual_seed(0)
    data = make_synthetic(10, 384, 128, seed=0)
    normalize = Normalizer([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010], CPU)
    stream = TrainStream(data.train_x, data.train_y, 64, normalize, seed=0)
    model = build_model("small_cnn", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in stream.batches("train", 0):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    refresh_bn(model, stream.inputs("bn_refresh", 0))
    model.eval()
    batch = normalize(data.test_x[:64])
    return data, normalize, stream, model, batch


def logits_of(model, batch, speed=None):
    with torch.no_grad(), (speed or Speed()).autocast(CPU):
        return model(batch).float()


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def prepared(model, speed):
    return speed.prepare(copy.deepcopy(model)).eval()


def test_speed_groups_and_validation():
    faithful = Speed.from_cfg(OmegaConf.load(f"{CONF_DIR}/speed/faithful.yaml"))
    assert faithful == Speed()
    fast = Speed.from_cfg(OmegaConf.load(f"{CONF_DIR}/speed/fast.yaml"))
    assert fast.channels_last and fast.bf16 and fast.tf32 and fast.compile
    assert fast.eval_batch_size > 128 and fast.bn_refresh_batch_size > 128
    assert Speed.from_cfg(None) == Speed()
    for bad in ({"bf16": "yes"}, {"eval_batch_size": 0}, {"turbo": True}):
        with pytest.raises(ConfigError):
            Speed.from_cfg(OmegaConf.create(bad))
    cfg = compose_config()
    assert Speed.from_cfg(cfg.speed) == Speed()  # the default is faithful
    assert "tf32" not in cfg  # moved to speed.tf32


def test_channels_last_same_logits(setup):
    *_, model, batch = setup
    speed = Speed(channels_last=True)
    fast = prepared(model, speed)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(logits_of(fast, batch), logits_of(model, batch)) < FP32_TOL
    # checkpoints keep the usual layout, also for the averaged copy
    state = fast.state_dict()
    assert all(t.is_contiguous() for t in state.values())
    assert set(state) == set(model.state_dict())
    swa = make_averaged_model(fast)
    swa.update_parameters(fast)
    assert all(t.is_contiguous() for t in swa.state_dict().values())
    assert torch.equal(flat_parameters(fast), parameters_to_vector(model.parameters()))


def test_tf32_switch_same_logits(setup):
    *_, model, batch = setup
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        Speed(tf32=True).set_backends()  # no effect on CPU; must not break anything
        assert torch.backends.cudnn.allow_tf32
        assert rel_err(logits_of(model, batch), logits_of(model, batch)) < FP32_TOL
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    Speed().set_backends()
    assert not torch.backends.cudnn.allow_tf32


def test_bf16_close_logits(setup):
    *_, model, batch = setup
    speed = Speed(bf16=True, channels_last=True)
    fast = prepared(model, speed)
    ref, got = logits_of(model, batch), logits_of(fast, batch, speed)
    assert rel_err(got, ref) < BF16_TOL
    agreement = (got.argmax(1) == ref.argmax(1)).float().mean()
    assert agreement >= BF16_ARGMAX_AGREEMENT


def test_bf16_batchnorm_runs_in_fp32(setup, monkeypatch):
    *_, model, batch = setup
    speed = Speed(bf16=True)
    fast = prepared(model, speed).train()
    seen = []
    real_bn = F.batch_norm

    def spy(x, *args, **kwargs):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return real_bn(x, *args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", spy)
    conv_out = []
    fast.layer1.conv1.register_forward_hook(lambda m, i, o: conv_out.append(o.dtype))
    with speed.autocast(CPU):
        loss = F.cross_entropy(fast(batch), torch.zeros(len(batch), dtype=torch.long))
    loss.backward()
    assert len(seen) == 7  # every BN layer of small_cnn
    assert all(dtype == torch.float32 and not autocast for dtype, autocast in seen)
    assert conv_out == [torch.bfloat16]  # autocast is on around the BN layers
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in fast.parameters()
    )
    assert all(b.dtype in (torch.float32, torch.int64) for b in fast.buffers())


def test_compile_same_logits(setup):
    *_, model, batch = setup
    fast = prepared(model, Speed(compile=True))
    compiled = Speed(compile=True).compiled(fast)
    assert rel_err(logits_of(compiled, batch), logits_of(model, batch)) < COMPILE_TOL
    assert set(fast.state_dict()) == set(model.state_dict())  # no _orig_mod. prefix


def test_larger_eval_batch_same_metrics(setup):
    data, normalize, _, model, _ = setup
    small = evaluate(model, eval_batches(data.test_x, data.test_y, 16, normalize))
    large = evaluate(model, eval_batches(data.test_x, data.test_y, 1024, normalize))
    assert small["acc"] == large["acc"]
    assert small["nll"] == pytest.approx(large["nll"], rel=FP32_TOL)


@pytest.fixture(scope="module")
def context(setup):
    data, normalize, stream, model, _ = setup
    cfg = OmegaConf.create({"optim": {"weight_decay": 5e-4, "batch_size": 64}})
    ctx = RunContext(cfg, copy.deepcopy(model), data, stream, normalize, 50, seed=0)
    gen = torch.Generator().manual_seed(1)
    base = parameters_to_vector(model.parameters()).detach()
    vectors = torch.stack([base + 0.05 * torch.randn(base.shape, generator=gen) for _ in range(3)])
    return ctx, vectors


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_evaluate_many_equals_per_point(context, mode):
    ctx, vectors = context
    per_point = [ctx.evaluate(v) for v in vectors]
    together = ctx.evaluate_many(vectors, mode=mode)
    assert len(together) == len(vectors)
    for one, many in zip(per_point, together, strict=True):
        assert set(many) == set(METRICS)
        for key in METRICS:
            if key.endswith("_err"):
                assert many[key] == pytest.approx(one[key], abs=1e-9), key
            else:
                assert many[key] == pytest.approx(one[key], rel=FP32_TOL), key


def test_evaluate_many_one_pass_over_the_data(context, monkeypatch):
    """Each stream is drawn once for all points (not once per point)."""
    ctx, vectors = context
    calls = []
    real = TrainStream.batches

    def counting(self, purpose, epoch, **kwargs):
        calls.append(purpose)
        return real(self, purpose, epoch, **kwargs)

    monkeypatch.setattr(TrainStream, "batches", counting)
    ctx.evaluate_many(vectors, mode="loop")
    assert sorted(calls) == ["analysis_bn", "analysis_train"]


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_evaluate_many_with_fast_paths(context, mode):
    ctx, vectors = context
    faithful = ctx.evaluate_many(vectors[:2], mode=mode)
    speed = Speed(bf16=True, channels_last=True)
    fast = ctx.evaluate_many(vectors[:2], mode=mode, bn_batch_size=128, speed=speed)
    for a, b in zip(faithful, fast, strict=True):
        assert b["test_nll"] == pytest.approx(a["test_nll"], rel=BF16_TOL)
        assert b["train_nll"] == pytest.approx(a["train_nll"], rel=BF16_TOL)


def _tiny_cfg(*overrides):
    return compose_config(tiny("epochs=2", "method.swa_start=1", *overrides))


def test_train_with_fast_paths(tmp_path):
    """A run with every fast path but compile (see the slow test) trains and checkpoints as usual
    (bf16 on a CPU is slow: half the images, one EMA)."""
    cfg = _tiny_cfg(
        "speed=fast", "speed.compile=false", "speed.bn_refresh_batch_size=128",
        "data.train_size=128", "ema.decays=[0.99]",
    )  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    assert 0 <= summary["final"]["swa"]["acc"] <= 100
    state = load_checkpoint(RunPaths(tmp_path / "run").last)
    assert set(state["model"]) == set(build_model("small_cnn", 10).state_dict())
    assert all(t.is_contiguous() for t in state["model"].values())
    assert OmegaConf.load(tmp_path / "run/config.yaml").speed.bf16 is True


@pytest.mark.slow
def test_train_with_compile(tmp_path):
    """torch.compile in the training loop (about a minute of compiling on CPU)."""
    cfg = _tiny_cfg("speed.compile=true", "epochs=1", "method=sgd")
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    state = load_checkpoint(RunPaths(tmp_path / "run").last)
    assert set(state["model"]) == set(build_model("small_cnn", 10).state_dict())
