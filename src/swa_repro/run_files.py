"""Reading and writing the files of one run directory (paths: swa_repro.layout), and choosing
the checkpoint to resume from. Registers the layout's OmegaConf resolvers: `${run_name:...}`
(the training configs' `name`) and those conf/analysis/base.yaml builds its paths with
(`setup_run`, `run_file`, `kept_checkpoint`, `analyses_dir`).

Disk use is bounded: two rolling checkpoints plus the kept epochs.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from swa_repro.checkpoint import (
    CheckpointError,
    fsync_dir,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from swa_repro.cli import first_line
from swa_repro.config_check import ConfigError
from swa_repro.layout import RunPaths, analyses_dir, run_dir, run_name

# Keys (dotted paths) that may differ between a run and its resumption: they do not change
# the numbers (the data's location: CIFAR is md5-checked; ImageNet's draws are seeded per image).
RESUME_FREE_KEYS = {
    "resume",
    "progress",
    "device",
    "eval_batch_size",
    "paths",
    "logger",
    "checkpoint",
    "data.root",
    "data.download",
    "data.workers",
}


# Keys added since runs were first made, and the value that means what a run saved without the
# key did (ANY: the key cannot matter to an existing run; bn_weight_init only draws initial
# weights, which a run that has a checkpoint takes from there).
ANY = object()
# ema and swag: a run saved before them continues without those collectors (state.restore).
KEYS_ADDED_LATER = {
    "method.swa_include_start": False,
    "model.bn_weight_init": ANY,
    "data.val_size": 0,
    "ema": ANY,
    "swag": ANY,
}


def setup_run(runs: str, setup: str, method: str, seed: int) -> str:
    """The run directory of method `method` of setup "<data>/<model>" (the analyses' configs)."""
    if str(setup).count("/") != 1:
        raise ConfigError(f"setup must be <data>/<model>, got {setup!r}")
    data, model = setup.split("/")
    return str(run_dir(runs, data, model, method, seed))


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
OmegaConf.register_new_resolver("setup_run", setup_run, replace=True)
OmegaConf.register_new_resolver(
    "run_file", lambda root, name: str(getattr(RunPaths(root), name)), replace=True
)
OmegaConf.register_new_resolver(
    "kept_checkpoint", lambda root, epoch: str(RunPaths(root).kept(int(epoch))), replace=True
)
OmegaConf.register_new_resolver(
    "analyses_dir", lambda runs, setup, seed: str(analyses_dir(runs, setup, seed)), replace=True
)


class RunInUseError(ConfigError):
    """Another process holds the run directory's lock."""


__all__ = ["RunFiles", "RunStatus", "analyses_dir", "run_dir", "run_name"]


@dataclass(frozen=True)
class RunStatus:
    state: str  # finished | failed | running (or interrupted) | missing | other config
    epochs_done: int = 0  # as far as metrics.jsonl shows (the last evaluated epoch)
    epochs: int | None = None
    cause: str = ""  # failed: failed.json's error; other config: the keys that differ

    def short(self) -> str:
        """The state for a table: running with its epoch, else the state alone."""
        if self.state == "running":
            return f"running (epoch {self.epochs_done}/{self.epochs or '?'})"
        return self.state

    def __str__(self) -> str:
        """The state with its cause."""
        if self.state == "other config":
            return f"holds a run of another config (differs in: {self.cause})"
        return f"{self.short()}: {self.cause}" if self.cause else self.short()


class RunFiles(RunPaths):
    """The reading and writing of one run directory's files."""

    def finished(self) -> bool:
        return self.summary.is_file()

    def status(self, expected: DictConfig | None = None) -> RunStatus:
        """other config (the folder's config.yaml differs from `expected`, when given, in keys
        that change the numbers), finished (summary.json), missing (no folder), failed
        (failed.json, with its error), or running / interrupted with the last evaluated epoch
        of metrics.jsonl."""
        if expected is not None and self.config.is_file():
            differing = config_differences(self.read_config(), expected)
            if differing:
                return RunStatus("other config", cause=", ".join(differing))
        if self.finished():
            return RunStatus("finished")
        if not self.root.is_dir():
            return RunStatus("missing")
        if self.failed.is_file():
            return RunStatus("failed", cause=self.failure())
        epochs = self.read_config().epochs if self.config.is_file() else None
        lines = self.metrics.read_text().splitlines() if self.metrics.is_file() else []
        try:
            return RunStatus("running", json.loads(lines[-1])["epoch"] if lines else 0, epochs)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.metrics}: last line is not a metrics record ({exc!r})"
            ) from None

    @contextmanager
    def locked(self):
        """Hold an exclusive lock on the run directory (refuse a second process on the same run)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUseError(
                    f"{self.root} is in use by another process (a run or sweep already working on it)"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_failure(self, message: str, exit_code: int) -> None:
        """failed.json: the run stopped on an error (aggregation and sweeps report it)."""
        if self.root.is_dir():
            write_text_atomic(
                self.failed,
                json.dumps({"error": message, "exit_code": exit_code}) + "\n",
            )

    def failure(self) -> str:
        """The error failed.json records ("" when it cannot be read: the state still says failed)."""
        try:
            return str(json.loads(self.failed.read_text())["error"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def clear_failure(self) -> None:
        self.failed.unlink(missing_ok=True)

    def read_summary(self) -> dict:
        return _parse(self.summary, json.loads)

    def read_config(self) -> DictConfig:
        return _parse(self.config, OmegaConf.create)

    def write_config(self, cfg: DictConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config, OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, records: list[dict]) -> None:
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.summary, json.dumps(summary, indent=2) + "\n")

    def save_rolling(self, state: dict) -> None:
        """Write next.pt completely, then last.pt -> last.prev.pt, next.pt -> last.pt."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, self.incoming)
        if self.last.exists():
            os.replace(self.last, self.previous)
        os.replace(self.incoming, self.last)
        fsync_dir(self.checkpoints)

    def save_kept(self, state: dict, epoch: int) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, self.kept(epoch))

    def candidates(self) -> list[Path]:
        """Resume candidates, newest first."""
        kept = sorted(self.checkpoints.glob("epoch_*.pt"), reverse=True)
        return [p for p in (self.incoming, self.last, self.previous, *kept) if p.is_file()]

    def latest_description(self) -> str:
        return str(self.last) if self.last.is_file() else "none written yet"


