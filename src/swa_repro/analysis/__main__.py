"""Command line of the figure analyses.

    python -m swa_repro.analysis NAME [key=value ...]
        NAME: fge, line, plane, rays, trajectory; hessian, sharpness, around (docs/flatness.md)

Each NAME is configured by conf/analysis/NAME.yaml (keys documented there, all overridable;
defaults: the paper's PreResNet164 CIFAR-100 runs) and writes one .npz (FGE also a samples
file), whose path it prints. Bad input (a missing run directory or checkpoint, a checkpoint
without what is asked of it, a bad setting) stops with a one-line "error: ..." and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from swa_repro import REPO_ROOT
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
from swa_repro.cli import EXIT_USER_ERROR
from swa_repro.config_check import ConfigError
from swa_repro.data import DataError

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
    origins = {str(name): load_point(spec, ctx.model) for name, spec in cfg.origins.items()}
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


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ANALYSES:
        given = f"'{argv[0]}'" if argv else "none"
        print(
            f"error: analysis name {given} unknown; usage: python -m swa_repro.analysis "
            f"{{{','.join(ANALYSES)}}} [key=value ...]",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    name, overrides = argv[0], argv[1:]
    try:
        with initialize_config_dir(config_dir=ANALYSIS_CONF_DIR, version_base="1.3"):
            cfg = compose(name, overrides=overrides)
        print(f"{name}: writing {cfg.out}")
        written = ANALYSES[name](cfg)
    except (
        AnalysisError,
        CheckpointError,
        ConfigError,
        DataError,
        HydraException,
        OmegaConfBaseException,
    ) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in written:
        print(f"{name}: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
