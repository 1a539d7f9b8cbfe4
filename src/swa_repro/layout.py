"""The run-directory layout: where runs, their files and the analyses live (its one owner).

    <runs>/<data>/<model>/<method>/seed<seed>/     one training run (run_name, run_dir)
        config.yaml            resolved config
        metrics.jsonl          one JSON object per evaluated epoch (rewritten atomically)
        summary.json           written last: its presence marks a finished run
        failed.json            the error that stopped the run, if one did (cleared by a success)
        .lock                  held by the process working on the run
        checkpoints/last.pt    latest state (every checkpoint.every epochs, and on a stop signal)
        checkpoints/last.prev.pt  the one before, the fallback when last.pt is damaged
        checkpoints/next.pt    a complete new checkpoint between its two renames
        checkpoints/epoch_NNNN.pt kept states (budget epochs, checkpoint.keep_epochs)
        calibration.json       every final model's test metrics, temperature fit and
                               reliability-diagram numbers (swa_repro.run_end)
        weights/<model>.safetensors   the final models: sgd, swa, ema_<decay>, swag (weights.py)
        posterior/<checkpoint>/       a SWAG model average (swa_repro.posterior): state.pt
                               (resumable), posterior.json, calibration.json; posterior/last is
                               the one at the end of the run
    <runs>/analyses/<data>/<model>/seed<seed>/     the figure analyses of a setup (analyses_dir):
        <analysis>.npz         one per analysis (analysis_file: plane, rays, hessian, ...)

The training configs' `name` key resolves through `${run_name:...}` (registered by
swa_repro.run_files), so Hydra puts a run where this module says. Standard library only: the
plot scripts, which import neither torch nor Hydra, use it too.
"""

from __future__ import annotations

import re
from pathlib import Path

KEPT_PATTERN = re.compile(r"epoch_(\d{4,})\.pt")


def run_name(data: str, model: str, method: str, seed: int) -> str:
    """The run's path below the runs folder: <data>/<model>/<method>/seed<seed>."""
    return f"{data}/{model}/{method}/seed{seed}"


def run_dir(runs: str | Path, data: str, model: str, method: str, seed: int) -> Path:
    """The run directory of one table cell's seed under the runs folder `runs`."""
    return Path(runs) / run_name(data, model, method, seed)


def analyses_dir(runs: str | Path, setup: str, seed: int) -> Path:
    """Where the figure analyses of setup "<data>/<model>" (seed `seed`) keep their results."""
    return Path(runs) / "analyses" / setup / f"seed{seed}"


def analysis_file(runs: str | Path, setup: str, seed: int, analysis: str) -> Path:
    """The .npz of `python -m swa_repro.analysis <analysis>` in the figures' analyses folder
    (its conf/analysis file's default `out`)."""
    return analyses_dir(runs, setup, seed) / f"{analysis}.npz"


class RunPaths:
    """The paths of the files of one run directory."""

    def __init__(self, root: str | Path):
        self.root = root = Path(root)
        self.config = root / "config.yaml"
        self.metrics = root / "metrics.jsonl"
        self.summary = root / "summary.json"
        self.failed = root / "failed.json"
        self.lock = root / ".lock"
        self.checkpoints = root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.previous = self.checkpoints / "last.prev.pt"
        self.incoming = self.checkpoints / "next.pt"
        self.calibration = root / "calibration.json"
        self.weights = root / "weights"

    def posterior(self, checkpoint: str = "last") -> Path:
        """The folder of the SWAG model average of checkpoints/<checkpoint>.pt."""
        return self.root / "posterior" / checkpoint

    def kept(self, epoch: int) -> Path:
        """The checkpoint kept at the end of (1-based) epoch `epoch`."""
        return self.checkpoints / f"epoch_{epoch:04d}.pt"

    def kept_epochs(self) -> list[int]:
        """The epochs with a kept checkpoint, ascending."""
        names = (p.name for p in self.checkpoints.glob("epoch_*.pt"))
        return sorted(int(m.group(1)) for n in names if (m := KEPT_PATTERN.fullmatch(n)))
