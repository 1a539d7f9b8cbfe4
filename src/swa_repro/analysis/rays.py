"""Width of a solution: metrics along random rays from it (paper, random-ray figure).

    d_r = g_r / |g_r|,  g_r ~ N(0, I) from a torch.Generator seeded by derive_seed(seed, "ray", r)
          (uniform on the unit sphere; direction r depends on (seed, r) only, so the same
          directions serve every origin and a larger n_directions only adds new ones)
    point(o, r, k) = w_o + t_k d_r,   t_k in linspace(0, max_distance, T)

directions=filter (Li et al. 2018, directions.py) replaces d_r by the filter-normalised
direction filter_direction(seed, r, w_o): the same Gaussian draw for every origin, each filter
rescaled to the norm of the origin's filter (so t = 1 is a step the size of the weights; use
max_distance ~ 1), biases and BN zero.

Points are evaluated points_per_pass at a time (one pass over the data for each chunk),
resumably (see common.evaluate_grid).
Output .npz: distances (T,), origins (O,) names, <metric> (O, R, T) for each metric in
METRICS, done (O, R, T), config (JSON with n_directions, seed, max_distance, and directions
when not unit).
"""

from __future__ import annotations

from collections.abc import Callable
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
from swa_repro.analysis.directions import filter_direction, parameter_shapes
from swa_repro.analysis.points import RunContext
from swa_repro.rng import derive_seed


def ray_direction(seed: int, index: int, size: int) -> torch.Tensor:
    """Unit direction `index` of `size` elements (float64, CPU), the same on every machine."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "ray", index))
    g = torch.randn(size, generator=generator, dtype=torch.float64)
    return g / g.norm()


def check_ray_settings(
    origins: dict, n_directions: int, n_distances: int, max_distance: float, directions: str
) -> None:
    """One AnalysisError naming the first bad setting, before any work."""
    if not origins:
        raise AnalysisError("rays need at least one origin")
    if not isinstance(n_directions, int) or n_directions < 1:
        raise AnalysisError(f"n_directions must be an integer >= 1, got {n_directions!r}")
    if not isinstance(n_distances, int) or n_distances < 2:
        raise AnalysisError(f"n_distances must be an integer >= 2, got {n_distances!r}")
    if not check_number(max_distance, "max_distance") > 0:
        raise AnalysisError(f"max_distance must be > 0, got {max_distance!r}")
    if directions not in ("unit", "filter"):
        raise AnalysisError(f"directions must be unit or filter, got {directions!r}")


def ray_points(
    starts: list[torch.Tensor], distances: np.ndarray, seed: int, directions: str, shapes
) -> Callable[[tuple[int, ...]], torch.Tensor]:
    """point_at((origin, ray, k)) = start + distances[k] d_ray, keeping one direction in memory
    (the grid is walked ray by ray)."""
    cached: dict[tuple[int, int], torch.Tensor] = {}

    def point_at(index: tuple[int, ...]) -> torch.Tensor:
        o, r, k = index
        if (o, r) not in cached:
            cached.clear()
            cached[o, r] = (
                filter_direction(seed, r, starts[o], shapes)
                if directions == "filter"
                else ray_direction(seed, r, starts[o].numel()).to(starts[o].device)
            )
        return (starts[o] + distances[k] * cached[o, r]).float()

    return point_at


def compute_rays(
    ctx: RunContext,
    origins: dict[str, torch.Tensor],
    out_path: str | Path,
    n_directions: int = 10,
    max_distance: float = 50.0,
    n_distances: int = 21,
    seed: int = 0,
    progress: bool = True,
    config: dict | None = None,
    points_per_pass: int = POINTS_PER_PASS,
    multipoint_mode: str = "auto",
    directions: str = "unit",
) -> dict[str, np.ndarray]:
    """Evaluate every origin + t d_r into `out_path` (resuming it); returns the saved arrays.
    directions: unit (uniform on the unit sphere, the paper's) or filter (module doc)."""
    check_ray_settings(origins, n_directions, n_distances, max_distance, directions)
    settings = {
        "analysis": "rays",
        "origins": list(origins),
        "n_directions": n_directions,
        "max_distance": float(max_distance),
        "n_distances": n_distances,
        **context_settings(ctx),
        "seed": seed,  # of the directions
        "stream_seed": ctx.seed,
        "directions": directions,
    }
    digest = inputs_hash(list(origins.values()), settings)
    starts = [w.to(device_of(ctx), torch.float64) for w in origins.values()]
    distances = np.linspace(0.0, max_distance, n_distances)
    point_at = ray_points(starts, distances, seed, directions, parameter_shapes(ctx.model))
    return evaluate_grid(
        ctx,
        (len(starts), n_directions, n_distances),
        point_at,
        out_path,
        {"distances": distances, "origins": np.array(list(origins), dtype=str)},
        {**settings, **(config or {})},
        digest,
        progress,
        desc="rays",
        points_per_pass=points_per_pass,
        multipoint_mode=multipoint_mode,
    )
