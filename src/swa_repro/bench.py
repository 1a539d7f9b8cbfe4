"""Throughput benchmark: this repository's pipeline against the authors' way of doing it.

    python -m swa_repro.bench [--models small_cnn] [--device auto] [--size tiny|small|full]
                              [--repeats 5] [--speed fast] [--out bench.json]

For each model, on the current device, in one run, the same five measurements of two
pipelines on the same synthetic CIFAR-shaped data (uint8 32x32 images, no download):

    train_images_per_s       one epoch of SGD (momentum 0.9, wd, batch 128, crop+flip augmentation)
    eval_images_per_s        test-set evaluation in eval mode
    bn_refresh_images_per_s  the SWA BN refresh (one augmented pass in train mode, no gradient)
    averaging_update_ms      one SWA update w <- w + (w_i - w) / (n + 1)
    plane_point_s            one analysis point: BN refresh + train-stream eval + test eval

- ours: device-resident uint8 data with batched on-device crop/flip (data.TrainStream), the
  speed options of conf/speed/<--speed>.yaml (swa_repro.fast), the fused AveragedModel
  update, and plane points as the analyses evaluate them (analysis.common.evaluate_grid):
  RunContext.evaluate_many on chunks of P points per data pass (P: the analyses'
  points_per_pass unless --plane-points), fp32 and the run's batch sizes, as the analyses
  take no speed options.
- reference (swa_repro.bench_reference), as the authors' code works: a Dataset of PIL images with torchvision transforms
  RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize in a DataLoader with 4
  workers (--ref-workers), batch 128, shuffle, pinned memory on CUDA, fp32, a host sync per
  step; averaging by a per-parameter Python loop (param *= 1 - a; param += a * new); plane
  points evaluated one at a time, each with its own passes through the DataLoaders.

Beside them, per model: the collectors' costs (collector_costs) and, for the flatness
analyses, one Hessian-vector-product pass against one gradient pass over the same test images
(hessian_cost: JSON "hessian", hvp_over_gradient; the goal is at most 2.5x).

Each measurement is warmed up once (not timed; includes torch.compile and cuDNN autotuning),
then timed `--repeats` times; the median is reported, with every repeat in the JSON. "ratio"
is always the speed-up of ours over the reference (> 1: ours faster). Derived: the epoch time
(train_size / train images/s), the BN refresh and the averaging update as fractions of an
epoch, and a 21 x 21 plane (441 points). The speed goals ("targets") are set for a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from swa_repro import REPO_ROOT
from swa_repro.analysis.common import POINTS_PER_PASS
from swa_repro.analysis.flatness import HessianSettings
from swa_repro.analysis.hessian import HessianOperator, data_gradient, rademacher
from swa_repro.analysis.points import RunContext
from swa_repro.averaging import make_averaged_model
from swa_repro.bench_reference import (
    BATCH,
    MEAN,
    STD,
    reference_bn_update,
    reference_eval,
    reference_loaders,
    reference_moving_average,
    reference_plane_point,
    reference_train_epoch,
)
from swa_repro.bn_refresh import refresh_bn
from swa_repro.cli import check_output_folder, one_line_errors, read_json, read_yaml
from swa_repro.config_check import (
    ConfigError,
    check_device,
    check_int,
    check_one_of,
    resolve_device,
)
from swa_repro.data import Normalizer, Splits, TrainStream, eval_batches
from swa_repro.distributed import Distributed
from swa_repro.fast import Speed, flat_parameters
from swa_repro.loop import Run, sgd_epoch
from swa_repro.metrics import evaluate
from swa_repro.models import MODEL_NAMES, build_model, count_parameters, has_batchnorm
from swa_repro.run_files import RunFiles, write_text_atomic
from swa_repro.schedule import ConstantSchedule

NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
AVERAGING_UPDATES = 20  # updates per timed repeat of the averaging measurement
PLANE_GRID = 21

CIFAR_TRAIN, CIFAR_TEST = 50000, 10000
NO_BN_NOTE = "no BN layers: nothing to refresh (the timing is only the call)"
SIZES = {  # images per split
    "tiny": {"train_size": 320, "test_size": 192},
    "small": {"train_size": 2048, "test_size": 512},
    "full": {"train_size": CIFAR_TRAIN, "test_size": CIFAR_TEST},
}
MEASUREMENTS = {  # name -> (unit, higher is better)
    "train_images_per_s": ("images/s", True),
    "eval_images_per_s": ("images/s", True),
    "bn_refresh_images_per_s": ("images/s", True),
    "averaging_update_ms": ("ms", False),
    "plane_point_s": ("s", False),
}
MEASUREMENT_FIELDS = (
    "ours",
    "reference",
    "ratio",
    "unit",
    "higher_is_better",
    "ours_repeats",
    "reference_repeats",
)
DERIVED = (
    "epoch_s",
    "bn_refresh_fraction_of_epoch",
    "averaging_fraction_of_epoch",
    "plane_21x21_s",
)


# --- ours ---------------------------------------------------------------------------------------


def loop_run(model, step_model, optimizer, stream, speed, device, folder: Path) -> Run:
    """A Run holding what swa_repro.loop.sgd_epoch uses, so that the training loop's own epoch
    is what gets timed (constant LR, no averaged model, no progress bar)."""
    return Run(
        cfg=OmegaConf.create({"progress": False, "epochs": 1}),
        files=RunFiles(folder),
        dist=Distributed(),
        device=device,
        speed=speed,
        data=None,
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        schedule=ConstantSchedule(LR),
        stream=stream,
        bn_stream=stream,
        collectors=[],
        readings_at={},
        keep_epochs=set(),
    )


# --- timing -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def measure(
    fn: Callable[[int], object], device: torch.device, repeats: int, warmup: Callable | None = None
) -> list[float]:
    """Seconds of fn(repeat) for each repeat, after one untimed warm-up call (warmup or fn(-1))."""
    (warmup or (lambda: fn(-1)))()
    sync(device)
    return [timed(lambda r=r: fn(r), device) for r in range(repeats)]


def entry(name: str, ours: list[float], reference: list[float]) -> dict:
    unit, higher = MEASUREMENTS[name]
    o, r = statistics.median(ours), statistics.median(reference)
    return {
        "ours": o,
        "reference": r,
        "ratio": (o / r if higher else r / o) if o > 0 and r > 0 else None,
        "unit": unit,
        "higher_is_better": higher,
        "ours_repeats": ours,
        "reference_repeats": reference,
    }


# --- one model ------------------------------------------------------------------------------


@dataclass
class ModelBench:
    """One model's two pipelines on the same data, and the measurements taken so far."""

    name: str
    device: torch.device
    speed: Speed
    repeats: int
    data: Splits  # on the device
    stream: TrainStream
    model: nn.Module  # ours, with the speed options
    ref_model: nn.Module  # the same initial weights, plain
    ref_train: torch.utils.data.DataLoader
    ref_test: torch.utils.data.DataLoader
    log: Callable[[str], None]
    results: dict[str, dict] = field(default_factory=dict)

    def measure(self, fn: Callable[[int], object], warmup: Callable | None = None) -> list[float]:
        return measure(fn, self.device, self.repeats, warmup)

    def report(self, key: str, ours: list[float], ref: list[float]) -> None:
        e = self.results[key] = entry(key, ours, ref)
        self.log(
            f"  {self.name:14s} {key:24s} ours {e['ours']:10.4g}  reference "
            f"{e['reference']:10.4g}  {e['unit']:8s} speed-up x{e['ratio']:.2f}"
        )