def find_resume_state(resume: str, files: RunFiles) -> dict | None:
    """The checkpoint to continue from, with state["own"] saying whether it is this run's.

    The run's own newest good checkpoint always wins, so relaunching any command continues
    where the run stopped. Only a run directory without checkpoints starts from
    resume=PATH (e.g. another run's epoch-125 state). A damaged candidate is reported in
    one line and renamed to *.corrupt (kept for inspection, never rotated over a good
    file); the next one is tried.
    """
    # Temporary files left by a crash mid-write are never complete checkpoints.
    for orphan in files.checkpoints.glob(".*.tmp*"):
        orphan.unlink()
    damaged = []
    for path in files.candidates():
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            print(f"warning: {exc}; trying an earlier checkpoint")
            damaged.append(path)
            aside = path.with_name(path.name + ".corrupt")
            n = 1
            while aside.exists():
                aside, n = path.with_name(f"{path.name}.corrupt{n}"), n + 1
            os.replace(path, aside)
            continue
        state.update(path=str(path), own=True)
        return state
    if damaged:
        raise CheckpointError(
            f"no loadable checkpoint in {files.checkpoints} (damaged ones renamed *.corrupt); "
            "move the folder away to start this run over"
        )
    if resume != "auto":
        state = load_checkpoint(resume)
        state.update(path=str(resume), own=False)
        return state
    return None


def _parse(path: Path, parse):
    """parse(the text of `path`); an unreadable or damaged file is a one-line error naming it (and is left as it is)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(
            f"{path} cannot be read ({first_line(exc)}); restore it or move the run directory away"
        ) from None


def config_differences(saved: str | DictConfig, cfg: DictConfig) -> list[str]:
    """The dotted keys in which `cfg` differs from `saved` (YAML text or a config), leaving out
    RESUME_FREE_KEYS (they do not change the numbers)."""
    saved = OmegaConf.to_container(OmegaConf.create(saved))
    current = OmegaConf.to_container(cfg, resolve=True)
    return sorted(_differences(saved, current))


def check_same_config(saved: str | DictConfig, cfg: DictConfig) -> None:
    """Refuse to continue a run under a different configuration (saved: YAML text or a config)."""
    differing = config_differences(saved, cfg)
    if differing:
        raise ConfigError(
            f"the run directory holds a run with a different config (differs in: {', '.join(differing)}); "
            "use another name=... or restore the original settings"
        )


def _differences(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for key in set(a) | set(b):
            path = f"{prefix}{key}"
            if path in RESUME_FREE_KEYS:
                continue
            if key not in a and path in KEYS_ADDED_LATER:  # a run saved before the key existed
                if KEYS_ADDED_LATER[path] is ANY or KEYS_ADDED_LATER[path] == b[key]:
                    continue
            out |= _differences(a.get(key), b.get(key), f"{path}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def write_tables(out_dir: Path, stem: str, markdown: str, csv_text: str) -> tuple[Path, Path]:
    """A results table as out_dir/stem.md and .csv (each written atomically), printed with the
    paths; the two paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    write_text_atomic(md, markdown)
    write_text_atomic(csv_path, csv_text)
    print(markdown)
    print(f"wrote {md} and {csv_path}")
    return md, csv_path
