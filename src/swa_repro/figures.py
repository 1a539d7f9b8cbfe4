"""Regenerate every figure of the paper from training runs, computing only what is missing.

    python -m swa_repro.figures [--runs runs] [--setup cifar100/preresnet164] [--seed 0]
    python -m swa_repro.figures --demo     # the demo's synthetic runs, small grids, CPU, minutes

Needs the Table 1 SGD and SWA runs of the setup (experiment=<setup>_sgd / _swa). Steps, each
skipped when its output is complete (interrupted grids and runs resume):
  1. SGD continued from the SWA run's last pre-averaging checkpoint (epoch swa_start - 1, e.g.
     125) on the SGD run's schedule: the protocol's "SGD and SWA solutions started from the same
     SGD model at epoch 125". Two more continuations from that point, with a constant and a
     cyclical LR, keep every epoch: the trajectories of Figure 2 (LR values [UNVERIFIED]).
     They inherit the SGD run's saved settings (data, model, optimiser, speed), then --extra.
  2. Analyses (python -m swa_repro.analysis), after a plan that lists each with its state and
     an estimate of its GPU-hours (swa_repro.analysis_cost): the plane through (epoch-125 model,
     SGD solution, SWA solution) (Figure 1 middle/right); FGE from 0.8 of the SGD run and the
     plane through three FGE samples with their mean (Figure 1 left); the SWA-SGD line; random
     rays from both solutions and from each EMA of the SWA run; the two trajectory planes
     (Figure 2); beyond the paper (docs/flatness.md), hessian, sharpness and around (the
     filter-normalised planes) at the SGD solution, SWA and each EMA, sized by --flatness.
  3. Every plot script draws into --out (PNG + PDF), the flatness table of this seed is written
     beside them as markdown (swa_repro.sharpness_table), and the paths are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from swa_repro import REPO_ROOT, analysis_cost, layout, sharpness_table, train
from swa_repro.analysis import __main__ as analysis_command
from swa_repro.analysis.flatness import (
    AroundSettings,
    HessianSettings,
    SharpnessSettings,
)
from swa_repro.cli import first_line, one_line_errors, read_yaml, table_runs_command
from swa_repro.config_check import ConfigError, is_number
from swa_repro.layout import RunPaths
from swa_repro.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from swa_repro.run_files import RunFiles, write_text_atomic
from swa_repro.sweep import load_bench, macs_per_image, split_sizes

PAPER_SIZES = {
    "grid": 21,
    "rays_max_distance": 50.0,
    "rays_directions": 10,
    "rays_distances": 21,
    "line_points": 31,
    "flatness": "paper",
}
DEMO_SIZES = {
    "grid": 7,
    "rays_max_distance": 30.0,
    "rays_directions": 3,
    "rays_distances": 7,
    "line_points": 13,
    "flatness": "demo",
}
# The flatness analyses' settings by --flatness (keys of conf/analysis/<name>.yaml; a key not
# given keeps its default there); subsets larger than the training set are cut to it.
FLATNESS = {
    # the defaults (hessian and around on the whole training set, sharpness on 1024 images),
    # the filter-normalised planes 51 x 51 as Li et al.'s
    "paper": {"hessian": {}, "sharpness": {}, "around": {"grid_points": 51}},
    # a few CPU minutes: small subsets, eigsh stopped after 3 restarts (non-convergence reported)
    "demo": {
        "hessian": {"images": 128, "top_k": 3, "tol": 0.01, "maxiter": 3, "ncv": 8,
                    "probes": 10, "density_images": 128, "density_runs": 2, "density_steps": 16},
        "sharpness": {"images": 256, "avg_samples": 4, "max_steps": 5},
        "around": {"images": 1000, "grid_points": 9},
    },
    # the least that runs every step (tests)
    "smoke": {
        "hessian": {"images": 16, "batch_size": 8, "top_k": 1, "tol": 0.1, "maxiter": 1,
                    "ncv": 3, "probes": 2, "density_images": 8, "density_runs": 1,
                    "density_steps": 3, "density_points": 50},
        "sharpness": {"images": 16, "batch_size": 8, "rho_avg": (0.1,), "rho_max": (1.0,),
                      "rho_sam": (0.05,), "avg_samples": 2, "max_steps": 1},
        "around": {"images": 16, "grid_points": 2},
    },
}  # fmt: skip
FLATNESS_SETTINGS = {"hessian": HessianSettings, "sharpness": SharpnessSettings,
                     "around": AroundSettings}  # fmt: skip


def run(command: list[str]) -> None:
    """Run one step, printed first as the command that does the same by hand, in this process:
    the interpreter start and the imports (seconds each) are paid once, not per step."""
    print("+ " + shlex.join(command), flush=True)
    code = in_process(command[1:])
    if code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):  # the step checkpointed and said how to resume
        sys.exit(code)
    if code != 0:
        sys.exit(f"error: step failed (exit {code}); rerun the same command to continue")


def in_process(argv: list[str]) -> int:
    """The exit code of `python ARGV` run here: -m swa_repro.train, -m swa_repro.analysis, or a
    plot script (its folder on sys.path, as for a script)."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    try:
        if argv[:2] == ["-m", "swa_repro.train"]:
            sys.argv = ["swa_repro.train", *argv[2:]]
            train.cli()
            return 0
        if argv[:2] == ["-m", "swa_repro.analysis"]:
            return analysis_command.main(argv[2:])
        sys.argv = list(argv)
        sys.path.insert(0, str(Path(argv[0]).parent))
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def complete(npz: Path, overrides: list[str]) -> bool:
    """An analysis output whose every point is computed, with the numeric settings asked for
    (ConfigError if it was made with others: it is not overwritten)."""
    if not npz.is_file():
        return False
    try:
        with np.load(npz) as data:
            saved = json.loads(str(data["config"]))
            done = "done" not in data.files or bool(data["done"].all())
    except Exception as exc:
        raise ConfigError(
            f"{npz} is not a readable analysis file ({type(exc).__name__}); move it away to recompute"
        ) from None
    own = saved.get(str(saved.get("analysis")))  # the flatness analyses' settings section
    saved = own if isinstance(own, dict) else saved  # (beside it: the run's, not the analysis')
    for key, text in (o.split("=", 1) for o in overrides if "=" in o):
        value = yaml.safe_load(text)
        if is_number(value) and key in saved and saved[key] != value:
            raise ConfigError(
                f"{npz} was computed with {key}={saved[key]}, not {value}: move it away to "
                "recompute, or ask for the settings it has"
            )
    return done