def prepare(name, data, device, speed, repeats, ref_workers, log) -> ModelBench:
    """Both pipelines of model `name` on `data`, from the same initial weights."""
    on_device = Splits(
        data.name, data.num_classes, *(t.to(device) for t in (data.train_x, data.train_y,
                                                              data.test_x, data.test_y)),
    )  # fmt: skip
    stream = TrainStream(on_device.train_x, on_device.train_y, BATCH, normalizer(device), seed=0)
    ref_train, ref_test = reference_loaders(data, ref_workers, device)
    torch.manual_seed(0)
    ref_model = build_model(name, NUM_CLASSES).to(device)
    model = build_model(name, NUM_CLASSES).to(device)
    model.load_state_dict(ref_model.state_dict())
    speed.prepare(model)
    return ModelBench(name, device, speed, repeats, on_device, stream, model, ref_model,
                      ref_train, ref_test, log)  # fmt: skip


def normalizer(device: torch.device) -> Normalizer:
    return Normalizer(MEAN, STD, device)


def sgd_of(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def time_training(b: ModelBench) -> None:
    """One epoch per repeat: the training loop's own sgd_epoch against the authors' loop."""
    n = len(b.data.train_y)
    ref_opt = sgd_of(b.ref_model)
    with tempfile.TemporaryDirectory() as folder:
        run = loop_run(b.model, b.speed.compiled(b.model), sgd_of(b.model), b.stream, b.speed,
                       b.device, Path(folder))  # fmt: skip
        ours = b.measure(lambda r: sgd_epoch(run, r + 1))
    ref = b.measure(lambda r: reference_train_epoch(b.ref_model, ref_opt, b.ref_train, b.device))
    b.report("train_images_per_s", [n / t for t in ours], [n / t for t in ref])


def time_evaluation(b: ModelBench) -> None:
    """The test set in eval mode."""
    n, d = len(b.data.test_y), b.data
    batch = b.speed.eval_batch_size or BATCH

    def ours(r):
        with b.speed.autocast(b.device):
            evaluate(b.model, eval_batches(d.test_x, d.test_y, batch, normalizer(b.device)))

    ref = b.measure(lambda r: reference_eval(b.ref_model, b.ref_test, b.device))
    b.report("eval_images_per_s", [n / t for t in b.measure(ours)], [n / t for t in ref])


def bn_stream_of(b: ModelBench) -> TrainStream:
    """The BN-refresh stream of ours (speed.bn_refresh_batch_size, else the authors' batch)."""
    bn_batch = b.speed.bn_refresh_batch_size or BATCH
    return TrainStream(b.data.train_x, b.data.train_y, bn_batch, normalizer(b.device), seed=0)


def time_bn_refresh(b: ModelBench) -> None:
    """One augmented pass over the training set in train mode, without gradients."""
    n, bn_stream = len(b.data.train_y), bn_stream_of(b)

    def ours(r):
        with b.speed.autocast(b.device):
            refresh_bn(b.model, bn_stream.inputs("bn_refresh", r + 1))

    ref = b.measure(lambda r: reference_bn_update(b.ref_model, b.ref_train, b.device))
    b.report("bn_refresh_images_per_s", [n / t for t in b.measure(ours)], [n / t for t in ref])
    if not has_batchnorm(b.model):
        b.results["bn_refresh_images_per_s"]["note"] = NO_BN_NOTE


def time_averaging(b: ModelBench) -> None:
    """The SWA update, AVERAGING_UPDATES per repeat: the fused AveragedModel update against a
    per-parameter Python loop."""
    swa_model = make_averaged_model(b.model)
    ref_swa = build_model(b.name, NUM_CLASSES).to(b.device)
    updates = itertools.count(1)

    def ours(r):
        for _ in range(AVERAGING_UPDATES):
            swa_model.update_parameters(b.model)

    def ref(r):
        for _ in range(AVERAGING_UPDATES):
            reference_moving_average(ref_swa, b.ref_model, 1.0 / next(updates))

    per_update = 1000.0 / AVERAGING_UPDATES
    b.report("averaging_update_ms", [t * per_update for t in b.measure(ours)],
             [t * per_update for t in b.measure(ref)])  # fmt: skip


def plane_context(b: ModelBench, images: int | None = None) -> RunContext:
    """A RunContext over the bench data (its first `images` of each split), as the analyses
    evaluate points: a plain model of the architecture, fp32, the run's batch sizes."""
    d = b.data
    x, y, tx, ty = (t[:images] for t in (d.train_x, d.train_y, d.test_x, d.test_y))
    cfg = OmegaConf.create(
        {"optim": {"weight_decay": WEIGHT_DECAY, "batch_size": BATCH}, "model": {"name": b.name}}
    )
    stream = TrainStream(x, y, BATCH, normalizer(b.device), seed=0)
    plane_model = build_model(b.name, NUM_CLASSES).to(b.device)
    splits = Splits(d.name, d.num_classes, x, y, tx, ty)
    return RunContext(cfg, plane_model, splits, stream, normalizer(b.device), BATCH, seed=0)


def time_plane(b: ModelBench, plane_points: int, plane_mode: str) -> None:
    """Plane points as evaluate_grid does them (plane_points per evaluate_many call, one pass
    per stream) against dnn-mode-connectivity's one point at a time."""
    base = flat_parameters(b.model)
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(base.numel(), generator=gen).to(b.device) * 1e-3 for _ in range(2))
    coords = torch.linspace(-0.2, 1.2, plane_points, device=b.device)
    vectors = torch.stack([base + a * u + (1 - a) * v for a in coords])
    ctx, warm_ctx = plane_context(b), plane_context(b, BATCH)
    ours = b.measure(lambda r: ctx.evaluate_many(vectors, mode=plane_mode),
                     warmup=lambda: warm_ctx.evaluate_many(vectors, mode=plane_mode))  # fmt: skip
    point, (train, test) = vectors[0].clone(), (b.ref_train, b.ref_test)
    ref = b.measure(lambda r: reference_plane_point(b.ref_model, point, train, test, b.device),
                    warmup=lambda: reference_plane_point(b.ref_model, point, train, test,
                                                         b.device, limit=2))  # fmt: skip
    b.report("plane_point_s", [t / plane_points for t in ours], ref)


