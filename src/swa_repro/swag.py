"""SWAG: a Gaussian posterior around the SWA mean (Maddox et al., NeurIPS 2019, section 3).

Collected at the SWA epochs. With w_n the n-th collected weights (every parameter, in order; BN
statistics are not collected) and mean_n the SWA mean after w_n's inclusion:

    sq_mean_n = sq_mean_{n-1} + (w_n^2 - sq_mean_{n-1}) / n        running second moment
    D         = [w_i - mean_i for the last K collected i]           deviations, d x K, oldest first
    var       = clamp(sq_mean - mean^2, min=1e-30)                  diagonal variance

A sample, for z1 ~ N(0, I_d) and ONE z2 ~ N(0, I_K) shared by all parameter tensors:

    SWAG-Diag:  w = mean + sqrt(s) * sqrt(var) * z1                  Cov = s diag(var)
    SWAG:       w = mean + sqrt(s) * (sqrt(var) * z1 + D z2 / sqrt(K - 1))
                                                                     Cov = s (diag(var) + D D^T / (K - 1))

s = swag.scale (0.5 in the paper, whose (1/sqrt 2) var^(1/2) z1 + D z2 / sqrt(2 (K - 1)) is s = 0.5)
or swag.scale_diag (1.0 in the paper) for SWAG-Diag.

Source: wjmaddox/swa_gaussian, swag/posteriors/swag.py (collect_model, sample_fullrank);
var_clamp 1e-30 as there. Deliberately different:
- K is the number of deviations held, min(collected, max_rank). The reference divides by
  sqrt(max_rank - 1) even when fewer have been collected, which shrinks the low-rank part of its
  covariance until max_rank models are in.
- The first moment is not stored here: it is the SWA average's (AveragedModel's parameters,
  mean + (w - mean) / (n + 1), the reference's n/(n+1) mean + w/(n+1) up to rounding), passed in.
  Memory is then (K + 2) copies of the parameters in all: the SWA mean, sq_mean, K deviations
  (optionally on another device, e.g. the CPU). D z2 is a K-term sum per parameter tensor; no
  d x d matrix is ever formed.
- The deviations sit in a ring buffer of max_rank rows (the reference re-concatenates them at
  every collection); a sample takes them oldest first, so a given (z1, z2) is one well-defined w.
- z1 and z2 come from the caller's torch.Generator, never the global RNG (the reference calls
  torch.manual_seed). The generator yields z2 (K values) first, then z1 parameter by parameter,
  in both variants: SWAG and SWAG-Diag drawn with the same seed share z1.
- Elsewhere: torch-uncertainty draws z2 per layer (losing the cross-layer correlations) and floors
  var at 1e-6; a sample once used var instead of its square root (drbayes #6). Neither here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from swa_repro.checkpoint import CheckpointError
from swa_repro.config_check import ConfigError, check_int
from swa_repro.rng import derive_seed

VAR_CLAMP = 1e-30
Tensors = Sequence[torch.Tensor]


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of posterior sample `index` of a run seeded `seed`: its own stream,
    derive_seed(seed, "swag", index), the same on every device and across resumes."""
    return torch.Generator().manual_seed(derive_seed(seed, "swag", index))


