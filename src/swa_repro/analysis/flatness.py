"""The flatness analyses: `hessian`, `sharpness` and `around` (issue 16; docs/flatness.md).

Each measures every origin (a named weight vector) on the same fixed data with the same seeded
draws (start vectors, probes, noise, directions), so the numbers are paired between origins, and
stores them unit by unit, resumably (origins.py). The origins: those the config names
(`origins`: by default the SGD solution and SWA), then every EMA collector of `ema_checkpoint`
(by default the SWA run's last checkpoint: the EMAs of the same SGD iterates SWA averages), as
"EMA <decay>"; a checkpoint without EMAs adds none. The mathematics: hessian.py, sharpness.py,
directions.py. Settings are checked before any work; `batch_size` of hessian and around only
changes memory and floating-point summation order (the loss is weighted by sample) and is not
part of the inputs hash; sharpness' batch_size is (it treats every batch on its own).

hessian .npz, O origins, L parameter tensors:
    origins (O,), n_params, images, density_images, param_names (L,), param_sizes (L,)
    weight_norm (O,), param_norms (O, L)       ||w|| and ||w_l||
    test_acc_own_bn (O,)   test accuracy (%) on the statistics stored with the origin (NaN: none)
    test_acc (O,)          test accuracy (%) after the BN refresh every analysis uses
    train_nll, train_err (O,)                   on the fixed subset, eval mode
    top_eigenvalues, top_residuals (O, top_k), top_converged (O,)   descending
    min_eigenvalue, min_residual (O,), min_converged (O,)
    trace, trace_se (O,), trace_samples (O, probes)
    slq_nodes, slq_weights (O, density_runs, density_steps)   NaN where a run ended early
    density_grid, density (O, density_points)
    hvp_products (O,), seconds (O,)             cost of the origin (timing, not a result)
sharpness .npz: origins, rho_avg (A,), rho_max (M,), rho_sam (S,), s_avg, s_avg_se (O, A),
    s_max (O, M), sam (O, S), train_nll, train_err, weight_norm (O,), seconds (O,)
around .npz, G grid points: origins, a (G,), b (G,), weight_norm (O,), direction_norms (O, 2),
    train_nll, train_err (O, G, G) indexed [o, i_a, j_b], done (O, G) (a row per unit)
every file: done, config (JSON: settings, inputs_hash).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from swa_repro.analysis.common import (
    AnalysisError,
    check_number,
    context_settings,
    inputs_hash,
    open_results,
)
from swa_repro.analysis.directions import filter_direction, parameter_shapes
from swa_repro.analysis.hessian import (
    HessianOperator,
    extreme_eigenpairs,
    gaussian_density,
    hutchinson_trace,
    set_parameters,
    slq,
)
from swa_repro.analysis.origins import (
    fixed_batches,
    load_origin,
    parameter_norms,
    parameter_table,
    refresh_with_test_accuracy,
    subset_size,
)
from swa_repro.analysis.points import RunContext
from swa_repro.analysis.sharpness import average_sharpness, sam_sharpness, worst_sharpness
from swa_repro.analysis.specs import load_buffers, load_point
from swa_repro.checkpoint import load_checkpoint
from swa_repro.config_check import check_int
from swa_repro.metrics import evaluate

EMA_PREFIX = "ema_"  # the EMA collectors' names in a run checkpoint: ema_<decay> (swa_repro.ema)


def check_rhos(rhos: Sequence, key: str) -> tuple[float, ...]:
    """A non-empty list of numbers > 0, as a tuple of floats."""
    if isinstance(rhos, str) or not isinstance(rhos, Sequence) or not rhos:
        raise AnalysisError(f"{key} must be a non-empty list of numbers > 0, got {rhos!r}")
    for rho in rhos:
        if not check_number(rho, key) > 0:
            raise AnalysisError(f"{key} must hold numbers > 0, got {rho!r}")
    return tuple(float(rho) for rho in rhos)


@dataclass(frozen=True)
class HessianSettings:
    images: int | None = None  # None: the whole training set
    batch_size: int = 1000
    top_k: int = 5
    tol: float = 1e-3
    maxiter: int | None = None  # ARPACK restarts; None: scipy's default (10 P)
    ncv: int | None = None  # Lanczos vectors of eigsh; None: scipy's max(2 k + 1, 20)
    probes: int = 100
    density_images: int | None = 4096
    density_runs: int = 10
    density_steps: int = 80
    density_points: int = 1000
    density_sigma: float = 0.005
    seed: int = 0

    def check(self, n_params: int, n_train: int) -> None:
        subset_size(self.images, n_train)
        subset_size(self.density_images, n_train, "density_images")
        for key, minimum in (("batch_size", 1), ("probes", 2), ("density_runs", 1),
                             ("density_steps", 1), ("density_points", 2)):  # fmt: skip
            check_int(getattr(self, key), key, minimum)
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n_params:
            raise AnalysisError(
                f"top_k must be an integer in 1..{n_params - 1} (below the {n_params} "
                f"parameters), got {k!r}"
            )
        if self.maxiter is not None:
            check_int(self.maxiter, "maxiter")
        if self.ncv is not None:
            check_int(self.ncv, "ncv", k + 1)
            if self.ncv > n_params:
                raise AnalysisError(
                    f"ncv must be at most the {n_params} parameters, got {self.ncv}"
                )
        if check_number(self.tol, "tol") < 0:
            raise AnalysisError(f"tol must be >= 0, got {self.tol!r}")
        if not check_number(self.density_sigma, "density_sigma") > 0:
            raise AnalysisError(f"density_sigma must be > 0, got {self.density_sigma!r}")


@dataclass(frozen=True)
class SharpnessSettings:
    images: int = 1024
    batch_size: int = 128
    rho_avg: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    rho_max: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    rho_sam: tuple[float, ...] = (0.05, 0.1)
    avg_samples: int = 20
    max_steps: int = 20
    seed: int = 0

    def check(self, n_params: int, n_train: int) -> None:
        if self.images is None:
            raise AnalysisError(f"images must be an integer in 1..{n_train}, got None")
        subset_size(self.images, n_train)
        check_int(self.batch_size, "batch_size")
        check_int(self.avg_samples, "avg_samples", 2)
        check_int(self.max_steps, "max_steps")
        for key in ("rho_avg", "rho_max", "rho_sam"):
            check_rhos(getattr(self, key), key)


@dataclass(frozen=True)
class AroundSettings:
    images: int | None = None
    batch_size: int = 1000
    grid_points: int = 21
    span: float = 1.0  # a, b in linspace(-span, span, grid_points)
    seed: int = 0

    def check(self, n_params: int, n_train: int) -> None:
        subset_size(self.images, n_train)
        check_int(self.batch_size, "batch_size")
        check_int(self.grid_points, "grid_points", 2)
        if not check_number(self.span, "span") > 0:
            raise AnalysisError(f"span must be > 0, got {self.span!r}")


def settings_from(cls, cfg: DictConfig):
    """A settings dataclass from the analysis config (lists as tuples)."""
    values = {}
    for field in fields(cls):
        value = cfg[field.name]
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        values[field.name] = tuple(plain) if isinstance(plain, list) else plain
    return cls(**values)


def ema_specs(checkpoint: str | Path | None) -> dict[str, str]:
    """{"EMA <decay>": "CHECKPOINT:ema_<decay>"} for every EMA collector the run checkpoint holds,
    by increasing decay; {} for None or a checkpoint without EMAs."""
    if checkpoint is None:
        return {}
    held = load_checkpoint(checkpoint).get("collectors") or {}
    decays = sorted((name.removeprefix(EMA_PREFIX) for name in held if name.startswith(EMA_PREFIX)),
                    key=float)  # fmt: skip
    return {f"EMA {decay}": f"{checkpoint}:{EMA_PREFIX}{decay}" for decay in decays}


def origin_specs(cfg: DictConfig) -> dict[str, str]:
    """cfg.origins as {name: CHECKPOINT:SELECTOR} (refused unless a non-empty mapping), then the
    EMAs of cfg.ema_checkpoint (ema_specs) not already named."""
    if not isinstance(cfg.origins, DictConfig) or not cfg.origins:
        raise AnalysisError(
            f"origins must map names to points (origins.NAME=CHECKPOINT:SELECTOR), "
            f"got {cfg.origins!r}"
        )
    specs = {str(name): str(spec) for name, spec in cfg.origins.items()}
    emas = ema_specs(cfg.get("ema_checkpoint"))
    return {**specs, **{name: spec for name, spec in emas.items() if name not in specs}}


def origin_points(specs: dict[str, str], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: load_point(spec, model) for name, spec in specs.items()}


def origin_buffers(specs: dict[str, str], model: torch.nn.Module) -> dict:
    return {name: load_buffers(spec, model) for name, spec in specs.items()}


def prepared(ctx: RunContext, origins: dict[str, torch.Tensor], settings, analysis: str, config):
    """Checked settings, the hash inputs and the config to store (before any work)."""
    if not origins:
        raise AnalysisError(f"{analysis} needs at least one origin")
    settings.check(next(iter(origins.values())).numel(), len(ctx.data.train_y))
    # batch_size is speed only, except for sharpness' per-batch maximisation
    speed_only = () if analysis == "sharpness" else ("batch_size",)
    hashed = {k: v for k, v in asdict(settings).items() if k not in speed_only}
    described = {
        "analysis": analysis,
        "origins": list(origins),
        **context_settings(ctx),
        "stream_seed": ctx.seed,
        analysis: hashed,
    }
    digest = inputs_hash(list(origins.values()), described)
    return digest, {**described, **(config or {})}


def progress_bar(total: int, todo: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, initial=total - todo, desc=desc,
                disable=None if progress else True, dynamic_ncols=True)  # fmt: skip


# --------------------------------------------------------------------------- hessian


def hessian_of_origin(ctx, vector, buffers, batches, density_batches, s: HessianSettings) -> dict:
    """Every hessian number of one origin (module doc), its BN statistics refreshed first."""
    start = time.perf_counter()
    values = refresh_with_test_accuracy(ctx, vector, buffers)
    train = evaluate(ctx.model, batches)
    op = HessianOperator(ctx.model, batches)
    top = extreme_eigenpairs(op, s.top_k, "LA", s.tol, s.seed, s.maxiter, s.ncv)
    low = extreme_eigenpairs(op, 1, "SA", s.tol, s.seed, s.maxiter, s.ncv)
    trace = hutchinson_trace(op, s.probes, s.seed)
    density_op = HessianOperator(ctx.model, density_batches)
    nodes, weights = slq(density_op, s.density_runs, s.density_steps, s.seed)
    grid, density = gaussian_density(nodes, weights, s.density_points, s.density_sigma)
    _, sizes = parameter_table(ctx.model)
    norms = parameter_norms(sizes, vector)
    return {
        **values,
        "weight_norm": float(np.sqrt((norms**2).sum())),
        "param_norms": norms,
        "train_nll": train["nll"],
        "train_err": train["err"],
        "top_eigenvalues": top.values,
        "top_residuals": top.residuals,
        "top_converged": top.converged,
        "min_eigenvalue": low.values[0],
        "min_residual": low.residuals[0],
        "min_converged": low.converged,
        "trace": trace.mean,
        "trace_se": trace.standard_error,
        "trace_samples": trace.samples,
        "slq_nodes": nodes,
        "slq_weights": weights,
        "density_grid": grid,
        "density": density,
        "hvp_products": op.products + density_op.products,
        "seconds": time.perf_counter() - start,
    }


def hessian_results(origins: int, layers: int, s: HessianSettings) -> dict[str, np.ndarray]:
    """The hessian result arrays of `origins` origins, not yet computed (NaN, counts 0)."""
    o, k, runs, steps = origins, s.top_k, s.density_runs, s.density_steps
    shapes = {
        **dict.fromkeys(("weight_norm", "test_acc_own_bn", "test_acc", "train_nll", "train_err",
                         "min_eigenvalue", "min_residual", "trace", "trace_se", "seconds"), (o,)),
        **dict.fromkeys(("top_eigenvalues", "top_residuals"), (o, k)),
        **dict.fromkeys(("slq_nodes", "slq_weights"), (o, runs, steps)),
        **dict.fromkeys(("density_grid", "density"), (o, s.density_points)),
        "param_norms": (o, layers),
        "trace_samples": (o, s.probes),
    }  # fmt: skip
    results = {key: np.full(shape, np.nan) for key, shape in shapes.items()}
    for key in ("top_converged", "min_converged", "hvp_products"):
        results[key] = np.zeros(o, dtype=np.int64)
    return results


def compute_hessian(
    ctx: RunContext,
    origins: dict[str, torch.Tensor],
    out_path: str | Path,
    settings: HessianSettings = HessianSettings(),
    buffers: dict[str, dict | None] | None = None,
    progress: bool = True,
    config: dict | None = None,
) -> dict[str, np.ndarray]:
    """The hessian numbers of every origin into `out_path` (resuming it); returns its arrays.
    `buffers`: each origin's stored BN statistics (specs.load_buffers), for test_acc_own_bn."""
    digest, stored_config = prepared(ctx, origins, settings, "hessian", config)
    s, n_train = settings, len(ctx.data.train_y)
    images, density_images = subset_size(s.images, n_train), subset_size(s.density_images, n_train)
    names, sizes = parameter_table(ctx.model)
    fixed = {
        "origins": np.array(list(origins), dtype=str),
        "n_params": np.int64(sizes.sum()),
        "images": np.int64(images),
        "density_images": np.int64(density_images),
        "param_names": names,
        "param_sizes": sizes,
    }
    results = hessian_results(len(origins), len(names), s)
    store = open_results(out_path, (len(origins),), results, fixed, stored_config, digest)
    todo = store.todo()
    batches = fixed_batches(ctx, images, s.batch_size, s.seed) if todo else []
    density_batches = fixed_batches(ctx, density_images, s.batch_size, s.seed) if todo else []
    names, vectors, buffers = list(origins), list(origins.values()), buffers or {}
    with progress_bar(len(origins), len(todo), "hessian", progress) as bar:
        for unit in todo:
            o = unit[0]
            store.record(
                unit,
                hessian_of_origin(
                    ctx, vectors[o], buffers.get(names[o]), batches, density_batches, s
                ),
            )
            bar.update()
    return store.arrays