def derived_of(results: dict, n_train: int) -> dict:
    """Epoch time, BN refresh and averaging as fractions of an epoch, a 21 x 21 plane."""
    med = {k: (v["ours"], v["reference"]) for k, v in results.items()}
    epoch = [n_train / med["train_images_per_s"][i] for i in (0, 1)]
    bn = [n_train / med["bn_refresh_images_per_s"][i] for i in (0, 1)]
    avg = [med["averaging_update_ms"][i] / 1000.0 for i in (0, 1)]
    plane = [PLANE_GRID**2 * med["plane_point_s"][i] for i in (0, 1)]
    return {
        "epoch_s": {"ours": epoch[0], "reference": epoch[1]},
        "bn_refresh_fraction_of_epoch": {
            "ours": bn[0] / epoch[0],
            "reference": bn[1] / epoch[1],
            "ours_of_reference_epoch": bn[0] / epoch[1],
        },
        "averaging_fraction_of_epoch": {
            "ours": avg[0] / epoch[0],
            "reference": avg[1] / epoch[1],
            "ours_of_reference_epoch": avg[0] / epoch[1],
        },
        "plane_21x21_s": {"ours": plane[0], "reference": plane[1], "ratio": plane[1] / plane[0]},
    }


def targets_of(results: dict, derived: dict, gpu: bool, name: str) -> list[dict]:
    """The project's speed goals (set for a GPU, some for PreResNet164) and whether they hold."""
    preresnet = gpu and name == "preresnet164"
    return [
        target("training throughput >= 2x reference (PreResNet164, batch 128)",
               results["train_images_per_s"]["ratio"], ">=", 2.0, preresnet),
        target("BN refresh <= 0.35 of a training epoch",
               derived["bn_refresh_fraction_of_epoch"]["ours"], "<=", 0.35, gpu),
        target("averaging update < 1% of a training epoch",
               derived["averaging_fraction_of_epoch"]["ours"], "<", 0.01, gpu),
        target("21 x 21 plane >= 5x faster than the per-point loop (PreResNet164)",
               derived["plane_21x21_s"]["ratio"], ">=", 5.0, preresnet),
    ]  # fmt: skip


