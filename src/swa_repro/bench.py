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
- reference, as the authors' code works: a Dataset of PIL images with torchvision transforms
  RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize in a DataLoader with 4
  workers (--ref-workers), batch 128, shuffle, pinned memory on CUDA, fp32, a host sync per
  step; averaging by a per-parameter Python loop (param *= 1 - a; param += a * new); plane
  points evaluated one at a time, each with its own passes through the DataLoaders.

Each measurement is warmed up once (not timed; includes torch.compile and cuDNN autotuning),
then timed `--repeats` times; the median is reported, with every repeat in the JSON. "ratio"
is always the speed-up of ours over the reference (> 1: ours faster). Derived: the epoch time
(train_size / train images/s), the BN refresh and the averaging update as fractions of an
epoch, and a 21 x 21 plane (441 points). Targets (issue SPEED) apply on a GPU.
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
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import vector_to_parameters

from swa_repro import REPO_ROOT
from swa_repro.analysis.common import POINTS_PER_PASS
from swa_repro.analysis.points import RunContext
from swa_repro.averaging import make_averaged_model
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

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
BATCH = 128  # the authors' train and test batch
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


# --- the reference pipeline (the authors' way) ------------------------------------------------


class PILDataset(torch.utils.data.Dataset):
    """(PIL image, label) pairs made once from uint8 (N, 3, 32, 32), as torchvision.datasets.CIFAR."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        from PIL import Image

        array = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.images = [Image.fromarray(a) for a in array]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_loaders(data: Splits, workers: int, device: torch.device):
    import torchvision.transforms as T

    train_tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    test_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    common = {"batch_size": BATCH, "num_workers": workers, "pin_memory": device.type == "cuda"}
    train = torch.utils.data.DataLoader(
        PILDataset(data.train_x, data.train_y, train_tf), shuffle=True, **common
    )
    test = torch.utils.data.DataLoader(
        PILDataset(data.test_x, data.test_y, test_tf), shuffle=False, **common
    )
    return train, test


def on_device(loader: Iterable, device: torch.device, limit: int | None = None):
    for x, y in itertools.islice(loader, limit):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def reference_train_epoch(model, optimizer, loader, device) -> None:
    """The authors' train_epoch: fp32, loss.item() and correct counted on the host every step."""
    model.train()
    loss_sum, correct = 0.0, 0
    for x, y in on_device(loader, device):
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * x.size(0)
        correct += int(out.argmax(1).eq(y).sum().item())


@torch.no_grad()
def reference_eval(model, loader, device, limit=None) -> tuple[float, float]:
    """The authors' eval: fp32, per-batch host sync."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in on_device(loader, device, limit):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += int(out.argmax(1).eq(y).sum().item())
        n += x.size(0)
    return loss_sum / n, correct / n


def reference_bn_update(model, loader, device, limit=None) -> None:
    """The authors' utils.bn_update (momentum b / (n + b)) through the DataLoader."""
    refresh_bn(model, (x for x, _ in on_device(loader, device, limit)))


@torch.no_grad()
def reference_moving_average(net1: nn.Module, net2: nn.Module, alpha: float) -> None:
    """The authors' utils.moving_average: one Python-level update per parameter tensor."""
    for p1, p2 in zip(net1.parameters(), net2.parameters(), strict=True):
        p1.data *= 1.0 - alpha
        p1.data += p2.data * alpha