# --------------------------------------------------------------------------- sharpness


def sharpness_of_origin(ctx, vector, batches, s: SharpnessSettings) -> dict:
    start = time.perf_counter()
    load_origin(ctx, vector)
    train = evaluate(ctx.model, batches)
    s_avg, s_avg_se = average_sharpness(ctx.model, batches, s.rho_avg, s.avg_samples, s.seed)
    s_max = [worst_sharpness(ctx.model, batches, rho, s.max_steps) for rho in s.rho_max]
    return {
        "s_avg": s_avg,
        "s_avg_se": s_avg_se,
        "s_max": np.array(s_max),
        "sam": sam_sharpness(ctx.model, batches, s.rho_sam),
        "train_nll": train["nll"],
        "train_err": train["err"],
        "weight_norm": float(vector.double().norm()),
        "seconds": time.perf_counter() - start,
    }


def compute_sharpness(
    ctx: RunContext,
    origins: dict[str, torch.Tensor],
    out_path: str | Path,
    settings: SharpnessSettings = SharpnessSettings(),
    progress: bool = True,
    config: dict | None = None,
) -> dict[str, np.ndarray]:
    """S_avg, S_max and SAM sharpness of every origin into `out_path` (resuming it)."""
    digest, stored_config = prepared(ctx, origins, settings, "sharpness", config)
    s, o = settings, len(origins)
    shapes = {"s_avg": (o, len(s.rho_avg)), "s_avg_se": (o, len(s.rho_avg)),
              "s_max": (o, len(s.rho_max)), "sam": (o, len(s.rho_sam)), "train_nll": (o,),
              "train_err": (o,), "weight_norm": (o,), "seconds": (o,)}  # fmt: skip
    results = {key: np.full(shape, np.nan) for key, shape in shapes.items()}
    fixed = {"origins": np.array(list(origins), dtype=str), "rho_avg": np.array(s.rho_avg),
             "rho_max": np.array(s.rho_max), "rho_sam": np.array(s.rho_sam)}  # fmt: skip
    store = open_results(out_path, (o,), results, fixed, stored_config, digest)
    todo = store.todo()
    if todo:
        batches = fixed_batches(ctx, s.images, s.batch_size, s.seed)
    vectors = list(origins.values())
    with progress_bar(o, len(todo), "sharpness", progress) as bar:
        for unit in todo:
            store.record(unit, sharpness_of_origin(ctx, vectors[unit[0]], batches, s))
            bar.update()
    return store.arrays