def bench_model(
    name: str,
    data: Splits,
    device: torch.device,
    speed: Speed,
    repeats: int,
    ref_workers: int,
    plane_points: int,
    plane_mode: str,
    log: Callable[[str], None],
) -> dict:
    """Every measurement of model `name`, its derived fields and the speed goals."""
    b = prepare(name, data, device, speed, repeats, ref_workers, log)
    for timing in (time_training, time_evaluation, time_bn_refresh, time_averaging):
        timing(b)
    time_plane(b, plane_points, plane_mode)
    derived = derived_of(b.results, len(data.train_y))
    return {
        "params": count_parameters(b.model),
        "measurements": b.results,
        "derived": derived,
        "targets": targets_of(b.results, derived, device.type == "cuda", name),
        "collectors": collector_costs(
            b.model,
            b.data,
            b.stream,
            bn_stream_of(b),
            speed,
            derived["epoch_s"]["ours"],
            repeats,
            log,
        ),  # fmt: skip
        "hessian": hessian_cost(plain_copy(b), hessian_batches(b), device, repeats, log),
    }


# --- the flatness analyses: a Hessian-vector product against a gradient ----------------------

HVP_GOAL = 2.5  # a Hessian-vector-product pass at most this many gradient passes


def plain_copy(b: ModelBench) -> nn.Module:
    """The model as the analyses hold it: the architecture in fp32 with no speed options."""
    model = build_model(b.name, NUM_CLASSES).to(b.device)
    model.load_state_dict(b.ref_model.state_dict())
    return model