# Keys a continuation sets itself (its schedule, length, kept checkpoints, name) or that do not
# change its numbers (logging, the device): not inherited.
NOT_INHERITED = {"name", "seed", "resume", "paths", "progress", "schedule", "epochs", "budget"}
NOT_INHERITED |= {"checkpoint", "method", "logger", "device"}


def inherited_overrides(run: dict, fresh: dict, prefix: str = "") -> list[str]:
    """Hydra overrides that give `fresh` (an experiment's config) the values of `run` (a run's
    saved config), except NOT_INHERITED: what the run was trained with beyond its experiment."""
    out = []
    for key, value in run.items():
        path = f"{prefix}{key}"
        if not prefix and key in NOT_INHERITED:
            continue
        if key not in fresh:
            out.append(f"+{path}={json.dumps(value)}")
        elif isinstance(value, dict) and isinstance(fresh[key], dict):
            out += inherited_overrides(value, fresh[key], f"{path}.")
        elif value != fresh[key]:
            out.append(f"{path}={json.dumps(value)}")
    return out


def continuation_base(experiment: str, run_dir: Path) -> list[str]:
    """`experiment=...` plus the overrides the run at `run_dir` was trained with (its data,
    model, optimiser, speed ... settings), checked by composing them."""
    from swa_repro.compose import compose_config  # Hydra's compose: only when training is due

    def composed(overrides: list[str]) -> dict:
        try:
            return OmegaConf.to_container(compose_config(overrides), resolve=True)
        except HydraException as exc:
            raise ConfigError(
                f"cannot reproduce the settings of {run_dir} for the runs trained here "
                f"({first_line(exc)}); pass them with --extra"
            ) from None

    saved = OmegaConf.to_container(read_yaml(RunPaths(run_dir).config, "run config"))
    base = [f"experiment={experiment}"]
    base += inherited_overrides(saved, composed(base))
    left = inherited_overrides(saved, composed(base))
    if left:
        raise ConfigError(
            f"cannot reproduce the settings of {run_dir} for the runs trained here "
            f"(still differing: {', '.join(left)}); pass them with --extra"
        )
    return base


def train_run(overrides: list[str], run_dir: Path) -> None:
    if RunFiles(run_dir).status().state != "finished":
        run([sys.executable, "-m", "swa_repro.train", *overrides])


