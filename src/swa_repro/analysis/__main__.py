"""Command line of the figure analyses.

    python -m swa_repro.analysis NAME [key=value ...]
        NAME: fge, line, plane, rays, trajectory; hessian, sharpness, around (docs/flatness.md)
    python -m swa_repro.analysis --help                    the analyses, one line each
    python -m swa_repro.analysis NAME --help               NAME's keys, defaults and meanings

Each NAME is configured by conf/analysis/NAME.yaml (keys documented there, all overridable;
defaults: the paper's PreResNet164 CIFAR-100 runs) and writes one .npz (FGE also a samples
file), whose path it prints. Bad input (a missing run directory or checkpoint, a checkpoint
without what is asked of it, a bad setting) stops with a one-line "error: ..." and exit 2; a
missing input that one of the set-up's default runs should hold names the command that
trains that run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from swa_repro import REPO_ROOT
from swa_repro.analysis import usage
from swa_repro.analysis.common import AnalysisError
from swa_repro.analysis.fge import compute_fge
from swa_repro.analysis.flatness import (
    AroundSettings,
    HessianSettings,
    SharpnessSettings,
    compute_around,
    compute_hessian,
    compute_sharpness,
    origin_buffers,
    origin_points,
    origin_specs,
    settings_from,
)
from swa_repro.analysis.line import compute_line
from swa_repro.analysis.plane import compute_plane
from swa_repro.analysis.points import RunContext, load_context
from swa_repro.analysis.rays import compute_rays
from swa_repro.analysis.specs import check_run_dir, load_point
from swa_repro.analysis.trajectory import compute_trajectory
from swa_repro.checkpoint import CheckpointError
from swa_repro.cli import EXIT_USER_ERROR, figure_runs_command, table_runs_command
from swa_repro.config_check import ConfigError
from swa_repro.data import DataError
from swa_repro.run_files import setup_run  # also registers the resolvers of base.yaml's paths

ANALYSIS_CONF_DIR = str(REPO_ROOT / "conf" / "analysis")


def context(cfg: DictConfig) -> RunContext:
    """The RunContext of cfg.run_dir with the analysis' device, eval batch size and seed."""
    run_dir = check_run_dir(cfg.run_dir)
    return load_context(run_dir, cfg.device, cfg.eval_batch_size, cfg.seed)


def record(cfg: DictConfig) -> dict:
    """The resolved analysis settings, stored in the output's config JSON."""
    return {"settings": OmegaConf.to_container(cfg, resolve=True)}


def run_plane(cfg: DictConfig) -> list[Path]:
    ctx = context(cfg)
    points = [load_point(cfg[key], ctx.model) for key in ("w0", "w1", "w2")]
    extra = {str(name): load_point(spec, ctx.model) for name, spec in cfg.extra.items()}
    compute_plane(
        ctx,
        *points,
        extra,
        cfg.out,
        grid_points=cfg.grid_points,
        margin=cfg.margin,
        labels=tuple(str(label) for label in cfg.labels),
        progress=cfg.progress,
        config=record(cfg),
        points_per_pass=cfg.points_per_pass,
        multipoint_mode=cfg.multipoint_mode,
    )
    return [Path(cfg.out)]


def run_line(cfg: DictConfig) -> list[Path]:
    ctx = context(cfg)
    compute_line(
        ctx,
        load_point(cfg.swa, ctx.model),
        load_point(cfg.sgd, ctx.model),
        cfg.out,
        t_min=cfg.t_min,
        t_max=cfg.t_max,
        n_points=cfg.n_points,
        progress=cfg.progress,
        config=record(cfg),
        points_per_pass=cfg.points_per_pass,
        multipoint_mode=cfg.multipoint_mode,
    )
    return [Path(cfg.out)]


def run_rays(cfg: DictConfig) -> list[Path]:
    ctx = context(cfg)
    origins = origin_points(origin_specs(cfg), ctx.model)
    compute_rays(
        ctx,
        origins,
        cfg.out,
        n_directions=cfg.n_directions,
        max_distance=cfg.max_distance,
        n_distances=cfg.n_distances,
        seed=cfg.seed,
        progress=cfg.progress,
        config=record(cfg),
        points_per_pass=cfg.points_per_pass,
        multipoint_mode=cfg.multipoint_mode,
        directions=cfg.directions,
    )
    return [Path(cfg.out)]


def run_hessian(cfg: DictConfig) -> list[Path]:
    ctx, specs = context(cfg), origin_specs(cfg)
    origins, buffers = origin_points(specs, ctx.model), origin_buffers(specs, ctx.model)
    settings = settings_from(HessianSettings, cfg)
    compute_hessian(ctx, origins, cfg.out, settings, buffers, cfg.progress, record(cfg))
    return [Path(cfg.out)]


def run_sharpness(cfg: DictConfig) -> list[Path]:
    ctx, specs = context(cfg), origin_specs(cfg)
    settings = settings_from(SharpnessSettings, cfg)
    compute_sharpness(
        ctx, origin_points(specs, ctx.model), cfg.out, settings, cfg.progress, record(cfg)
    )
    return [Path(cfg.out)]