def hessian_batches(b: ModelBench) -> list:
    """The test images, unaugmented, in the hessian analysis' default batches."""
    size = HessianSettings.batch_size
    return list(eval_batches(b.data.test_x, b.data.test_y, size, normalizer(b.device)))


def hessian_cost(model: nn.Module, batches: list, device, repeats: int, log) -> dict:
    """One Hessian-vector-product pass over `batches` as the hessian analysis computes it
    (HessianOperator.matvec: eval mode, double backward, float64 accumulation) against one
    gradient pass of the same loss over the same batches (hessian.data_gradient)."""
    op = HessianOperator(model, batches)
    v = rademacher(op.size, 0, "bench").to(device)
    t_hvp = measure(lambda r: op.matvec(v), device, repeats)
    t_grad = measure(lambda r: data_gradient(model, batches), device, repeats)
    hvp, grad = statistics.median(t_hvp), statistics.median(t_grad)
    cost = {
        "images": op.total,
        "batch_size": len(batches[0][1]),
        "hvp_pass_s": hvp,
        "gradient_pass_s": grad,
        "hvp_over_gradient": hvp / grad,
        "hvp_repeats": t_hvp,
        "gradient_repeats": t_grad,
        "target": target(
            f"Hessian-vector-product pass <= {HVP_GOAL}x a gradient pass",
            hvp / grad,
            "<=",
            HVP_GOAL,
            device.type == "cuda",
        ),  # fmt: skip
    }
    log(f"  hessian: {hessian_line(cost)}")
    return cost


def hessian_line(cost: dict) -> str:
    """The markdown table's line of a hessian_cost entry."""
    t = cost["target"]
    return (
        f"| Hessian-vector product / gradient pass ({cost['images']} images) "
        f"| {cost['hvp_pass_s']:.3g} s / {cost['gradient_pass_s']:.3g} s "
        f"| | x{cost['hvp_over_gradient']:.2f} (goal <= {t['threshold']:g}: {t_status(t)}) |"
    )


# --- the collectors beyond the paper (EMA, SWAG) and the SWAG model average --------------------

EMA_DECAYS = (0.999, 0.9998, 0.9999)  # the default ema.decays
EMA_STEPS = 20  # SGD steps per timed repeat of the EMA update


def collector_costs(model, data, stream, bn_stream, speed, epoch_s, repeats, log) -> dict:
    """Per epoch of `epoch_s` seconds (len(stream) steps): the EMA updates of the default three
    decays after every step, SWAG's collection (max_rank 20) once; and one sample of the SWAG model average
    (draw, BN refresh, test pass, running average saved) against one BN refresh plus one test
    pass of the same model."""
    from swa_repro.data import DeviceData
    from swa_repro.ema import EMA
    from swa_repro.evaluator import Evaluator
    from swa_repro.posterior import PosteriorSettings, model_average, plan_variants
    from swa_repro.swag import Swag

    device, steps = bn_stream.images.device, len(stream)
    emas = [EMA(model, decay) for decay in EMA_DECAYS]
    t_ema = measure(lambda r: [e.after_step(model) for _ in range(EMA_STEPS) for e in emas],
                    device, repeats)  # fmt: skip
    mean = [p.detach().clone() for p in model.parameters()]
    swag = Swag(mean, max_rank=20)
    t_swag = measure(lambda r: swag.update(list(model.parameters()), mean), device, repeats)
    evaluator = Evaluator(DeviceData(data, bn_stream.normalize, 0, 0, 1), bn_stream, speed,
                          device, Distributed(), BATCH, None, 1)  # fmt: skip
    t_pass = measure(lambda r: (evaluator.refresh(model), evaluator.test_metrics(model)),
                     device, repeats)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        settings = PosteriorSettings(samples=1)  # one sample of each variant per call
        t_bma = measure(
            lambda r: model_average(swag, model, evaluator, settings, 0, Path(folder) / str(r)),
            device, repeats,
        )  # fmt: skip
    ema_step = statistics.median(t_ema) / EMA_STEPS
    costs = {
        "ema_3_decays_step_ms": 1000 * ema_step,
        "ema_3_decays_fraction_of_epoch": ema_step * steps / epoch_s,
        "swag_collect_ms": 1000 * statistics.median(t_swag),
        "swag_collect_fraction_of_epoch": statistics.median(t_swag) / epoch_s,
        "bma_sample_s": statistics.median(t_bma) / len(plan_variants(swag, settings)[0]),
        "bn_refresh_plus_test_s": statistics.median(t_pass),
    }
    costs["bma_sample_over_refresh_plus_test"] = (
        costs["bma_sample_s"] / costs["bn_refresh_plus_test_s"]
    )
    log("  collectors: " + ", ".join(f"{k} {v:.4g}" for k, v in costs.items()))
    return costs