def analysis(name: str, out: Path, overrides: list[str], base: list[str]) -> None:
    if not complete(out, overrides):
        run([sys.executable, "-m", "swa_repro.analysis", name, *base, *overrides, f"out={out}"])


def plot(script: str, inputs: list[Path], out: Path, *options: str) -> list[Path]:
    run(
        [
            sys.executable,
            str(REPO_ROOT / "plots" / f"{script}.py"),
            *map(str, inputs),
            "--out",
            str(out),
            *options,
        ]
    )
    return [out.with_suffix(".png"), out.with_suffix(".pdf")]


@dataclass
class Figures:
    """One set-up's runs and folders (through swa_repro.layout) and the settings of its figures."""

    runs: Path
    setup: str  # <dataset>/<model>
    seed: int
    args: argparse.Namespace

    @property
    def dataset(self) -> str:
        return self.setup.split("/")[0]

    @property
    def model(self) -> str:
        return self.setup.split("/")[1]

    def run_dir(self, method: str) -> Path:
        """The run directory of `method` (sgd, swa, or a continuation's name) of this set-up."""
        return layout.run_dir(self.runs, self.dataset, self.model, method, self.seed)

    @property
    def data_dir(self) -> Path:
        return layout.analyses_dir(self.runs, self.setup, self.seed)

    @property
    def common(self) -> list[str]:
        """The overrides of every run trained here."""
        extra = shlex.split(self.args.extra)
        return [f"seed={self.seed}", f"paths.runs={self.runs}", "progress=false", *extra]


def parse_args(argv: list[str] | None) -> Figures:
    parser = argparse.ArgumentParser(description="Regenerate every figure from training runs.")
    parser.add_argument(
        "--runs", type=Path, default=None, help="runs root (default runs, or runs/demo with --demo)"
    )
    parser.add_argument(
        "--setup", default="cifar100/preresnet164", help="<dataset>/<model> of the runs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs analysed")
    parser.add_argument(
        "--out", type=Path, default=None, help="figure folder (default figures/<setup>)"
    )
    parser.add_argument("--grid", type=int, default=None, help="G of the G x G planes (21; demo 7)")
    parser.add_argument(
        "--rays-max-distance",
        type=float,
        default=None,
        help="ray length (50 [UNVERIFIED]; demo 30)",
    )
    parser.add_argument(
        "--rays-directions", type=int, default=None, help="random directions (10; demo 3)"
    )
    parser.add_argument(
        "--rays-distances", type=int, default=None, help="points per ray (21; demo 7)"
    )
    parser.add_argument(
        "--line-points", type=int, default=None, help="points on the SWA-SGD line (31; demo 13)"
    )
    parser.add_argument(
        "--flatness",
        default=None,
        help="sizes of the hessian, sharpness and around analyses: paper (their defaults, "
        "51 x 51 planes), demo (small subsets, the default with --demo), smoke (tests)",
    )
    parser.add_argument(
        "--trajectory-cycle",
        default=None,
        help="a1,a2 of the cyclical trajectory (default swa_lr,swa_lr/10)",
    )
    parser.add_argument(
        "--device", default="auto", help="of the analyses: auto | cpu | cuda | cuda:N"
    )
    parser.add_argument(
        "--points-per-pass",
        type=int,
        default=None,
        help="grid points evaluated in one pass over the data (default: conf/analysis/base.yaml's)",
    )
    parser.add_argument("--extra", default="", help="Hydra overrides for every run trained here")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the demo runs (runs/demo), small grids, trains what is missing",
    )
    return with_defaults(parser.parse_args(argv))


def with_defaults(args: argparse.Namespace) -> Figures:
    """The paper's or the demo's sizes where not given, the demo's set-up and folders."""
    for key, value in (DEMO_SIZES if args.demo else PAPER_SIZES).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.demo:
        args.setup = "synthetic/small_cnn"
    if args.setup.count("/") != 1:
        raise ConfigError(f"--setup must be <dataset>/<model>, got {args.setup!r}")
    if args.flatness not in FLATNESS:
        raise ConfigError(f"--flatness must be one of {', '.join(FLATNESS)}, got {args.flatness!r}")
    args.out = args.out or Path("figures") / args.setup.replace("/", "_")
    runs = args.runs or Path("runs/demo" if args.demo else "runs")
    return Figures(runs, args.setup, args.seed, args)


