"""Experiment logging (logger=wandb) that can never take a training run down.

Every call into wandb is guarded: if it cannot start or fails later (no account, no
network, a crash in its service), one warning is printed and the run continues with
local logging only (metrics.jsonl and summary.json are always written). The W&B run
id is stored in every checkpoint, so a resumed run continues the same W&B run.

Mode: logger.mode if set; else WANDB_MODE if set; else online when an API key is
configured (WANDB_API_KEY or a `wandb login`), otherwise offline (sync later with
`wandb sync <run_dir>/wandb/offline-run-*`).
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

from swa_repro import REPO_ROOT


class NullLogger:
    run_id: str | None = None

    def log(self, record: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def convergence_figure(self, run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str | None):
        self._run = None
        try:
            import wandb
            from wandb.sdk.lib.runid import generate_id

            self.run_id = run_id or generate_id()
            self._run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=f"{cfg.data.name}/{cfg.model.name}/{cfg.method.name}",
                name=f"{cfg.data.name}-{cfg.model.name}-{cfg.method.name}-seed{cfg.seed}",
                tags=list(cfg.logger.tags),
                id=self.run_id,
                resume="allow",
                dir=str(run_dir),
                config=OmegaConf.to_container(cfg, resolve=True),
                mode=wandb_mode(cfg.logger.mode),
                settings=wandb.Settings(init_timeout=cfg.logger.init_timeout, silent=True),
            )
        except Exception as exc:
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(
            f"warning: W&B logging disabled, training goes on with local logs only ({type(exc).__name__}: {first_line})"
        )
        self._run = None

    def log(self, record: dict, step: int) -> None:
        if self._run is not None:
            try:
                self._run.log(record, step=step)
            except Exception as exc:
                self._disable(exc)

    def summary(self, values: dict) -> None:
        if self._run is not None:
            try:
                self._run.summary.update(values)
            except Exception as exc:
                self._disable(exc)

    def convergence_figure(self, run_dir: Path) -> None:
        """Draw the run's convergence figure (plots/convergence.py) and log it as an image."""
        if self._run is not None:
            try:
                import wandb

                png = load_plot_script("convergence").draw([run_dir], run_dir / "convergence.png")[
                    0
                ]
                self._run.log({"convergence": wandb.Image(str(png))})
            except Exception as exc:
                self._disable(exc)

    def close(self) -> None:
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as exc:
                self._disable(exc)


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def load_plot_script(name: str) -> ModuleType:
    """A figure script of plots/ as a module (the drawing code lives only there)."""
    spec = importlib.util.spec_from_file_location(
        f"plots_{name}", REPO_ROOT / "plots" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_logger(cfg: DictConfig, run_dir: Path, run_id: str | None) -> NullLogger:
    if cfg.logger.name == "wandb":
        return WandbLogger(cfg, run_dir, run_id)
    return NullLogger()
