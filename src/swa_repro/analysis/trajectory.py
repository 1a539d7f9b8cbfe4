"""Figure 2: the plane through the first, middle and last points of an SGD trajectory.

The trajectory is the `which` weights ("model": the SGD iterate) of a run's kept
checkpoints (swa_repro.layout: checkpoints/epoch_NNNN.pt), in epoch order (all of them, or the listed epochs). With n points,
w0 = point 0, w1 = point (n - 1) // 2, w2 = point n - 1; the other points and their
equal-weight average (the SWA solution of the trajectory) are placed by projection.
compute_plane writes the plane .npz, plus:

    trajectory_xy (n, 2)      projections of every trajectory point, in epoch order
    trajectory_epochs (n,)    their epochs
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swa_repro.analysis.common import POINTS_PER_PASS, AnalysisError, device_of
from swa_repro.analysis.plane import compute_plane, plane_basis
from swa_repro.analysis.points import RunContext
from swa_repro.analysis.specs import load_point
from swa_repro.layout import RunPaths


def kept_checkpoints(run_dir: str | Path, epochs: list[int] | None = None) -> dict[int, Path]:
    """Epoch -> kept checkpoint of the run, in epoch order: all of them, or those of `epochs`
    (AnalysisError naming the ones not kept, or when fewer than 3 remain)."""
    paths = RunPaths(run_dir)
    kept = paths.kept_epochs()
    if epochs is not None:
        missing = sorted(set(epochs) - set(kept))
        if missing:
            raise AnalysisError(
                f"{run_dir} keeps no checkpoint for epochs {missing} (kept: {kept})"
            )
        kept = sorted(set(epochs))
    if len(kept) < 3:
        raise AnalysisError(
            f"a trajectory needs at least 3 kept checkpoints; {run_dir} has epochs {kept} "
            "(train it with checkpoint.keep_epochs=[...])"
        )
    return {epoch: paths.kept(epoch) for epoch in kept}


def compute_trajectory(
    ctx: RunContext,
    run_dir: str | Path,
    out_path: str | Path,
    epochs: list[int] | None = None,
    which: str = "model",
    grid_points: int = 21,
    margin: float = 0.2,
    progress: bool = True,
    config: dict | None = None,
    points_per_pass: int = POINTS_PER_PASS,
    multipoint_mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Evaluate the trajectory plane of `run_dir` into `out_path` (resuming it)."""
    kept = kept_checkpoints(run_dir, epochs)
    trajectory = list(kept)
    vectors = [load_point(f"{path}:{which}", ctx.model) for path in kept.values()]
    first, middle, last = 0, (len(vectors) - 1) // 2, len(vectors) - 1
    device = device_of(ctx)
    basis = plane_basis(*(vectors[k].to(device) for k in (first, middle, last)))
    extra = {
        f"epoch {trajectory[k]}": vectors[k]
        for k in range(len(vectors))
        if k not in (first, middle, last)
    }
    extra["average (SWA)"] = torch.stack(vectors).double().mean(dim=0).float()
    return compute_plane(
        ctx,
        vectors[first],
        vectors[middle],
        vectors[last],
        extra,
        out_path,
        grid_points=grid_points,
        margin=margin,
        labels=tuple(f"epoch {trajectory[k]}" for k in (first, middle, last)),
        progress=progress,
        points_per_pass=points_per_pass,
        multipoint_mode=multipoint_mode,
        config={
            "trajectory_run": str(run_dir),
            "trajectory_epochs": trajectory,
            "which": which,
            **(config or {}),
        },
        extra_arrays={
            "trajectory_xy": np.array([basis.project(v) for v in vectors], dtype=np.float64),
            "trajectory_epochs": np.array(trajectory, dtype=np.int64),
        },
    )
