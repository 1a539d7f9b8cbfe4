"""The connections between the pieces, against independent computations: the LR every optimiser
step used, the SWA model's BN statistics after the loop's refresh, the speed settings reaching
training, an analysis point against a model built by hand, the experiment configs' speed
settings, and the published numbers the tables compare with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import DictConfig
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim.optimizer import register_optimizer_step_pre_hook

import swa_repro.build
from conftest import TINY_DATA, computed_once, tiny
from swa_repro.analysis.points import load_context, stored_weights
from swa_repro.checkpoint import load_checkpoint
from swa_repro.compose import CONF_DIR, compose_config
from swa_repro.data import open_data
from swa_repro.fast import Speed
from swa_repro.layout import RunPaths
from swa_repro.models import instantiate_model
from swa_repro.train import train

TINY = tiny("data.test_size=64", "eval_batch_size=32", "device=cpu", base=TINY_DATA)


# A 6-epoch SWA run (4 steps per epoch), averaging from epoch 5 (paper schedule: T = 5).
SWA_RUN = [*TINY, "epochs=6", "budget=4", "method.swa_start=5", "method.swa_lr=0.05",
           "optim.lr_init=0.1", "checkpoint.keep_epochs=[]"]  # fmt: skip


def tiny_swa(run_dir: Path, *extra: str):
    cfg = compose_config([*SWA_RUN, *extra])
    return cfg, train(cfg, run_dir)


# --- the learning rate each step used ---------------------------------------------------------


def recorded_step_lrs():
    """Every SGD step's LR, read from the optimiser as the step runs (a global step hook)."""
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"])
    )
    return lrs, handle


@pytest.fixture(scope="session")
def swa_run(shared_dir) -> tuple[DictConfig, Path, list[float]]:
    """tiny_swa, trained once: its config, directory and the LR of every SGD step as it ran."""

    def trained(folder: Path) -> None:
        lrs, handle = recorded_step_lrs()
        try:
            tiny_swa(folder / "run")
        finally:
            handle.remove()
        (folder / "step_lrs.json").write_text(json.dumps(lrs))

    folder = computed_once(shared_dir, "wiring_tiny_swa", trained)
    lrs = json.loads((folder / "step_lrs.json").read_text())
    return compose_config(SWA_RUN), folder / "run", lrs


def test_every_step_uses_the_paper_schedule(swa_run):
    """The authors' schedule, written out: T = swa_start = 5, lr 0.1 to swa_lr 0.05; t = e / T;
    factor 1 for t <= 0.5, 1 - (1 - r)(t - 0.5)/0.4 up to t = 0.9, then r = 0.5."""
    _, _, lrs = swa_run
    per_epoch = [0.1, 0.1, 0.1, 0.1 * (1 - 0.5 * 0.1 / 0.4), 0.1 * (1 - 0.5 * 0.3 / 0.4), 0.05]
    assert lrs == pytest.approx([lr for lr in per_epoch for _ in range(4)], rel=1e-12)


def test_every_step_uses_the_cyclic_schedule(tmp_path):
    """Per iteration i = 1, 2, ... with a one-epoch cycle of c = 4 steps:
    lr = (1 - t) a1 + t a2, t = ((i - 1) mod c + 1) / c."""
    lrs, handle = recorded_step_lrs()
    try:
        overrides = ["schedule=cyclic", "schedule.a1=0.1", "schedule.a2=0.01",
                     "method.swa_start=1", "method.swa_c_epochs=1"]  # fmt: skip
        cfg = compose_config([*TINY, "epochs=2", "budget=2", *overrides])
        train(cfg, tmp_path / "run")
    finally:
        handle.remove()
    cycle = [(1 - t) * 0.1 + t * 0.01 for t in (0.25, 0.5, 0.75, 1.0)]
    assert lrs == pytest.approx(cycle * 2, rel=1e-12)


# --- BatchNorm statistics of the averaged weights ---------------------------------------------


