"""Naming a weight vector on the command line: "CHECKPOINT:SELECTOR".

run checkpoint (checkpoints/last.pt, checkpoints/epoch_NNNN.pt):
    model      the SGD iterate
    swa        the running SWA average (refused when nothing has been averaged yet); any
               other averaged model of the run by its name (swa_repro.collectors), e.g.
               ema_0.999 (swag is a posterior, not a point: its mean is swa)
FGE samples file (written by the fge analysis, a checkpoint with "vectors"):
    K          sample K (0-based)
    mean       the equal-weight average of all samples (their SWA solution)
"""

from __future__ import annotations

from pathlib import Path

import torch

from swa_repro.analysis.common import AnalysisError
from swa_repro.analysis.points import state_vector, stored_weights
from swa_repro.checkpoint import load_checkpoint
from swa_repro.layout import RunPaths


def load_point(spec: str, model: torch.nn.Module) -> torch.Tensor:
    """The flat float32 parameter vector (on CPU) named by `spec`, checked against `model`."""
    path, sep, selector = str(spec).rpartition(":")
    if not sep or not path:
        raise AnalysisError(
            f"point {spec!r} must be CHECKPOINT:SELECTOR (selector model, swa, "
            "or for an FGE samples file a sample index or mean)"
        )
    state = load_checkpoint(path)
    size = sum(p.numel() for p in model.parameters())
    if "vectors" in state:
        vectors = state["vectors"]
        if selector == "mean":
            vector = vectors.double().mean(dim=0).float()
        elif selector.isdigit() and int(selector) < len(vectors):
            vector = vectors[int(selector)]
        else:
            raise AnalysisError(
                f"FGE samples file {path} holds samples 0..{len(vectors) - 1}; "
                f"selector {selector!r} must be one of them or mean"
            )
    else:
        try:
            vector = state_vector(state, selector, model)
        except ValueError as exc:
            raise AnalysisError(f"checkpoint {path}: {exc}") from None
        except KeyError as exc:
            raise AnalysisError(
                f"checkpoint {path} lacks parameter {exc}: not a checkpoint of run_dir's model"
            ) from None
    if vector.numel() != size:
        raise AnalysisError(
            f"{spec} has {vector.numel()} parameters but run_dir's model has {size}"
        )
    return vector


def load_buffers(spec: str, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The buffers (BN statistics) stored with the run-checkpoint point `spec`, keyed as
    model.named_buffers(): its own statistics, before any refresh. None where none are stored
    (an FGE sample, or a checkpoint lacking one of them). Call after load_point accepted `spec`."""
    path, _, selector = str(spec).rpartition(":")
    state = load_checkpoint(path)
    if "vectors" in state:
        return None
    stored = stored_weights(state, selector)
    names = [name for name, _ in model.named_buffers()]
    if any(name not in stored for name in names):
        return None
    return {name: stored[name] for name in names}


def check_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` as a Path, refused unless it holds a run's config.yaml."""
    config = RunPaths(run_dir).config
    if not config.is_file():
        raise AnalysisError(f"{run_dir} is not a run directory (no {config.name} there)")
    return Path(run_dir)
