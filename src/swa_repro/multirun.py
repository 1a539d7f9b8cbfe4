"""A multirun (`python -m swa_repro.train -m ...`) exits 1 when one of its cells is not finished.

Hydra's basic launcher goes on past a failing job and then exits 0 (a failing cell returns
instead of exiting, so that the other cells go on). This Hydra callback, registered in
conf/config.yaml (hydra.callbacks), reads each cell's run directory after its job
(RunFiles.status against the cell's own config: failed with failed.json's error, refused as a
run of another config, interrupted or in use) and, at the end of the multirun, names every
cell not finished with its cause and exits 1.

Launchers that run the jobs in other processes (submitit: hydra/launcher=slurm or
submitit_local) call on_job_end there, so nothing comes back to this process and the exit
code stays Hydra's; `python -m swa_repro.sweep` checks the run directories itself under any
launcher.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from swa_repro.run_files import RunFiles, RunStatus

EXIT_UNFINISHED = 1


class UnfinishedCells(Callback):
    """Collects the cells of a multirun that did not finish; exits 1 at its end if any."""

    def __init__(self) -> None:
        self.unfinished: list[tuple[str, RunStatus, Path]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        status = RunFiles(run_dir).status(expected=job_return.cfg)
        if status.state != "finished":
            self.unfinished.append((" ".join(job_return.overrides), status, run_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for overrides, status, run_dir in self.unfinished:
            print(f"not finished: {overrides} ({status}) in {run_dir}", file=sys.stderr)
        if self.unfinished:
            print(
                f"error: {len(self.unfinished)} cell(s) of the multirun not finished; "
                "relaunching the same command continues what is left",
                file=sys.stderr,
            )
            sys.exit(EXIT_UNFINISHED)