def t_status(t: dict) -> str:
    return ("met" if t["met"] else "NOT met") if t["applies"] else "n/a here (GPU target)"


def markdown(result: dict) -> str:
    """docs/performance.md's tables of a benchmark JSON: one per model, then its targets."""
    env, settings = result["environment"], result["settings"]
    lines = [
        f"{env['device_name']}; torch {env['torch']}, torchvision {env['torchvision']}, "
        f"Python {env['python']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; {result['created']}; "
        f"`{result['command']}`; {settings['train_size']} train / {settings['test_size']} test "
        f"images, {settings['repeats']} repeats, medians; ours: speed={settings['speed_name']}, "
        f"plane {settings['plane_points_per_pass']} points per pass ({settings['plane_mode']})."
    ]
    for name, model in result["models"].items():
        m, d = model["measurements"], model["derived"]
        lines += [
            "",
            f"{name} ({model['params']:,} parameters):",
            "",
            "| measurement | ours | reference | speed-up |",
            "|---|---|---|---|",
        ]
        for key, label, fmt in (
            ("train_images_per_s", "training", ".0f"),
            ("eval_images_per_s", "evaluation", ".0f"),
            ("bn_refresh_images_per_s", "BN refresh", ".0f"),
            ("averaging_update_ms", "averaging update", ".3f"),
            ("plane_point_s", "plane point", ".3f"),
        ):
            e = m[key]
            lines.append(
                f"| {label} | {e['note']} | | |"
                if "note" in e
                else f"| {label} | {e['ours']:{fmt}} {e['unit']} | {e['reference']:{fmt}} "
                f"{e['unit']} | x{e['ratio']:.2f} |"
            )
        lines += [
            f"| derived: epoch ({settings['train_size']} images) | {d['epoch_s']['ours']:.3f} s "
            f"| {d['epoch_s']['reference']:.3f} s | |",
            f"| derived: BN refresh / epoch | {d['bn_refresh_fraction_of_epoch']['ours']:.3f} "
            f"| {d['bn_refresh_fraction_of_epoch']['reference']:.3f} | |",
            f"| derived: averaging / epoch | {d['averaging_fraction_of_epoch']['ours']:.2%} "
            f"| {d['averaging_fraction_of_epoch']['reference']:.2%} | |",
            f"| derived: 21 x 21 plane | {d['plane_21x21_s']['ours']:.0f} s "
            f"| {d['plane_21x21_s']['reference']:.0f} s | x{d['plane_21x21_s']['ratio']:.2f} |",
        ]
        lines += [hessian_line(model["hessian"])] if "hessian" in model else []  # older lack it
        if (settings["train_size"], settings["test_size"]) != (CIFAR_TRAIN, CIFAR_TEST):
            # a point's passes (BN refresh, train and test evaluation) scale with the data
            full = (2 * CIFAR_TRAIN + CIFAR_TEST) / (
                2 * settings["train_size"] + settings["test_size"]
            )
            lines.append(
                f"| derived: 21 x 21 plane on CIFAR ({CIFAR_TRAIN} + {CIFAR_TEST}, scaled) "
                f"| {d['plane_21x21_s']['ours'] * full / 60:.1f} min "
                f"| {d['plane_21x21_s']['reference'] * full / 60:.1f} min | |"
            )
        lines.append("")
        lines += [
            f"- target {t['target']}: {t['value']:.4g} {t['op']} {t['threshold']}: {t_status(t)}"
            for t in model["targets"]
        ]
    return "\n".join(lines)


