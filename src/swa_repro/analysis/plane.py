"""Metrics on the plane through three weight vectors (dnn-mode-connectivity's plane.py).

    u = w2 - w0,  dx = |u|,  u^ = u / dx
    v = (w1 - w0) - <w1 - w0, u^> u^,  dy = |v|,  v^ = v / dy
    grid: alpha, beta in linspace(-margin, 1 + margin, G);  x = alpha dx,  y = beta dy
    point(x, y) = w0 + x u^ + y v^        (so w0 -> (0, 0), w2 -> (dx, 0), w1 -> (., dy))
    project(p) = (<p - w0, u^>, <p - w0, v^>)   places any other point on the plane

Every grid point is evaluated (BN refresh, train and test metrics), points_per_pass points
per pass over the data, resumably (see common.evaluate_grid). Output .npz:

    x (G,), y (G,)            grid coordinates alpha dx, beta dy (float64)
    <metric> (G, G)           for each metric in METRICS, indexed [i_x, j_y]; NaN where not done
    done (G, G)               bool
    point_names (K,)          labels of w0, w1, w2, then the extra points' names
    point_xy (K, 2)           their projections, in that order
    config                    JSON: settings, run, points, G, margin, dx, dy, inputs_hash
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class PlaneBasis:
    """Origin w0 and orthonormal directions u, v (float64) of a plane, with dx, dy."""

    w0: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    dx: float
    dy: float

    def point(self, x: float, y: float) -> torch.Tensor:
        """w0 + x u^ + y v^ as float32."""
        return (self.w0 + x * self.u + y * self.v).float()

    def project(self, p: torch.Tensor) -> tuple[float, float]:
        """(<p - w0, u^>, <p - w0, v^>)."""
        d = p.to(self.w0.device, torch.float64) - self.w0
        return float(d @ self.u), float(d @ self.v)


def plane_basis(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> PlaneBasis:
    """The plane through w0, w1, w2 (on w0's device); refused when they are collinear."""
    origin = w0.double()
    u = w2.to(origin.device, torch.float64) - origin
    dx = float(u.norm())
    if dx == 0.0:
        raise AnalysisError("w0 and w2 are the same point; the plane is undefined")
    u = u / dx
    v = w1.to(origin.device, torch.float64) - origin
    scale = max(dx, float(v.norm()))
    v = v - (v @ u) * u
    dy = float(v.norm())
    if dy <= 1e-6 * scale:  # within float32 rounding of a line
        raise AnalysisError("w0, w1 and w2 are collinear; the plane is undefined")
    return PlaneBasis(origin, u, v / dy, dx, dy)


def check_plane_settings(grid_points, margin, labels) -> None:
    """AnalysisError naming the first bad plane setting."""
    if not isinstance(grid_points, int) or grid_points < 2:
        raise AnalysisError(f"grid_points must be an integer >= 2, got {grid_points!r}")
    if check_number(margin, "margin") < 0:
        raise AnalysisError(f"margin must be >= 0, got {margin!r}")
    if len(labels) != 3:
        raise AnalysisError(f"labels must name w0, w1, w2 (3 labels), got {list(labels)}")


def compute_plane(
    ctx: RunContext,
    w0: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    extra_points: dict[str, torch.Tensor],
    out_path: str | Path,
    grid_points: int = 21,
    margin: float = 0.2,
    labels: tuple[str, str, str] = ("w0", "w1", "w2"),
    progress: bool = True,
    config: dict | None = None,
    extra_arrays: dict[str, np.ndarray] | None = None,
    points_per_pass: int = POINTS_PER_PASS,
    multipoint_mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Evaluate the G x G plane grid into `out_path` (resuming it); returns the saved arrays.

    `config` is merged into the saved config JSON, `extra_arrays` saved alongside;
    points_per_pass and multipoint_mode go to evaluate_grid.
    """
    check_plane_settings(grid_points, margin, labels)
    settings = {
        "analysis": "plane",
        "grid_points": grid_points,
        "margin": float(margin),
        **context_settings(ctx),
    }
    digest = inputs_hash([w0, w1, w2], settings)
    device = device_of(ctx)
    basis = plane_basis(w0.to(device), w1.to(device), w2.to(device))
    alphas = np.linspace(-margin, 1.0 + margin, grid_points)
    x, y = alphas * basis.dx, alphas * basis.dy
    names = [*labels, *extra_points]
    points = [w0, w1, w2, *extra_points.values()]
    arrays = {
        "x": x,
        "y": y,
        "point_names": np.array(names, dtype=str),
        "point_xy": np.array([basis.project(p) for p in points], dtype=np.float64),
        **(extra_arrays or {}),
    }
    config = {**settings, **(config or {}), "dx": basis.dx, "dy": basis.dy}
    return evaluate_grid(
        ctx,
        (grid_points, grid_points),
        lambda index: basis.point(x[index[0]], y[index[1]]),
        out_path,
        arrays,
        config,
        digest,
        progress,
        desc="plane",
        points_per_pass=points_per_pass,
        multipoint_mode=multipoint_mode,
    )