def run_around(cfg: DictConfig) -> list[Path]:
    ctx, specs = context(cfg), origin_specs(cfg)
    settings = settings_from(AroundSettings, cfg)
    compute_around(
        ctx, origin_points(specs, ctx.model), cfg.out, settings, cfg.progress, record(cfg)
    )
    return [Path(cfg.out)]


def run_fge(cfg: DictConfig) -> list[Path]:
    ctx = context(cfg)
    compute_fge(
        ctx,
        cfg.checkpoint,
        cfg.out,
        cfg.samples_out,
        lr1=cfg.lr1,
        lr2=cfg.lr2,
        cycle_epochs=cfg.cycle_epochs,
        epochs=cfg.epochs,
        progress=cfg.progress,
        config=record(cfg),
    )
    return [Path(cfg.out), Path(cfg.samples_out)]


def run_trajectory(cfg: DictConfig) -> list[Path]:
    ctx = context(cfg)
    label = {"label": cfg.label} if cfg.label is not None else {}
    compute_trajectory(
        ctx,
        cfg.run_dir,
        cfg.out,
        epochs=list(cfg.epochs) if cfg.epochs is not None else None,
        which=cfg.which,
        grid_points=cfg.grid_points,
        margin=cfg.margin,
        progress=cfg.progress,
        config={**record(cfg), **label},
        points_per_pass=cfg.points_per_pass,
        multipoint_mode=cfg.multipoint_mode,
    )
    return [Path(cfg.out)]


ANALYSES = {
    "fge": run_fge,
    "line": run_line,
    "plane": run_plane,
    "rays": run_rays,
    "trajectory": run_trajectory,
    "hessian": run_hessian,
    "sharpness": run_sharpness,
    "around": run_around,
}


POINT_KEYS = ("w0", "w1", "w2", "swa", "sgd")  # CHECKPOINT:SELECTOR
PATH_KEYS = ("run_dir", "checkpoint", "ema_checkpoint")  # plain paths (null: none)
ERRORS = (
    AnalysisError,
    CheckpointError,
    ConfigError,
    DataError,
    HydraException,
    OmegaConfBaseException,
)


def inputs(cfg: DictConfig) -> list[Path]:
    """The run directory and checkpoints the analysis reads."""
    specs = [cfg[k] for k in POINT_KEYS if k in cfg]
    specs += [*cfg.get("origins", {}).values(), *cfg.get("extra", {}).values()]
    paths = [str(cfg[k]) for k in PATH_KEYS if cfg.get(k) is not None]
    return [Path(p) for p in paths + [str(spec).rpartition(":")[0] for spec in specs]]


def check_inputs(cfg: DictConfig) -> None:
    """AnalysisError naming the command that makes it if the first missing input is one that the
    set-up's runs should hold (the Table 1 runs; the figures' SGD solution and FGE samples);
    any other missing input is left to the analysis' own error."""
    runs, setup, seed = cfg.runs, cfg.setup, cfg.run_seed
    sgd_run, swa_run = (Path(setup_run(runs, setup, method, seed)) for method in ("sgd", "swa"))
    table = table_runs_command(runs, *setup.split("/"), seed)
    figures = figure_runs_command(runs, setup, seed)
    makers = {sgd_run: table, swa_run: table, Path(cfg.sgd_solution_run): figures}
    makers[Path(cfg.out_dir)] = figures
    missing = next((path for path in inputs(cfg) if not path.exists()), None)
    for folder, command in makers.items():
        if missing is not None and (missing == folder or folder in missing.parents):
            raise AnalysisError(f"{missing} does not exist; make it first: {command}")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def compose_analysis(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=ANALYSIS_CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def print_help(name: str, overrides: list[str]) -> None:
    """NAME's keys, with the values its defaults take under `overrides` (if they compose)."""
    try:
        cfg = OmegaConf.create(
            OmegaConf.to_container(compose_analysis(name, overrides), resolve=True)
        )
    except ERRORS:
        cfg = OmegaConf.create()
    keys = usage.keys(name) + usage.keys("base")
    resolved = {key.name: OmegaConf.select(cfg, key.name) for key in keys}
    print(usage.analysis_help(name, {k: str(v) for k, v in resolved.items() if v is not None}))


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]):
        print(usage.listing(list(ANALYSES)))
        return 0
    if not argv or argv[0] not in ANALYSES:
        if not argv:
            print(usage.listing(list(ANALYSES)), file=sys.stderr)
        problem = f"analysis name {argv[0]!r} unknown" if argv else "no analysis named"
        print(f"error: {problem}; choose one of {', '.join(ANALYSES)}", file=sys.stderr)
        return EXIT_USER_ERROR
    name, overrides = argv[0], argv[1:]
    if "--help" in overrides or "-h" in overrides:
        print_help(name, [o for o in overrides if o not in ("--help", "-h")])
        return 0
    try:
        cfg = compose_analysis(name, overrides)
        check_inputs(cfg)
        print(f"{name}: writing {cfg.out}")
        written = ANALYSES[name](cfg)
    except ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in written:
        print(f"{name}: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
