"""The runs behind a paper table: its experiment configs, their run directories, and whether
each directory holds the run the table asks for (the one owner of these, for sweep and
aggregate).

A table's row is a model, its columns read the runs of the experiments
conf/experiment/<dataset>/<model>[_fixed_lr]_<method>.yaml (methods: sgd and swa; Table 2:
swa), one run per seed. The run a cell asks for is that experiment's config composed with the
overrides it was trained with (`extra`, the sweep's --extra), at the seed: its directory is the
config's own `name` below `paths.runs` (swa_repro.layout), and a directory whose config.yaml
differs from it in a key that changes the numbers holds another run ("other config",
run_files.config_differences), whatever state that run is in. Such a run is never counted
and never silently replaced: sweep and aggregate report it with the differing keys and exit
non-zero. The models of a table are those whose experiment configs exist for every method of
the table, in the paper's order.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from swa_repro import REPO_ROOT
from swa_repro.config_check import ConfigError
from swa_repro.run_files import RunFiles, RunStatus

EXPERIMENTS = REPO_ROOT / "conf" / "experiment"
# Table 2 has SWA runs only: its SGD column is the pretrained model each SWA run evaluates first.
METHODS = {"table1": ("sgd", "swa"), "fixed_lr": ("sgd", "swa"), "table2": ("swa",)}
SUFFIX = {"fixed_lr": "_fixed_lr"}  # experiment names: <model><suffix>_<method>
PAPER_ORDER = ("vgg16", "preresnet110", "preresnet164", "wrn28x10")
PAPER_ORDER += ("resnet50", "resnet152", "densenet161")


def experiment_name(table: str, dataset: str, model: str, method: str) -> str:
    return f"{dataset}/{model}{SUFFIX.get(table, '')}_{method}"


def experiments_of(table: str, dataset: str, models: list[str]) -> list[str]:
    return [experiment_name(table, dataset, m, method) for m in models for method in METHODS[table]]


def table_models(table: str, dataset: str) -> list[str]:
    """The models with an experiment config for every method of `table` on `dataset`, in the
    paper's order (others after them, by name); ConfigError when there are none."""
    pattern = re.compile(rf"(?P<model>\w+?){SUFFIX.get(table, '')}_(?P<method>sgd|swa)")
    found: dict[str, set[str]] = {}
    for path in sorted((EXPERIMENTS / dataset).glob("*.yaml")):
        match = pattern.fullmatch(path.stem)
        if match and (table in SUFFIX or not match["model"].endswith(tuple(SUFFIX.values()))):
            found.setdefault(match["model"], set()).add(match["method"])
    models = [m for m, methods in found.items() if methods >= set(METHODS[table])]
    if not models:
        datasets = sorted(p.name for p in EXPERIMENTS.iterdir() if p.is_dir())
        raise ConfigError(
            f"no experiment configs for {table} on {dataset!r} "
            f"(conf/experiment/{dataset}/<model>_<method>.yaml); data sets: {', '.join(datasets)}"
        )
    rank = {m: i for i, m in enumerate(PAPER_ORDER)}
    return sorted(models, key=lambda m: (rank.get(m, len(rank)), m))


def check_models(table: str, dataset: str, models: list[str]) -> None:
    """ConfigError naming the first of `models` without the table's experiment configs."""
    valid = table_models(table, dataset)
    for model in models:
        if model not in valid:
            raise ConfigError(
                f"--models: {model!r} has no {table} experiment configs on {dataset} "
                f"(valid: {', '.join(valid)})"
            )


@functools.cache
def _composed(experiment: str, extra: tuple[str, ...]) -> DictConfig:
    from swa_repro.compose import compose_config  # Hydra's compose: only when a run is looked at

    return compose_config([f"experiment={experiment}", *extra])


def expected_config(experiment: str, seed: int, runs: Path, extra=()) -> DictConfig:
    """The config `python -m swa_repro.train experiment=... seed=... paths.runs=... *extra` runs
    (composed once per experiment and `extra`: the sweep's cells differ in seed and runs only)."""
    cfg = copy.deepcopy(_composed(experiment, tuple(extra)))
    cfg.seed = seed
    if not any(override.startswith("paths.runs=") for override in extra):
        cfg.paths.runs = str(runs)
    return cfg


@dataclass(frozen=True)
class TableRun:
    """One seed of one experiment of a table, and the state of its run directory."""

    experiment: str
    seed: int
    cfg: DictConfig
    run_dir: Path

    @classmethod
    def of(cls, experiment: str, seed: int, runs: Path, extra=()) -> TableRun:
        cfg = expected_config(experiment, seed, runs, extra)
        return cls(experiment, seed, cfg, Path(cfg.paths.runs) / cfg.name)

    def status(self) -> RunStatus:
        """The directory's state; "other config" when it holds a run of another config."""
        return RunFiles(self.run_dir).status(expected=self.cfg)