def table_runs(figs: Figures) -> tuple[DictConfig, DictConfig]:
    """The saved configs of the set-up's Table 1 SGD and SWA runs, trained here for the demo
    (otherwise ConfigError naming the command that trains them)."""
    for method in ("sgd", "swa"):
        path = figs.run_dir(method)
        if RunFiles(path).status().state != "finished":
            if not figs.args.demo:
                how = table_runs_command(figs.runs, figs.dataset, figs.model, figs.seed)
                raise ConfigError(f"{path} is not a finished run; train it first: {how}")
            train_run([f"experiment={figs.setup}_{method}", *figs.common], path)
    return tuple(read_yaml(RunPaths(figs.run_dir(m)).config, "run config") for m in ("sgd", "swa"))


def starting_points(figs: Figures, sgd_cfg: DictConfig, swa_cfg: DictConfig) -> tuple[int, int]:
    """The epochs whose kept checkpoints the figures start from: the SWA run's last before
    averaging (125), and 0.8 of the SGD run for FGE (ConfigError if one is not kept)."""
    start = math.ceil(swa_cfg.method.swa_start) - 1
    fge_start = sgd_cfg.budget * 4 // 5
    for method, epoch in (("swa", start), ("sgd", fge_start)):
        needed = RunPaths(figs.run_dir(method)).kept(epoch)
        if not needed.is_file():
            raise ConfigError(
                f"{needed} is missing; the experiment configs keep it (checkpoint.keep_epochs)"
            )
    return start, fge_start


def continuations(figs: Figures, start: int, sgd_cfg: DictConfig, swa_cfg: DictConfig) -> Path:
    """Step 1: train the SGD solution and the two trajectories from the epoch-`start` model;
    returns the SGD solution's checkpoint."""
    swa_lr = swa_cfg.method.swa_lr
    cycle = figs.args.trajectory_cycle
    a1, a2 = map(float, cycle.split(",")) if cycle else (swa_lr, swa_lr / 10)
    keep = "checkpoint.keep_every=1"
    trained_here = {
        f"sgd_from_epoch{start}": ["schedule=paper"],
        "trajectory_constant": ["schedule=constant", f"schedule.lr={swa_lr}", keep],
        "trajectory_cyclic": [
            "schedule=cyclic", f"schedule.a1={a1}", f"schedule.a2={a2}", "schedule.cycle_epochs=1", keep,
        ],
    }  # fmt: skip
    start_ckpt = RunPaths(figs.run_dir("swa")).kept(start)
    base = None
    for name, overrides in trained_here.items():
        if RunFiles(figs.run_dir(name)).status().state == "finished":
            continue
        # the SGD run's own settings (e.g. data.root given to the sweep), then --extra
        base = base or continuation_base(f"{figs.setup}_sgd", figs.run_dir("sgd"))
        horizon = f"epochs={sgd_cfg.epochs}", f"budget={sgd_cfg.epochs}"
        name_override = f"name={layout.run_name(figs.dataset, figs.model, name, figs.seed)}"
        train_run(
            [*base, *figs.common, *overrides, *horizon, f"resume={start_ckpt}", name_override],
            figs.run_dir(name),
        )
    return RunPaths(figs.run_dir(f"sgd_from_epoch{start}")).last


def analyses(
    figs: Figures, start: int, fge_start: int, sgd_solution: Path, sgd_cfg: DictConfig
) -> None:
    """Step 2: every analysis the figures draw (each skipped when complete)."""
    args, data_dir = figs.args, figs.data_dir
    sgd_run, swa_run = RunPaths(figs.run_dir("sgd")), RunPaths(figs.run_dir("swa"))
    base = [f"runs={figs.runs}", f"setup={figs.setup}", f"run_seed={figs.seed}"]
    base += [f"out_dir={data_dir}", f"device={args.device}"]
    base += [] if args.points_per_pass is None else [f"points_per_pass={args.points_per_pass}"]
    swa_point, sgd_point = f"{swa_run.last}:swa", f"{sgd_solution}:model"
    grid = [f"grid_points={args.grid}"]
    analysis(
        "plane", data_dir / "plane.npz",
        [f"w0={swa_run.kept(start)}:model", f"w1={sgd_point}", f"w2={swa_point}", f"labels=[epoch {start},SGD,SWA]", *grid],
        base,
    )  # fmt: skip
    fge_samples(figs, base, sgd_run.kept(fge_start), fge_epochs(sgd_cfg, fge_start))
    analysis(
        "line", data_dir / "line.npz",
        [f"swa={swa_point}", f"sgd={sgd_point}", f"n_points={args.line_points}"],
        base,
    )  # fmt: skip
    analysis(
        "rays", data_dir / "rays.npz",
        [
            f"origins.SWA={swa_point}", f"origins.SGD={sgd_point}", f"ema_checkpoint={swa_run.last}",
            f"max_distance={args.rays_max_distance}", f"n_directions={args.rays_directions}",
            f"n_distances={args.rays_distances}",
        ],
        base,
    )  # fmt: skip
    for kind, label in (("constant", "constant LR"), ("cyclic", "cyclical LR")):
        trajectory = figs.run_dir(f"trajectory_{kind}")
        overrides = [f"run_dir={trajectory}", f"label={label}", *grid]
        analysis("trajectory", data_dir / f"trajectory_{kind}.npz", overrides, base)
    flatness_analyses(figs, base, swa_run, sgd_point, split_sizes(sgd_cfg)[0])