def target(what: str, value: float, op: str, threshold: float, applies: bool) -> dict:
    met = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[op]
    return {
        "target": what,
        "value": value,
        "op": op,
        "threshold": threshold,
        "met": bool(met),
        "applies": bool(applies),  # the goals are set for a GPU (and the named model)
    }


# --- environment, data, CLI -------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import torchvision

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {affinity} cores usable)"
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "cpu_cores_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "load_average_start": load_average(),  # other work on the machine skews CPU figures
    }


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None


def synthetic_data(train_size: int, test_size: int) -> Splits:
    """Random uint8 CIFAR-shaped images and labels (content is irrelevant to throughput)."""
    gen = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        return x, torch.randint(0, NUM_CLASSES, (n,), generator=gen)

    train_x, train_y = split(train_size)
    test_x, test_y = split(test_size)
    return Splits("synthetic", NUM_CLASSES, train_x, train_y, test_x, test_y)


SPEED_DIR = REPO_ROOT / "conf" / "speed"


def load_speed(name: str) -> Speed:
    names = sorted(p.stem for p in SPEED_DIR.glob("*.yaml"))
    if not name.endswith(".yaml") and name not in names:
        raise ConfigError(
            f"--speed {name}: no conf/speed/{name}.yaml; valid names: {', '.join(names)} "
            "(or a path ending in .yaml)"
        )
    path = Path(name) if name.endswith(".yaml") else SPEED_DIR / f"{name}.yaml"
    return Speed.from_cfg(read_yaml(path, "--speed"))


