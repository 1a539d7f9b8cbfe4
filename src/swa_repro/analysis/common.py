"""What every point analysis shares: resumable evaluation of a grid of points into an .npz.

An analysis is a set of weight vectors indexed by a grid of shape S (a plane G x G, a line N,
rays O x R x T). Each is evaluated with RunContext.evaluate, in C order, and after every point
the whole result is written atomically (a temporary file in the same folder, then os.replace):

    <metric> (S) float64 for each metric in METRICS, NaN where not yet evaluated
    done     (S) bool
    config   JSON string: the analysis settings, with `inputs_hash`
    + the analysis' own fixed arrays (coordinates, names, ...)

inputs_hash = sha256(settings as sorted JSON, then the bytes of every defining vector as
float32). A rerun whose hash matches the file's continues with the points not done (every
point is a deterministic function of the inputs, so the result equals an uninterrupted run);
a file with another hash is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from swa_repro.analysis.points import METRICS, RunContext
from swa_repro.checkpoint import write_atomic


class AnalysisError(ValueError):
    """Bad input to an analysis (settings, points, an output file of other inputs); one line."""


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
) -> dict[str, np.ndarray]:
    """Evaluate point_at(index) for every index of `shape`, resuming `out_path`; returns its arrays."""
    out_path = Path(out_path)
    results = {m: np.full(shape, np.nan) for m in METRICS}
    done = np.zeros(shape, dtype=bool)
    if out_path.exists():
        try:
            with np.load(out_path, allow_pickle=False) as saved:
                saved_hash = json.loads(str(saved["config"])).get("inputs_hash")
                if saved_hash == digest:
                    done = saved["done"].copy()
                    results = {m: saved[m].copy() for m in METRICS}
        except Exception as exc:
            raise AnalysisError(
                f"{out_path} exists but is not a readable analysis file ({type(exc).__name__}); "
                "delete it or choose another out="
            ) from None
        if saved_hash != digest:
            raise AnalysisError(
                f"{out_path} holds results made from different inputs (points, settings or run); "
                "delete it or choose another out="
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    config = {**config, "inputs_hash": digest}

    def state() -> dict[str, np.ndarray]:
        return {**arrays, **results, "done": done, "config": np.array(json.dumps(config))}

    save_npz_atomic(out_path, state())
    bar = tqdm(
        total=done.size,
        initial=int(done.sum()),
        desc=desc,
        disable=None if progress else True,  # None: off when not a terminal
        dynamic_ncols=True,
    )
    with bar:
        for index in np.ndindex(shape):
            if done[index]:
                continue
            metrics = ctx.evaluate(point_at(index))
            for m in METRICS:
                results[m][index] = metrics[m]
            done[index] = True
            save_npz_atomic(out_path, state())
            bar.update()
    return state()