def reference_plane_point(model, vector, train_loader, test_loader, device, limit=None) -> None:
    """dnn-mode-connectivity's per-point loop: load, BN update, train eval, test eval."""
    vector_to_parameters(vector, model.parameters())
    reference_bn_update(model, train_loader, device, limit)
    reference_eval(model, train_loader, device, limit)
    reference_eval(model, test_loader, device, limit)


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
    n_train, n_test = len(data.train_y), len(data.test_y)
    normalize = Normalizer(MEAN, STD, device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    stream = TrainStream(train_x, train_y, BATCH, normalize, seed=0)
    bn_stream = TrainStream(
        train_x, train_y, speed.bn_refresh_batch_size or BATCH, normalize, seed=0
    )
    eval_bs = speed.eval_batch_size or BATCH
    ref_train, ref_test = reference_loaders(data, ref_workers, device)

    torch.manual_seed(0)
    ref_model = build_model(name, NUM_CLASSES).to(device)
    model = build_model(name, NUM_CLASSES).to(device)
    model.load_state_dict(ref_model.state_dict())
    speed.prepare(model)
    step_model = speed.compiled(model)

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    ours_opt, ref_opt = sgd(model), sgd(ref_model)
    results: dict[str, dict] = {}

    def report(key: str, ours: list[float], ref: list[float]) -> None:
        results[key] = entry(key, ours, ref)
        e = results[key]
        log(
            f"  {name:14s} {key:24s} ours {e['ours']:10.4g}  reference {e['reference']:10.4g}  "
            f"{e['unit']:8s} speed-up x{e['ratio']:.2f}"
        )

    # training: one epoch per repeat
    with tempfile.TemporaryDirectory() as folder:
        run = loop_run(model, step_model, ours_opt, stream, speed, device, Path(folder))
        t_ours = measure(lambda r: sgd_epoch(run, r + 1), device, repeats)
    t_ref = measure(
        lambda r: reference_train_epoch(ref_model, ref_opt, ref_train, device), device, repeats
    )
    report("train_images_per_s", [n_train / t for t in t_ours], [n_train / t for t in t_ref])

    # evaluation of the test set
    def our_eval():
        with speed.autocast(device):
            evaluate(model, eval_batches(test_x, test_y, eval_bs, normalize))

    t_ours = measure(lambda r: our_eval(), device, repeats)
    t_ref = measure(lambda r: reference_eval(ref_model, ref_test, device), device, repeats)
    report("eval_images_per_s", [n_test / t for t in t_ours], [n_test / t for t in t_ref])

    # BN refresh: one augmented pass over the training set
    def our_refresh(r):
        with speed.autocast(device):
            refresh_bn(model, bn_stream.inputs("bn_refresh", r + 1))

    t_ours = measure(our_refresh, device, repeats)
    t_ref = measure(lambda r: reference_bn_update(ref_model, ref_train, device), device, repeats)
    report("bn_refresh_images_per_s", [n_train / t for t in t_ours], [n_train / t for t in t_ref])
    if not has_batchnorm(model):
        results["bn_refresh_images_per_s"]["note"] = NO_BN_NOTE

    # averaging update
    swa_model = make_averaged_model(model)
    ref_swa = build_model(name, NUM_CLASSES).to(device)
    updates = itertools.count(1)

    def ours_avg():
        for _ in range(AVERAGING_UPDATES):
            swa_model.update_parameters(model)

    def ref_avg():
        for _ in range(AVERAGING_UPDATES):
            reference_moving_average(ref_swa, ref_model, 1.0 / next(updates))

    t_ours = measure(lambda r: ours_avg(), device, repeats)
    t_ref = measure(lambda r: ref_avg(), device, repeats)
    per_update = 1000.0 / AVERAGING_UPDATES
    report("averaging_update_ms", [t * per_update for t in t_ours], [t * per_update for t in t_ref])

    # plane points as evaluate_grid does them, P per evaluate_many call (one pass per stream),
    # on a plain model without speed options, vs one at a time
    base = flat_parameters(model)
    gen = torch.Generator().manual_seed(0)
    u, v = (torch.randn(base.numel(), generator=gen).to(device) * 1e-3 for _ in range(2))
    coords = torch.linspace(-0.2, 1.2, plane_points, device=device)
    vectors = torch.stack([base + a * u + (1 - a) * v for a in coords])
    cfg = OmegaConf.create(
        {"optim": {"weight_decay": WEIGHT_DECAY, "batch_size": BATCH}, "model": {"name": name}}
    )
    data_dev = Splits(data.name, data.num_classes, train_x, train_y, test_x, test_y)
    plane_model = build_model(name, NUM_CLASSES).to(device)  # only its architecture is used
    ctx = RunContext(cfg, plane_model, data_dev, stream, normalize, BATCH, seed=0)
    warm_ctx = RunContext(
        cfg,
        plane_model,
        Splits(
            data.name,
            data.num_classes,
            train_x[:BATCH],
            train_y[:BATCH],
            test_x[:BATCH],
            test_y[:BATCH],
        ),
        TrainStream(train_x[:BATCH], train_y[:BATCH], BATCH, normalize, seed=0),
        normalize,
        BATCH,
        seed=0,
    )
    t_ours = measure(
        lambda r: ctx.evaluate_many(vectors, mode=plane_mode),
        device,
        repeats,
        warmup=lambda: warm_ctx.evaluate_many(vectors, mode=plane_mode),
    )
    ref_vector = vectors[0].clone()
    t_ref = measure(
        lambda r: reference_plane_point(ref_model, ref_vector, ref_train, ref_test, device),
        device,
        repeats,
        warmup=lambda: reference_plane_point(
            ref_model, ref_vector, ref_train, ref_test, device, limit=2
        ),
    )
    report("plane_point_s", [t / plane_points for t in t_ours], t_ref)

    # derived fields and the targets
    med = {k: (v["ours"], v["reference"]) for k, v in results.items()}
    epoch = [n_train / med["train_images_per_s"][i] for i in (0, 1)]
    bn = [n_train / med["bn_refresh_images_per_s"][i] for i in (0, 1)]
    avg = [med["averaging_update_ms"][i] / 1000.0 for i in (0, 1)]
    plane = [PLANE_GRID**2 * med["plane_point_s"][i] for i in (0, 1)]
    derived = {
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
    gpu = device.type == "cuda"
    targets = [
        target(
            "training throughput >= 2x reference (PreResNet164, batch 128)",
            results["train_images_per_s"]["ratio"],
            ">=",
            2.0,
            gpu and name == "preresnet164",
        ),
        target(
            "BN refresh <= 0.35 of a training epoch",
            derived["bn_refresh_fraction_of_epoch"]["ours"],
            "<=",
            0.35,
            gpu,
        ),
        target(
            "averaging update < 1% of a training epoch",
            derived["averaging_fraction_of_epoch"]["ours"],
            "<",
            0.01,
            gpu,
        ),
        target(
            "21 x 21 plane >= 5x faster than the per-point loop (PreResNet164)",
            derived["plane_21x21_s"]["ratio"],
            ">=",
            5.0,
            gpu and name == "preresnet164",
        ),
    ]
    return {
        "params": count_parameters(model),
        "measurements": results,
        "derived": derived,
        "targets": targets,
        "collectors": collector_costs(
            model, data_dev, stream, bn_stream, speed, epoch[0], repeats, log
        ),
    }


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
        "applies": bool(applies),  # the targets are set for a GPU (and the named model)
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


def run(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    check_device(args.device)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    models = (args.models or ("preresnet164,wrn28x10" if gpu else "small_cnn")).split(",")
    check_args(args, models)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("full" if gpu else "small")
    sizes = dict(SIZES[size])
    for key in ("train_size", "test_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    size = size if sizes == SIZES[size] else "custom"
    speed = load_speed(args.speed)
    compile_on = {"on": True, "off": False, "auto": speed.compile and gpu}[args.compile]
    speed = Speed(**{**speed.as_dict(), "compile": compile_on})
    plane_mode = args.plane_mode if args.plane_mode != "auto" else ("vmap" if gpu else "loop")
    speed.set_backends()

    env = environment(device)
    settings = {
        "size": size,
        "train_size": sizes["train_size"],
        "test_size": sizes["test_size"],
        "batch_size": BATCH,
        "repeats": args.repeats,
        "warmup": 1,
        "ref_workers": args.ref_workers,
        "speed_name": args.speed,
        "speed": speed.as_dict(),
        "plane_points_per_pass": args.plane_points,
        "plane_mode": plane_mode,
        "averaging_updates_per_repeat": AVERAGING_UPDATES,
    }
    log(
        f"bench on {env['device_name']} | torch {env['torch']} torchvision {env['torchvision']} | "
        f"{env['cpu_count']} CPUs ({env['cpu_cores_usable']} usable), {env['torch_threads']} torch threads"
    )
    log(
        f"size {size}: {sizes['train_size']} train / {sizes['test_size']} test synthetic images, "
        f"{args.repeats} repeats after 1 warm-up | ours: speed={args.speed} {speed.as_dict()}, "
        f"plane {args.plane_points} points/pass ({plane_mode}) | reference: PIL + DataLoader "
        f"({args.ref_workers} workers), fp32, batch {BATCH}"
    )
    data = synthetic_data(sizes["train_size"], sizes["test_size"])
    out = {
        "schema": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m swa_repro.bench", *(argv if argv is not None else sys.argv[1:])]
        ),
        "environment": env,
        "settings": settings,
        "models": {},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in models:
        with warnings.catch_warnings():  # the reference keeps the authors' 4 workers on any machine
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            out["models"][name] = bench_model(
                name,
                data,
                device,
                speed,
                args.repeats,
                args.ref_workers,
                args.plane_points,
                plane_mode,
                log,
            )
        d = out["models"][name]["derived"]
        log(
            f"  {name:14s} epoch {d['epoch_s']['ours']:.3g}s (reference {d['epoch_s']['reference']:.3g}s), "
            f"BN refresh {d['bn_refresh_fraction_of_epoch']['ours']:.3f} of an epoch, averaging "
            f"{d['averaging_fraction_of_epoch']['ours']:.2e} of an epoch, 21x21 plane "
            f"{d['plane_21x21_s']['ours']:.4g}s vs {d['plane_21x21_s']['reference']:.4g}s "
            f"(x{d['plane_21x21_s']['ratio']:.2f})"
        )
        for t in out["models"][name]["targets"]:
            log(
                f"    target {t['target']}: {t['value']:.4g} {t['op']} {t['threshold']} -> {t_status(t)}"
            )
        write_text_atomic(path, json.dumps(out, indent=2) + "\n")  # finished models survive a kill
    out["environment"]["load_average_end"] = load_average()
    log(
        f"1-minute load average: {env['load_average_start']} at the start, "
        f"{out['environment']['load_average_end']} at the end ({env['cpu_cores_usable']} cores)"
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
