"""Metrics along the line through the SWA and SGD solutions (paper, line figure).

    w(t) = w_swa + t (w_sgd - w_swa) = t w_sgd + (1 - t) w_swa,  t in linspace(t_min, t_max, N)
    distance(t) = t |w_sgd - w_swa|   (signed distance from w_swa, positive towards w_sgd)

Points are evaluated points_per_pass at a time (one pass over the data for each chunk),
resumably (see common.evaluate_grid).
Output .npz: t (N,), distance (N,), <metric> (N,) for each metric in METRICS, done (N,),
sgd_distance (scalar) = |w_sgd - w_swa|, config (JSON).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swa_repro.analysis.common import (
    POINTS_PER_PASS,
    AnalysisError,
    check_number,
    context_settings,
    device_of,
    evaluate_grid,
    inputs_hash,
)
from swa_repro.analysis.points import RunContext


def compute_line(
    ctx: RunContext,
    w_swa: torch.Tensor,
    w_sgd: torch.Tensor,
    out_path: str | Path,
    t_min: float = -1.0,
    t_max: float = 2.0,
    n_points: int = 31,
    progress: bool = True,
    config: dict | None = None,
    points_per_pass: int = POINTS_PER_PASS,
    multipoint_mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Evaluate w(t) for the N values of t into `out_path` (resuming it); returns the arrays."""
    if not isinstance(n_points, int) or n_points < 2:
        raise AnalysisError(f"n_points must be an integer >= 2, got {n_points!r}")
    if not check_number(t_min, "t_min") < check_number(t_max, "t_max"):
        raise AnalysisError(f"t_min must be below t_max, got {t_min!r} and {t_max!r}")
    settings = {
        "analysis": "line",
        "t_min": float(t_min),
        "t_max": float(t_max),
        "n_points": n_points,
        **context_settings(ctx),
    }
    digest = inputs_hash([w_swa, w_sgd], settings)
    device = device_of(ctx)
    origin = w_swa.to(device, torch.float64)
    direction = w_sgd.to(device, torch.float64) - origin
    sgd_distance = float(direction.norm())
    if sgd_distance == 0.0:
        raise AnalysisError("w_swa and w_sgd are the same point; the line is undefined")
    t = np.linspace(t_min, t_max, n_points)
    arrays = {"t": t, "distance": t * sgd_distance, "sgd_distance": np.float64(sgd_distance)}
    return evaluate_grid(
        ctx,
        (n_points,),
        lambda index: (origin + t[index[0]] * direction).float(),
        out_path,
        arrays,
        {**settings, **(config or {}), "sgd_distance": sgd_distance},
        digest,
        progress,
        desc="line",
        points_per_pass=points_per_pass,
        multipoint_mode=multipoint_mode,
    )
