"""What the flatness analyses (hessian, sharpness, around) share: fixed data, the preparation of
an origin, per-layer norms and results stored unit by unit.

Fixed data: the first `images` entries of a permutation of the training set drawn from
derive_seed(seed, "fixed_subset"), sorted into storage order (so a smaller subset of the same
seed is part of a larger one), unaugmented, normalised as in training, held on the device as
float batches of batch_size in that order (the last one short).

Origins: named weight vectors (point specs, as the rays analysis has them). Before an origin is
measured its BatchNorm statistics are recomputed by the procedure every analysis uses
(RunContext.evaluate: bn_refresh.refresh_bn over the augmented training stream of purpose
"analysis_bn" and the analysis seed), the SGD solution's included; the measurements then run in
eval mode on those statistics. refresh_with_test_accuracy also reports the test accuracy with
the statistics stored with the origin (specs.load_buffers), before that refresh.

Results (common.open_results / UnitResults): one .npz per analysis. Every result array has leading axes `shape`, one entry per unit
of work (an origin; for `around` one row of an origin's grid); `done` (shape) bool; `config` a
JSON string with the settings and inputs_hash (common.inputs_hash of the settings and the origin
vectors). A unit's values are written (atomically, the whole file) as soon as it is done; a
rerun with the same hash skips the units done, a file of another hash is refused and left as
it is. Every unit is a deterministic function of the inputs, so a resumed run ends with the
numbers of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

from swa_repro.analysis.common import AnalysisError
from swa_repro.analysis.hessian import set_parameters
from swa_repro.analysis.points import RunContext
from swa_repro.bn_refresh import refresh_bn
from swa_repro.data import eval_batches
from swa_repro.metrics import evaluate
from swa_repro.rng import derive_seed


def subset_size(images, n_train: int, key: str = "images") -> int:
    """`images` checked against the training set; None means all of it."""
    if images is None:
        return n_train
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= n_train:
        raise AnalysisError(
            f"{key} must be an integer in 1..{n_train} (the training set) or null, got {images!r}"
        )
    return images


def subset_indices(n_train: int, images: int, seed: int) -> torch.Tensor:
    """Training-set indices of the fixed subset (see module doc), ascending."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "fixed_subset"))
    return torch.randperm(n_train, generator=generator)[:images].sort().values


def fixed_batches(
    ctx: RunContext, images: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed subset as normalised, unaugmented batches on the device."""
    device = ctx.data.train_x.device
    index = subset_indices(len(ctx.data.train_y), images, seed).to(device)
    return list(
        eval_batches(ctx.data.train_x[index], ctx.data.train_y[index], batch_size, ctx.normalize)
    )


def load_origin(ctx: RunContext, vector: torch.Tensor) -> None:
    """The model at `vector` (a private copy), BN statistics refreshed as RunContext.evaluate."""
    set_parameters(ctx.model, vector)
    refresh_bn(ctx.model, ctx.stream.inputs("analysis_bn", ctx.seed))


def test_accuracy(ctx: RunContext) -> float:
    """Test accuracy (%) of the model as it stands, in eval mode."""
    test = eval_batches(ctx.data.test_x, ctx.data.test_y, ctx.eval_batch_size, ctx.normalize)
    return evaluate(ctx.model, test)["acc"]


def refresh_with_test_accuracy(
    ctx: RunContext, vector: torch.Tensor, buffers: dict[str, torch.Tensor] | None
) -> dict[str, float]:
    """load_origin, with the test accuracy before (on `buffers`, NaN if None) and after it."""
    before = np.nan
    if buffers is not None:
        set_parameters(ctx.model, vector)
        with torch.no_grad():
            for name, buffer in ctx.model.named_buffers():
                buffer.copy_(buffers[name])
        before = test_accuracy(ctx)
    load_origin(ctx, vector)
    return {"test_acc_own_bn": before, "test_acc": test_accuracy(ctx)}


def parameter_table(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Names and sizes of the parameter tensors, in the order of the flat vectors."""
    named = list(model.named_parameters())
    return np.array([n for n, _ in named], dtype=str), np.array([p.numel() for _, p in named])


def parameter_norms(sizes: np.ndarray, vector: torch.Tensor) -> np.ndarray:
    """||w_l|| of every parameter tensor l of the flat `vector` (float64)."""
    pieces = torch.split(vector.to(torch.float64), [int(s) for s in sizes])
    return np.array([float(piece.norm()) for piece in pieces])