# --------------------------------------------------------------------------- around


def around_row(ctx, w, d1, d2, a: float, b: np.ndarray, batches) -> dict[str, np.ndarray]:
    """Train NLL and error at w + a d1 + b_j d2 for every b_j, on the origin's BN statistics."""
    nll, err = np.empty(len(b)), np.empty(len(b))
    for j, b_j in enumerate(b):
        set_parameters(ctx.model, w + a * d1 + b_j * d2)
        metrics = evaluate(ctx.model, batches)
        nll[j], err[j] = metrics["nll"], metrics["err"]
    return {"train_nll": nll, "train_err": err}


def compute_around(
    ctx: RunContext,
    origins: dict[str, torch.Tensor],
    out_path: str | Path,
    settings: AroundSettings = AroundSettings(),
    progress: bool = True,
    config: dict | None = None,
) -> dict[str, np.ndarray]:
    """The filter-normalised plane around every origin into `out_path` (resuming it).

    Li et al.: directions d1, d2 = filter_direction(seed, 0 / 1, w) (the same Gaussian draws for
    every origin), the train loss in eval mode without augmentation on the fixed subset; BN
    statistics refreshed once at the origin and kept over its plane (loss-landscape's
    dir_type weights keeps the origin's statistics likewise).
    """
    digest, stored_config = prepared(ctx, origins, settings, "around", config)
    s, o, g = settings, len(origins), settings.grid_points
    images = subset_size(s.images, len(ctx.data.train_y))
    device, shapes = next(ctx.model.parameters()).device, parameter_shapes(ctx.model)
    starts = [w.to(device, torch.float64) for w in origins.values()]
    directions = [[filter_direction(s.seed, i, w, shapes) for i in (0, 1)] for w in starts]
    coords = np.linspace(-s.span, s.span, g)
    results = {key: np.full((o, g, g), np.nan) for key in ("train_nll", "train_err")}
    fixed = {
        "origins": np.array(list(origins), dtype=str),
        "a": coords,
        "b": coords,
        "weight_norm": np.array([float(w.norm()) for w in starts]),
        "direction_norms": np.array([[float(d.norm()) for d in pair] for pair in directions]),
    }
    store = open_results(out_path, (o, g), results, fixed, stored_config, digest)
    todo = store.todo()
    batches = fixed_batches(ctx, images, s.batch_size, s.seed) if todo else []
    current = None
    with progress_bar(o * g, len(todo), "around", progress) as bar:
        for unit in todo:
            origin, row = unit
            if origin != current:
                load_origin(ctx, starts[origin])
                current = origin
            d1, d2 = directions[origin]
            store.record(
                unit, around_row(ctx, starts[origin], d1, d2, coords[row], coords, batches)
            )
            bar.update()
    return store.arrays