def flatness_settings(figs: Figures, n_train: int) -> dict[str, dict]:
    """Analysis -> every setting of --flatness (the analysis' defaults where it names none, so
    that a stored result made with other sizes is never taken for this one), subsets no larger
    than the `n_train` images."""
    subsets = ("images", "density_images")
    resolved = {
        name: asdict(FLATNESS_SETTINGS[name](**given))
        for name, given in FLATNESS[figs.args.flatness].items()
    }
    return {
        name: {k: min(v, n_train) if k in subsets and v is not None else v for k, v in s.items()}
        for name, s in resolved.items()
    }


def flatness_analyses(
    figs: Figures, base: list[str], swa_run: RunPaths, sgd_point: str, n_train: int
) -> None:
    """hessian, sharpness and around (docs/flatness.md) at the SGD solution, SWA and each EMA of
    the SWA run's last checkpoint (the EMAs of the iterates SWA averages)."""
    origins = [f"origins.SGD={sgd_point}", f"origins.SWA={swa_run.last}:swa"]
    origins.append(f"ema_checkpoint={swa_run.last}")
    for name, settings in flatness_settings(figs, n_train).items():
        overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
        out = layout.analysis_file(figs.runs, figs.setup, figs.seed, name)
        analysis(name, out, [*origins, *overrides], base)


def fge_epochs(sgd_cfg: DictConfig, fge_start: int) -> int:
    """FGE's length: the rest of the SGD run from `fge_start`, at least 3 FGE cycles."""
    return max(3 * fge_cycle_epochs(), sgd_cfg.budget - fge_start)


def fge_cycle_epochs() -> int:
    """The fge analysis' cycle length (one sample per cycle), as its config file sets it."""
    path = Path(analysis_command.ANALYSIS_CONF_DIR) / "fge.yaml"
    return int(read_yaml(path, "the fge analysis config").cycle_epochs)


def fge_samples(figs: Figures, base: list[str], checkpoint: Path, epochs: int) -> None:
    """FGE from `checkpoint` for `epochs` (the rest of the SGD run, at least 3 samples), then the
    plane through its first, middle and last samples with their mean (Figure 1 left)."""
    data_dir = figs.data_dir
    samples = data_dir / "fge_samples.pt"
    if not (data_dir / "fge.npz").is_file() or not samples.is_file():
        run([
            sys.executable, "-m", "swa_repro.analysis", "fge", *base, f"checkpoint={checkpoint}",
            f"epochs={epochs}", f"out={data_dir / 'fge.npz'}", f"samples_out={samples}",
        ])  # fmt: skip
    with np.load(data_dir / "fge.npz") as fge:
        n = len(fge["sample_test_acc"])
    first, middle, last = 0, n // 2, n - 1
    analysis(
        "plane", data_dir / "plane_fge.npz",
        [
            f"run_dir={figs.run_dir('sgd')}", f"w0={samples}:{first}", f"w1={samples}:{middle}", f"w2={samples}:{last}",
            f"labels=[FGE {first + 1},FGE {middle + 1},FGE {last + 1}]", f"+extra.SWA={samples}:mean",
            f"grid_points={figs.args.grid}",
        ],
        base,
    )  # fmt: skip


