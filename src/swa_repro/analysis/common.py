"""What every point analysis shares: resumable evaluation of a grid of points into an .npz.

An analysis is a set of weight vectors indexed by a grid of shape S (a plane G x G, a line N,
rays O x R x T). They are evaluated in C order, points_per_pass at a time with
RunContext.evaluate_many (one pass over each data stream per chunk instead of one per point;
the same metrics up to floating-point summation order), or one by one with RunContext.evaluate
when points_per_pass is 1. Only the current chunk's vectors are built (point_at is called
lazily), and after every chunk the whole result is written atomically (a temporary file in
the same folder, then os.replace):

    <metric> (S) float64 for each metric in METRICS, NaN where not yet evaluated
    done     (S) bool
    config   JSON string: the analysis settings, with `inputs_hash`
    + the analysis' own fixed arrays (coordinates, names, ...)

inputs_hash = sha256(settings as sorted JSON, then the bytes of every defining vector as
float32). A rerun whose hash matches the file's continues with the points not done: they form
the same chunks as in an uninterrupted run (the file is only written at chunk ends), and every
point is a deterministic function of the inputs, so the result equals an uninterrupted run.
A file with another hash is refused (open_results and UnitResults: the results of every analysis,
stored unit by unit). points_per_pass and multipoint_mode are speed settings, not inputs, and are
not hashed: a grid started with one chunk size can be resumed with another
(its points then agree with an uninterrupted run to floating-point summation order).
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from swa_repro.analysis.points import METRICS, RunContext
from swa_repro.checkpoint import write_atomic
from swa_repro.multipoint import MODES

POINTS_PER_PASS = 8  # default chunk of evaluate_grid (conf/analysis/base.yaml: points_per_pass)


class AnalysisError(ValueError):
    """Bad input to an analysis (settings, points, an output file of other inputs); one line."""


def check_number(value, key: str):
    """`value` unchanged; AnalysisError naming `key` unless it is a real number (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AnalysisError(f"{key} must be a number, got {value!r}")
    return value


def context_settings(ctx: RunContext) -> dict:
    """What, besides the points, decides an evaluation: model, data, L2 term, BN batches, seed."""
    return {
        "model": ctx.cfg.model.name,
        "data": ctx.data.name,
        "synthetic": ctx.data.name == "synthetic",
        "train_size": len(ctx.data.train_y),
        "test_size": len(ctx.data.test_y),
        "weight_decay": float(ctx.cfg.optim.weight_decay),
        "batch_size": int(ctx.cfg.optim.batch_size),
        "seed": ctx.seed,
    }


def inputs_hash(vectors: Sequence[torch.Tensor], settings: dict) -> str:
    """sha256 of the settings (sorted JSON) and of each vector's float32 bytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for vector in vectors:
        digest.update(vector.detach().to("cpu", torch.float32).contiguous().numpy())
    return digest.hexdigest()


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, written atomically (swa_repro.checkpoint.write_atomic)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def device_of(ctx: RunContext) -> torch.device:
    return next(ctx.model.parameters()).device


def evaluate_grid(
    ctx: RunContext,
    shape: tuple[int, ...],
    point_at: Callable[[tuple[int, ...]], torch.Tensor],
    out_path: str | Path,
    arrays: dict[str, np.ndarray],
    config: dict,
    digest: str,
    progress: bool = True,
    desc: str = "points",
    points_per_pass: int = POINTS_PER_PASS,
    multipoint_mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Evaluate point_at(index) for every index of `shape`, resuming `out_path`; returns its arrays.

    points_per_pass points share each pass over the data (RunContext.evaluate_many with
    mode=multipoint_mode); 1 evaluates every point on its own (RunContext.evaluate).
    """
    if not isinstance(points_per_pass, int) or points_per_pass < 1:
        raise AnalysisError(f"points_per_pass must be an integer >= 1, got {points_per_pass!r}")
    if multipoint_mode not in MODES:
        raise AnalysisError(
            f"multipoint_mode must be one of {', '.join(MODES)}, got {multipoint_mode!r}"
        )
    empty = {m: np.full(shape, np.nan) for m in METRICS}
    results = open_results(out_path, shape, empty, arrays, config, digest)
    todo = results.todo()

    def evaluate(chunk: list[tuple[int, ...]]) -> list[dict[str, float]]:
        if points_per_pass == 1:  # exactly the per-point evaluation, no model copies
            return [ctx.evaluate(point_at(chunk[0]))]
        vectors = torch.stack([point_at(index) for index in chunk])
        return ctx.evaluate_many(vectors, mode=multipoint_mode)

    size = int(np.prod(shape))
    disable = None if progress else True  # None: off when not a terminal
    with tqdm(total=size, initial=size - len(todo), desc=desc, disable=disable,
              dynamic_ncols=True) as bar:  # fmt: skip
        for start in range(0, len(todo), points_per_pass):
            chunk = todo[start : start + points_per_pass]
            metrics = evaluate(chunk)
            results.record_many(chunk, [{m: row[m] for m in METRICS} for row in metrics])
            bar.update(len(chunk))
    return results.arrays


@dataclass
class UnitResults:
    """An analysis' arrays, saved after every unit of work (see module doc)."""

    path: Path
    arrays: dict[str, np.ndarray]

    def todo(self) -> list[tuple[int, ...]]:
        done = self.arrays["done"]
        return [unit for unit in np.ndindex(done.shape) if not done[unit]]

    def record(self, unit: tuple[int, ...], values: dict) -> None:
        """Store one unit's values and write the file."""
        self.record_many([unit], [values])

    def record_many(self, units: list[tuple[int, ...]], values: list[dict]) -> None:
        """Store several units' values, then write the file once."""
        for unit, unit_values in zip(units, values, strict=True):
            for key, value in unit_values.items():
                self.arrays[key][unit] = value
            self.arrays["done"][unit] = True
        save_npz_atomic(self.path, self.arrays)


def open_results(
    path: str | Path,
    shape: tuple[int, ...],
    results: dict[str, np.ndarray],
    fixed: dict[str, np.ndarray],
    config: dict,
    digest: str,
) -> UnitResults:
    """The results at `path`: resumed when it holds `digest`, else new (and written at once);
    AnalysisError, the file untouched, when it holds results of other inputs."""
    path = Path(path)
    arrays = {
        **fixed,
        **results,
        "done": np.zeros(shape, dtype=bool),
        "config": np.array(json.dumps({**config, "inputs_hash": digest})),
    }
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz_atomic(path, arrays)
        return UnitResults(path, arrays)
    try:
        with np.load(path, allow_pickle=False) as saved:
            same = json.loads(str(saved["config"])).get("inputs_hash") == digest
            stored = {key: saved[key].copy() for key in (*results, "done")} if same else {}
    except Exception as exc:
        raise AnalysisError(
            f"{path} exists but is not a readable analysis file ({type(exc).__name__}); "
            "delete it or choose another out="
        ) from None
    if not same:
        raise AnalysisError(
            f"{path} holds results made from different inputs (origins, settings or run); "
            "delete it or choose another out="
        )
    return UnitResults(path, {**arrays, **stored})