class Swag:
    """Second moment and the last max_rank deviations of the collected weights; samples around
    a mean passed in. `low_rank=False` keeps no deviations (SWAG-Diag only, 2 copies in all)."""

    def __init__(
        self,
        like: Tensors,
        max_rank: int = 20,
        low_rank: bool = True,
        deviation_device: torch.device | str | None = None,
    ):
        check_int(max_rank, "swag.max_rank", minimum=2)
        self.max_rank = max_rank
        self.count = 0
        self.sq_mean = [torch.zeros_like(p, requires_grad=False) for p in like]
        self.deviations = None
        if low_rank:
            self.deviations = [
                torch.zeros(
                    (max_rank, p.numel()), dtype=p.dtype, device=deviation_device or p.device
                )
                for p in like
            ]

    @property
    def low_rank(self) -> bool:
        return self.deviations is not None

    @property
    def rank(self) -> int:
        """K: the number of deviations held (for a diagonal-only posterior, those it would hold)."""
        return min(self.count, self.max_rank)

    @torch.no_grad()
    def update(self, weights: Tensors, mean: Tensors) -> None:
        """Collect `weights`; `mean` is the SWA mean AFTER their inclusion (as the reference)."""
        self._check_like(weights, "weights")
        self._check_like(mean, "mean")
        slot = self.count % self.max_rank
        fraction = 1.0 / (self.count + 1)
        for i, (w, m, sq) in enumerate(zip(weights, mean, self.sq_mean, strict=True)):
            sq.lerp_(w.detach().square(), fraction)
            if self.low_rank:
                self.deviations[i][slot].copy_((w.detach() - m).flatten())
        self.count += 1

    def variance(self, mean: Tensors) -> list[torch.Tensor]:
        """clamp(sq_mean - mean^2, min=1e-30) per parameter tensor."""
        self._check_like(mean, "mean")
        return [
            (sq - m.square()).clamp_(min=VAR_CLAMP)
            for m, sq in zip(mean, self.sq_mean, strict=True)
        ]

    def chronological_deviations(self) -> list[torch.Tensor]:
        """D^T per parameter tensor: (K, numel) copies, oldest deviation first."""
        self._require_low_rank()
        slots = torch.tensor(self._chronological_slots(), dtype=torch.long)
        return [d.index_select(0, slots.to(d.device)) for d in self.deviations]

    @torch.no_grad()
    def sample(
        self,
        mean: Tensors,
        z1: Iterable[torch.Tensor],
        z2: torch.Tensor | None = None,
        scale: float = 1.0,
        out: Tensors | None = None,
    ) -> list[torch.Tensor]:
        """mean + sqrt(scale) (sqrt(var) z1 + D z2 / sqrt(K - 1)), SWAG-Diag when z2 is None.

        z1 holds one tensor per parameter (any iterable, consumed in order), z2 K values (oldest
        deviation first). Written into `out` (e.g. a model's parameters) when given.
        """
        self._check_like(mean, "mean")
        if self.count == 0:
            raise ConfigError("SWAG has collected no model: no posterior to sample")
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}")
        coefficients = None if z2 is None else self._slot_coefficients(z2)
        results = []
        for i, (m, sq, z) in enumerate(zip(mean, self.sq_mean, z1, strict=True)):
            noise = (sq - m.square()).clamp_(min=VAR_CLAMP).sqrt_().mul_(z.to(m.device, m.dtype))
            if coefficients is not None:
                rows = self.deviations[i][: self.rank]
                low_rank = coefficients.to(rows.device, rows.dtype) @ rows
                noise.add_(low_rank.view_as(m).to(m.device))
            w = noise.mul_(math.sqrt(scale)).add_(m)
            if out is not None:
                out[i].detach().copy_(w)
                w = out[i]
            results.append(w)
        return results

    def draw(
        self,
        mean: Tensors,
        generator: torch.Generator,
        scale: float,
        low_rank: bool,
        out: Tensors | None = None,
    ) -> list[torch.Tensor]:
        """A sample with z2 then z1 drawn from `generator` (on its device); SWAG-Diag unless
        `low_rank`. z1 is drawn one parameter tensor at a time (no extra full copy)."""
        dtype = mean[0].dtype
        z2 = torch.randn(self.rank, generator=generator, dtype=dtype, device=generator.device)
        z1 = (
            torch.randn(m.shape, generator=generator, dtype=m.dtype, device=generator.device)
            for m in mean
        )
        return self.sample(mean, z1, z2 if low_rank else None, scale, out)

    def state_dict(self, deviations: bool = True) -> dict:
        """{"max_rank", "count", "sq_mean"[, "deviations"]}: ints and lists of the live tensors
        (save before the next update). "deviations" holds the ring buffer, (max_rank, numel) per
        parameter tensor: row (count - K + j) % max_rank is the j-th oldest, rows >= K are zero.
        deviations=False leaves it out (a state that can only give SWAG-Diag)."""
        state = {"max_rank": self.max_rank, "count": self.count, "sq_mean": list(self.sq_mean)}
        if deviations and self.low_rank:
            state["deviations"] = list(self.deviations)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy a state_dict() in (onto this posterior's devices); CheckpointError if it does not
        fit. A low-rank posterior needs a state with deviations."""
        if state["max_rank"] != self.max_rank:
            raise CheckpointError(
                f"SWAG state has max_rank {state['max_rank']}, this posterior {self.max_rank}"
            )
        if self.low_rank and "deviations" not in state:
            raise CheckpointError("SWAG state carries no deviations: it gives SWAG-Diag only")
        _copy_into(self.sq_mean, state["sq_mean"], "sq_mean")
        if self.low_rank:
            _copy_into(self.deviations, state["deviations"], "deviations")
        self.count = int(state["count"])

    @classmethod
    def from_state_dict(
        cls, state: dict, deviation_device: torch.device | str | None = None
    ) -> Swag:
        """A posterior rebuilt from a state_dict() alone (low rank when it has the deviations)."""
        swag = cls(state["sq_mean"], state["max_rank"], "deviations" in state, deviation_device)
        swag.load_state_dict(state)
        return swag

    @classmethod
    def from_moments(
        cls,
        sq_mean: Tensors,
        count: int,
        max_rank: int,
        deviations: Tensors | None = None,
        deviation_device: torch.device | str | None = None,
    ) -> Swag:
        """A posterior from its second moment, count and (optionally) the chronological
        deviations, (K, numel) per parameter tensor oldest first (chronological_deviations())."""
        swag = cls(sq_mean, max_rank, deviations is not None, deviation_device)
        swag.count = int(count)
        _copy_into(swag.sq_mean, sq_mean, "sq_mean")
        if deviations is not None:
            slots = torch.tensor(swag._chronological_slots(), dtype=torch.long)
            for ring, rows in zip(swag.deviations, deviations, strict=True):
                if rows.shape != (swag.rank, ring.shape[1]):
                    raise CheckpointError("SWAG deviations do not fit the model's parameters")
                ring[slots.to(ring.device)] = rows.to(ring.device, ring.dtype)
        return swag

    def _chronological_slots(self) -> list[int]:
        first = self.count - self.rank
        return [(first + j) % self.max_rank for j in range(self.rank)]

    def _slot_coefficients(self, z2: torch.Tensor) -> torch.Tensor:
        """z2 / sqrt(K - 1) placed at the ring slots of the deviations they multiply."""
        self._require_low_rank()
        if self.rank < 2:
            raise ConfigError(f"SWAG needs at least 2 collected models, has {self.rank}")
        if z2.shape != (self.rank,):
            raise ValueError(f"z2 must have shape ({self.rank},), got {tuple(z2.shape)}")
        coefficients = torch.empty_like(z2)
        coefficients[self._chronological_slots()] = z2 / math.sqrt(self.rank - 1)
        return coefficients

    def _require_low_rank(self) -> None:
        if not self.low_rank:
            raise ConfigError("this SWAG posterior has no deviations: only SWAG-Diag can be drawn")

    def _check_like(self, tensors: Tensors, what: str) -> None:
        """ValueError unless `tensors` are shaped as the collected parameter tensors."""
        shapes = [tuple(t.shape) for t in tensors]
        expected = [tuple(sq.shape) for sq in self.sq_mean]
        if shapes != expected:
            where = next(
                (i for i, (a, b) in enumerate(zip(shapes, expected, strict=False)) if a != b), None
            )
            detail = (
                f"{len(shapes)} tensors, not {len(expected)}"
                if where is None
                else f"tensor {where} has shape {shapes[where]}, not {expected[where]}"
            )
            raise ValueError(f"SWAG {what} do not fit the collected parameters: {detail}")


def _copy_into(targets: list[torch.Tensor], sources: Sequence[torch.Tensor], key: str) -> None:
    if len(sources) != len(targets) or any(
        s.shape != t.shape or s.dtype != t.dtype for s, t in zip(sources, targets, strict=True)
    ):
        raise CheckpointError(f"SWAG state '{key}' does not fit the model's parameters")
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