def check_args(args: argparse.Namespace, models: list[str]) -> None:
    """ConfigError naming the first bad option (argparse has checked the types, run the device)."""
    for name in models:
        check_one_of(name, MODEL_NAMES, "--models name")
    for key in ("train_size", "test_size", "threads"):
        if getattr(args, key) is not None:
            check_int(getattr(args, key), f"--{key.replace('_', '-')}")
    check_int(args.ref_workers, "--ref-workers", minimum=0)
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder; it must be the JSON file to write")
    check_output_folder(Path(args.out).parent, f"--out {args.out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m swa_repro.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--models", help="comma-separated; default small_cnn on CPU, preresnet164,wrn28x10 on GPU"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", choices=sorted(SIZES), help="default: small on CPU, full on GPU")
    p.add_argument("--train-size", type=int, help="override the size's training images")
    p.add_argument("--test-size", type=int, help="override the size's test images")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    p.add_argument(
        "--speed", default="fast", help="conf/speed/NAME.yaml (or a .yaml path) for ours"
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="override speed.compile; auto: the file's value on CUDA, off on CPU (minutes of compiling)",
    )
    p.add_argument(
        "--plane-points",
        type=int,
        default=POINTS_PER_PASS,
        help="points per evaluate_many call (default: the analyses' points_per_pass)",
    )
    p.add_argument("--plane-mode", choices=("auto", "vmap", "loop"), default="auto")
    p.add_argument(
        "--ref-workers", type=int, default=4, help="reference DataLoader workers (authors: 4)"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default="bench.json", help="JSON output path")
    p.add_argument(
        "--markdown",
        nargs="+",
        metavar="JSON",
        help="print the tables of saved results, run nothing",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.plane_points < 1:
        p.error("--plane-points must be >= 1")
    return args


def bench_settings(args: argparse.Namespace, gpu: bool) -> tuple[dict, Speed]:
    """The JSON's settings (sizes, repeats, speed options, plane) and the Speed of ours."""
    size = args.size or ("full" if gpu else "small")
    sizes = dict(SIZES[size])
    for key in ("train_size", "test_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    speed = load_speed(args.speed)
    compile_on = {"on": True, "off": False, "auto": speed.compile and gpu}[args.compile]
    speed = Speed(**{**speed.as_dict(), "compile": compile_on})
    settings = {
        "size": size if sizes == SIZES[size] else "custom",
        **sizes,
        "batch_size": BATCH,
        "repeats": args.repeats,
        "warmup": 1,
        "ref_workers": args.ref_workers,
        "speed_name": args.speed,
        "speed": speed.as_dict(),
        "plane_points_per_pass": args.plane_points,
        "plane_mode": args.plane_mode if args.plane_mode != "auto" else ("vmap" if gpu else "loop"),
        "averaging_updates_per_repeat": AVERAGING_UPDATES,
    }
    return settings, speed


def log_start(env: dict, settings: dict, log: Callable[[str], None]) -> None:
    log(
        f"bench on {env['device_name']} | torch {env['torch']} torchvision {env['torchvision']} | "
        f"{env['cpu_count']} CPUs ({env['cpu_cores_usable']} usable), {env['torch_threads']} torch threads"
    )
    log(
        f"size {settings['size']}: {settings['train_size']} train / {settings['test_size']} test "
        f"synthetic images, {settings['repeats']} repeats after 1 warm-up | ours: "
        f"speed={settings['speed_name']} {settings['speed']}, plane "
        f"{settings['plane_points_per_pass']} points/pass ({settings['plane_mode']}) | reference: "
        f"PIL + DataLoader ({settings['ref_workers']} workers), fp32, batch {BATCH}"
    )


def log_model(name: str, result: dict, log: Callable[[str], None]) -> None:
    d = result["derived"]
    log(
        f"  {name:14s} epoch {d['epoch_s']['ours']:.3g}s (reference {d['epoch_s']['reference']:.3g}s), "
        f"BN refresh {d['bn_refresh_fraction_of_epoch']['ours']:.3f} of an epoch, averaging "
        f"{d['averaging_fraction_of_epoch']['ours']:.2e} of an epoch, 21x21 plane "
        f"{d['plane_21x21_s']['ours']:.4g}s vs {d['plane_21x21_s']['reference']:.4g}s "
        f"(x{d['plane_21x21_s']['ratio']:.2f})"
    )
    for t in result["targets"]:
        log(
            f"    target {t['target']}: {t['value']:.4g} {t['op']} {t['threshold']} -> {t_status(t)}"
        )


def run(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Benchmark every model asked for; the JSON is rewritten after each (a cut-off run keeps
    what it finished). Returns the results."""
    args = parse_args(argv)
    check_device(args.device)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    models = (args.models or ("preresnet164,wrn28x10" if gpu else "small_cnn")).split(",")
    check_args(args, models)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings, speed = bench_settings(args, gpu)
    speed.set_backends()
    env = environment(device)
    log_start(env, settings, log)
    data = synthetic_data(settings["train_size"], settings["test_size"])
    command = ["python -m swa_repro.bench", *(argv if argv is not None else sys.argv[1:])]
    out = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command),
        "environment": env,
        "settings": settings,
        "models": {},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in models:
        with warnings.catch_warnings():  # the reference keeps the authors' 4 workers on any machine
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            out["models"][name] = bench_model(name, data, device, speed, args.repeats,
                                              args.ref_workers, args.plane_points,
                                              settings["plane_mode"], log)  # fmt: skip
        log_model(name, out["models"][name], log)
        write_text_atomic(path, json.dumps(out, indent=2) + "\n")  # finished models survive a kill
    env["load_average_end"] = load_average()
    log(
        f"1-minute load average: {env['load_average_start']} at the start, "
        f"{env['load_average_end']} at the end ({env['cpu_cores_usable']} cores)"
    )
    write_text_atomic(path, json.dumps(out, indent=2) + "\n")
    log(f"results written to {path}")
    log(markdown(out))
    return out


def markdown_of_file(path: str) -> str:
    """markdown() of a saved benchmark JSON; ConfigError naming the file if it is none."""
    try:
        return markdown(read_json(path, "--markdown"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"--markdown {path} is not a benchmark JSON of swa_repro.bench ({exc!r})"
        ) from None


@one_line_errors
def main() -> None:
    args = parse_args(None)
    if args.markdown:
        texts = [markdown_of_file(path) for path in args.markdown]  # all read before any print
        print("\n\n".join(texts) + "\n")
        return
    run()


if __name__ == "__main__":
    main()