def draw(figs: Figures) -> list[Path]:
    """Step 3: every plot script, into --out; the paths written."""
    data_dir, out = figs.data_dir, figs.args.out
    trajectories = [data_dir / f"trajectory_{kind}.npz" for kind in ("constant", "cyclic")]
    written = plot(
        "convergence", [figs.run_dir("sgd"), figs.run_dir("swa")], out / "convergence.png"
    )
    written += plot("plane", [data_dir / "plane.npz"], out / "fig1_plane_sgd_swa.png")
    written += plot(
        "plane", [data_dir / "plane_fge.npz"], out / "fig1_plane_fge.png", "--metrics", "test_err"
    )
    written += plot("fge", [data_dir / "fge.npz"], out / "fge_ensemble.png")
    written += plot("trajectory", trajectories, out / "fig2_trajectories.png")
    written += plot("line", [data_dir / "line.npz"], out / "line_swa_sgd.png")
    written += plot("rays", [data_dir / "rays.npz"], out / "widths_rays.png")
    flatness = {
        n: layout.analysis_file(figs.runs, figs.setup, figs.seed, n) for n in FLATNESS_SETTINGS
    }
    written += plot("spectrum", [flatness["hessian"]], out / "hessian_spectrum.png")
    written += plot("around", [flatness["around"]], out / "around_filter_normalised.png")
    return written


def flatness_table(figs: Figures) -> Path:
    """The flatness table of this set-up and seed (swa_repro.sharpness_table) as markdown
    beside the figures."""
    path = figs.args.out / f"sharpness_{figs.dataset}.md"
    text = sharpness_table.table_markdown(figs.dataset, figs.runs, [figs.model], [figs.seed])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


def planned(
    figs: Figures, fge_start: int, sgd_cfg: DictConfig, swa_cfg: DictConfig
) -> dict[str, analysis_cost.Passes]:
    """The passes over the data of every analysis the figures run (swa_repro.analysis_cost),
    by output file stem."""
    args, (n, m) = figs.args, split_sizes(swa_cfg)
    point = analysis_cost.point(n, m)
    origins = 2 + len(swa_cfg.ema.decays)  # SGD, SWA and each EMA of the SWA run
    flat = {
        name: FLATNESS_SETTINGS[name](**settings)
        for name, settings in flatness_settings(figs, n).items()
    }
    return {
        "plane": point * args.grid**2,
        "fge": analysis_cost.fge(fge_epochs(sgd_cfg, fge_start), fge_cycle_epochs(), n, m),
        "plane_fge": point * args.grid**2,
        "line": point * args.line_points,
        "rays": point * (origins * args.rays_directions * args.rays_distances),
        "trajectory_constant": point * args.grid**2,
        "trajectory_cyclic": point * args.grid**2,
        "hessian": analysis_cost.hessian(flat["hessian"], n, m) * origins,
        "sharpness": analysis_cost.sharpness(flat["sharpness"], n) * origins,
        "around": analysis_cost.around(flat["around"], n) * origins,
    }


def left_to_do(npz: Path) -> float:
    """The fraction of an analysis output not yet computed (1 without a readable file)."""
    try:
        with np.load(npz) as data:
            return 1.0 - float(np.mean(data["done"])) if "done" in data.files else 0.0
    except Exception:  # missing or unreadable: the step itself says what is wrong
        return 1.0


def print_plan(figs: Figures, passes: dict[str, analysis_cost.Passes], cfg: DictConfig) -> None:
    """Each analysis with its state and GPU-hours left, measured (the GPU benchmark JSON, where
    it measured the model) or from FLOP counts."""
    rates = analysis_cost.measured_rates(load_bench(None), cfg)
    if rates is None:
        image_size = cfg.data.get("image_size", 32)
        macs = macs_per_image(cfg.model.name, cfg.data.num_classes, image_size)
        rates = analysis_cost.flop_rates(macs)
    print(f"analyses of the figures (GPU-hours left: {rates.basis}):")
    total = 0.0
    for name, counted in passes.items():
        left = left_to_do(figs.data_dir / f"{name}.npz")
        hours = left * rates.seconds(counted) / 3600
        state = {0.0: "done", 1.0: "to do"}.get(left, f"{1 - left:.0%} done")
        print(f"  {name:<20} {state:<9} {hours:10.3g} GPU-h")
        total += hours
    print(f"  about {total:.3g} GPU-hours left (training the figures' own runs not counted)")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    figs = parse_args(argv)
    sgd_cfg, swa_cfg = table_runs(figs)
    start, fge_start = starting_points(figs, sgd_cfg, swa_cfg)
    print_plan(figs, planned(figs, fge_start, sgd_cfg, swa_cfg), swa_cfg)
    sgd_solution = continuations(figs, start, sgd_cfg, swa_cfg)
    analyses(figs, start, fge_start, sgd_solution, sgd_cfg)
    written = [*draw(figs), flatness_table(figs)]
    print("\nfigures:")
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