def batch_statistics(model: torch.nn.Module, inputs) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per BN layer, the sample-weighted mean over batches of the batch mean and of the unbiased
    batch variance of its input, in a train-mode pass (how the authors' bn_update ends up)."""
    sums: dict[str, list] = {}

    def hook(name):
        def record(module, args):
            x = args[0].double()
            dims = [d for d in range(x.dim()) if d != 1]
            n = x.numel() // x.shape[1]
            mean, var = x.mean(dims), x.var(dims, unbiased=True)
            b = x.shape[0]
            prev = sums.get(name, [0, 0.0, 0.0])
            sums[name] = [prev[0] + b, prev[1] + b * mean, prev[2] + b * var]
            assert n > 1

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, _BatchNorm)]  # fmt: skip
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    for handle in handles:
        handle.remove()
    return {name: (s[1] / s[0], s[2] / s[0]) for name, s in sums.items()}


def test_swa_bn_statistics_after_the_loop_refresh_equal_a_direct_computation(swa_run):
    """After the last epoch's evaluation, the SWA model's BN buffers hold the statistics of ITS
    weights over the whole augmented refresh stream of that epoch."""
    cfg, run_dir, _ = swa_run
    state = load_checkpoint(RunPaths(run_dir).last)
    swa = stored_weights(state, "swa")
    model = instantiate_model(cfg.model)
    model.load_state_dict(swa)
    data = open_data(cfg, torch.device("cpu"))
    images = data.train_stream(cfg.optim.batch_size).inputs("bn_refresh", cfg.epochs - 1)
    expected = batch_statistics(model, images)
    assert expected
    for name, (mean, var) in expected.items():
        torch.testing.assert_close(swa[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(swa[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-6)


# --- the speed settings reach training --------------------------------------------------------


def test_training_honours_every_speed_setting(tmp_path, monkeypatch):
    """bf16 autocast and channels_last in every training forward, the evaluation and BN-refresh
    batch sizes, TF32 flags, torch.compile of the step model."""
    seen: list[tuple[bool, bool, bool, int]] = []
    compiled = []

    def build(*args, **kwargs):
        model = instantiate_model(*args, **kwargs)

        def record(module, inputs):
            x = inputs[0]
            channels_last = x.is_contiguous(memory_format=torch.channels_last)
            autocast = torch.is_autocast_enabled("cpu")
            seen.append((module.training, autocast, channels_last, x.shape[0]))

        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_pre_hook(record)  # after speed.prepare's input conversion
        return model

    monkeypatch.setattr(swa_repro.build, "instantiate_model", build)
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    speed = ["speed.bf16=true", "speed.channels_last=true", "speed.tf32=true",
             "speed.compile=true", "speed.eval_batch_size=16", "speed.bn_refresh_batch_size=128"]  # fmt: skip
    # bf16 on a CPU is slow: half the images (2 steps an epoch), one EMA
    tiny_swa(tmp_path / "run", *speed, "data.train_size=128", "ema.decays=[0.99]")
    assert len(compiled) == 1 and torch.backends.cudnn.allow_tf32
    assert all(autocast and channels_last for _, autocast, channels_last, _ in seen)
    train_batches = {b for training, *_, b in seen if training}
    eval_batches = {b for training, *_, b in seen if not training}
    assert eval_batches == {16}  # the test passes
    assert train_batches == {64, 128}  # SGD steps at optim.batch_size, refreshes at 128
    Speed().set_backends()


def test_every_experiment_config_is_faithful():
    """The paper's experiment configs train in true fp32 with the authors' batches: no speed
    switch on, whatever conf/speed/fast.yaml holds."""
    experiments = sorted(Path(CONF_DIR, "experiment").rglob("*.yaml"))
    assert len(experiments) >= 20
    for path in experiments:
        name = path.relative_to(Path(CONF_DIR, "experiment")).with_suffix("")
        cfg = compose_config([f"experiment={name}"])
        assert Speed.from_cfg(cfg.speed) == Speed(), name
        assert not any(cfg.speed.values()), name


# --- an analysis point against a hand-built model ---------------------------------------------


def test_an_analysis_point_equals_a_hand_built_evaluation(swa_run):
    """RunContext.evaluate(w): BN statistics of w over the analysis refresh stream, then the
    train loss WITH the L2 term and the test NLL, all recomputed here by hand."""
    cfg, run_dir, _ = swa_run
    ctx = load_context(run_dir, device="cpu", seed=3)
    vector = parameters_to_vector(stored_weights(load_checkpoint(RunPaths(run_dir).last),
                                                 "swa")[n] for n, _ in ctx.model.named_parameters())  # fmt: skip
    got = ctx.evaluate(vector)

    model = instantiate_model(cfg.model)
    vector_to_parameters(vector, model.parameters())
    stats = batch_statistics(model, ctx.stream.inputs("analysis_bn", 3))
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.copy_(stats[name][0]), module.running_var.copy_(stats[name][1])
    model.eval()
    with torch.no_grad():
        train = [(F.cross_entropy(model(x), y, reduction="sum"), len(y))
                 for x, y in ctx.stream.batches("analysis_train", 3)]  # fmt: skip
        nll = float(sum(s for s, _ in train)) / sum(n for _, n in train)
        l2 = float(sum((p.double() ** 2).sum() for p in model.parameters()))
        test_x = ctx.normalize(ctx.data.test_x)
        test_nll = float(F.cross_entropy(model(test_x), ctx.data.test_y))
    assert got["train_nll"] == pytest.approx(nll, rel=1e-5)
    assert got["train_loss"] == pytest.approx(nll + 0.5 * cfg.optim.weight_decay * l2, rel=1e-5)
    assert got["train_loss"] - got["train_nll"] > 1e-3  # the L2 term is really there
    assert got["test_nll"] == pytest.approx(test_nll, rel=1e-5)


# --- the published numbers --------------------------------------------------------------------

# Table 1 of Izmailov et al. (2018), test accuracy % [mean, std]: SGD, SWA 1, 1.25, 1.5 budgets.
TABLE1 = {
    "cifar100": {
        "vgg16": [(72.55, 0.10), (73.91, 0.12), (74.17, 0.15), (74.27, 0.25)],
        "preresnet110": [(76.77, 0.38), (78.75, 0.16), (78.91, 0.29), (79.10, 0.21)],
        "preresnet164": [(78.49, 0.36), (79.77, 0.17), (80.18, 0.23), (80.35, 0.16)],
        "wrn28x10": [(80.82, 0.23), (81.46, 0.23), (81.91, 0.27), (82.15, 0.27)],
    },
    "cifar10": {
        "vgg16": [(93.25, 0.16), (93.59, 0.16), (93.70, 0.22), (93.64, 0.18)],
        "preresnet110": [(95.03, 0.05), (95.51, 0.10), (95.65, 0.03), (95.82, 0.03)],
        "preresnet164": [(95.28, 0.10), (95.56, 0.11), (95.77, 0.04), (95.83, 0.03)],
        "wrn28x10": [(96.18, 0.11), (96.45, 0.11), (96.64, 0.08), (96.79, 0.05)],
    },
}
# Table 2, ImageNet top-1 %: SGD (torchvision's pretrained), SWA after 5 and 10 epochs.
TABLE2 = {
    "resnet50": [(76.15, None), (76.83, 0.01), (76.97, 0.05)],
    "resnet152": [(78.31, None), (78.82, 0.01), (78.94, 0.07)],
    "densenet161": [(77.65, None), (78.26, 0.09), (78.44, 0.06)],
}


def test_the_paper_results_file_holds_the_published_numbers():
    paper = yaml.safe_load(
        Path(CONF_DIR).parent.joinpath("experiments/paper_results.yaml").read_text()
    )
    for data, models in TABLE1.items():
        for model, values in models.items():
            row = paper["table1"][data][model]
            keys = ("sgd", "swa_1", "swa_1.25", "swa_1.5")
            assert [tuple(row[k]) for k in keys] == values, (data, model)
    for model, values in TABLE2.items():
        row = paper["table2"]["imagenet"][model]
        assert [tuple(row[k]) for k in ("sgd", "swa_5", "swa_10")] == values, model
    assert tuple(paper["fixed_lr"]["cifar100"]["wrn28x10"]["swa"]) == (81.7, None)
