"""Opt-in fast paths (config group `speed`): channels_last, bf16 autocast, TF32, torch.compile,
larger evaluation and BN-refresh batches.

Every switch is off in the default `speed=faithful`, which trains in true fp32 as the authors
did. Each one changes the numbers (slightly: see docs/performance.md for the measured effect
on accuracy), so all `speed.*` keys are part of a run's identity (a run is not resumed under
other settings).

- channels_last: model weights and inputs in NHWC memory format (faster convolutions on
  tensor cores; the same math, other kernels).
- bf16: forward pass and loss under torch.autocast(bfloat16). BatchNorm layers still compute
  in fp32 (their input is cast up, autocast is off inside them, the output is cast back to the
  input's dtype), as are their running statistics and all parameters and optimiser state.
- tf32: TF32 tensor-core math for fp32 matmuls and convolutions (Ampere+ GPUs; no effect on CPU).
- compile: torch.compile of the training forward/backward. The compiled wrapper shares the
  parameters of the plain model, which is what checkpoints save (its state_dict keys have no
  `_orig_mod.` prefix).
- eval_batch_size: test-evaluation batch (null: the top-level `eval_batch_size`). Does not
  change results beyond floating-point summation order.
- bn_refresh_batch_size: batch of the SWA BN refresh (null: `optim.batch_size`, as the
  authors). This DOES change the refreshed statistics: the running variance is the mean of
  per-batch variances, which grows slightly with the batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from swa_repro.config_check import ConfigError

BOOL_KEYS = ("channels_last", "bf16", "tf32", "compile")
BATCH_KEYS = ("eval_batch_size", "bn_refresh_batch_size")


@dataclass(frozen=True)
class Speed:
    """The `speed` config group as a value; Speed() is the faithful default (all off)."""

    channels_last: bool = False
    bf16: bool = False
    tf32: bool = False
    compile: bool = False
    eval_batch_size: int | None = None
    bn_refresh_batch_size: int | None = None

    @classmethod
    def from_cfg(cls, cfg) -> Speed:
        """From a `speed` config node (None or missing keys: faithful); ConfigError on bad values."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"speed settings must be a mapping of switches, got {cfg!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"unknown speed key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        values = {}
        for key in BOOL_KEYS:
            value = cfg.get(key, False)
            if not isinstance(value, bool):
                raise ConfigError(f"speed.{key} must be true or false, got {value!r}")
            values[key] = value
        for key in BATCH_KEYS:
            value = cfg.get(key, None)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ConfigError(f"speed.{key} must be null or a positive integer, got {value!r}")
            values[key] = value
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    def set_backends(self) -> None:
        """TF32 on or off for CUDA matmuls and cuDNN convolutions (process-wide)."""
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    def prepare(self, model: nn.Module) -> nn.Module:
        """Apply the model-side switches in place (fp32 BN under bf16, channels_last); returns it."""
        if self.bf16:
            keep_batchnorm_fp32(model)
        if self.channels_last:
            to_channels_last(model)
        return model

    def compiled(self, model: nn.Module) -> nn.Module:
        """torch.compile(model) when enabled, else model itself (same parameters either way)."""
        return torch.compile(model) if self.compile else model

    def autocast(self, device: torch.device | str):
        """bf16 autocast on `device` when enabled, else a no-op context."""
        device_type = torch.device(device).type
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)


# --- BatchNorm in fp32 under autocast ---------------------------------------------------------


class _FP32BatchNormMixin:
    """forward in fp32 with autocast off; the output gets the input's dtype back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            out = super().forward(x.float())
        return out.to(x.dtype)


class FP32BatchNorm1d(_FP32BatchNormMixin, nn.BatchNorm1d):
    pass


class FP32BatchNorm2d(_FP32BatchNormMixin, nn.BatchNorm2d):
    pass


class FP32BatchNorm3d(_FP32BatchNormMixin, nn.BatchNorm3d):
    pass


_FP32_CLASSES = {
    nn.BatchNorm1d: FP32BatchNorm1d,
    nn.BatchNorm2d: FP32BatchNorm2d,
    nn.BatchNorm3d: FP32BatchNorm3d,
}


def keep_batchnorm_fp32(model: nn.Module) -> nn.Module:
    """Make every BatchNorm{1,2,3}d of `model` compute in fp32 under autocast (in place).

    The class of each BN module is swapped for a subclass whose forward casts up and turns
    autocast off: parameters, buffers and state_dict keys are unchanged, copies (deepcopy,
    AveragedModel) keep the behaviour, and isinstance(m, _BatchNorm) still holds.
    """
    for module in model.modules():
        fp32_class = _FP32_CLASSES.get(type(module))
        if fp32_class is not None:
            module.__class__ = fp32_class
    return model


# --- channels_last ----------------------------------------------------------------------------


def _inputs_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, torch.Tensor) and a.dim() == 4
        else a
        for a in args
    )


def _contiguous_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def to_channels_last(model: nn.Module) -> nn.Module:
    """4-D weights in channels_last, and a pre-hook that converts 4-D inputs likewise (in place).

    state_dict() still returns contiguous (NCHW) tensors, so checkpoints look the same as
    without the switch (parameters_to_vector and the analyses read them as usual).
    """
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_inputs_channels_last)
    model.register_state_dict_post_hook(_contiguous_state)
    return model


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The parameters as one vector in the usual order, whatever their memory format
    (torch's parameters_to_vector needs contiguous parameters)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
