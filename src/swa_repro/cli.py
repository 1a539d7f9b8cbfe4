"""One-line errors for the command-line entry points: a user mistake is not a traceback."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from swa_repro.checkpoint import CheckpointError
from swa_repro.config_check import ConfigError
from swa_repro.data import DataError

EXIT_USER_ERROR = 2
USER_ERRORS = (
    ConfigError,
    DataError,
    CheckpointError,
    HydraException,
    OmegaConfBaseException,
    json.JSONDecodeError,
)


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise ConfigError(f"seeds must be comma-separated integers, got {text!r}") from None


def read_json(path: Path, what: str):
    """The JSON in `path`; ConfigError naming `what` and the file when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {first_line(exc)}") from None


def read_yaml(path: Path, what: str):
    """OmegaConf.load of `path`; ConfigError naming `what` and the file when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        return OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        detail = f"{exc.problem} (line {mark.line + 1})" if mark else first_line(exc)
        raise ConfigError(f"{what} {path} is not valid YAML: {detail}") from None


def check_output_folder(folder: Path, what: str) -> None:
    """ConfigError starting with `what` unless `folder` is, or can be made, a folder (no file
    in its place or above it)."""
    for path in (Path(folder), *Path(folder).parents):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{what}: {path} is a file, not a folder")


def table_runs_command(runs: Path | str, dataset: str, model: str, seed: int) -> str:
    """The command that trains the Table 1 runs (SGD and SWA) of `model` on `dataset`, one seed
    (the synthetic set-up: the figures' demo, which trains its own runs)."""
    if dataset == "synthetic":
        return f"python -m swa_repro.figures --demo --runs {runs} --seed {seed}"
    return f"make reproduce-{dataset} MODELS={model} SEEDS={seed} RUNS={runs}"


def figure_runs_command(runs: Path | str, setup: str, seed: int) -> str:
    """The command that trains the figures' extra runs (the SGD solution, the trajectories) and
    computes their analyses, from the Table 1 runs of `setup` ("<data>/<model>")."""
    demo = " --demo" if setup.startswith("synthetic/") else f" --setup {setup}"
    return f"python -m swa_repro.figures{demo} --runs {runs} --seed {seed}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line_errors(main):
    """Wrap an entry point: USER_ERRORS end it with one `error: ...` line and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
