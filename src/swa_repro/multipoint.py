"""Evaluate several weight vectors in one pass over the data (RunContext.evaluate_many).

The per-point procedure (analysis.points.RunContext.evaluate) is: load the vector, BN refresh
over the augmented training stream, evaluate on the training stream, evaluate on the test set.
Here P points share every batch: each batch is gathered, augmented and normalised once and
then fed to all P points, so a plane of G x G points costs G x G / P data passes instead of
G x G. Two ways to run the P forwards:

- "vmap": one functional model, parameters AND BN buffers stacked along a leading point axis,
  torch.func.functional_call under torch.func.vmap. BN layers run in train mode during the
  refresh and update their stacked running statistics in place with the plain float momentum
  b / (n + b) of bn_refresh, so every point gets exactly its own refreshed statistics. On a
  GPU this turns P small convolutions into one grouped convolution (fewer, larger kernels).
- "loop": P model copies ("batching models"), each fed the same batch in the same iteration.
  On CPU this is faster than vmap (grouped convolutions are slow there).

Under `speed`, bf16 autocast (BN in fp32) applies to both; channels_last to "loop" only.

"auto" picks vmap on CUDA and loop elsewhere. Both give the same metrics as evaluate() per
point, to floating-point summation order (tests/test_fast_paths.py).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import vector_to_parameters

from swa_repro.fast import Speed

MODES = ("auto", "vmap", "loop")


class _Points:
    """P weight vectors of one architecture, run together on a shared batch."""

    def __init__(self, model: nn.Module, vectors: torch.Tensor, mode: str, speed: Speed):
        self.n = vectors.shape[0]
        self.mode = mode
        if mode == "loop":
            self.models = []
            for vector in vectors:
                m = copy.deepcopy(model)
                m.to(memory_format=torch.contiguous_format)  # vector_to_parameters needs it
                vector_to_parameters(vector, m.parameters())
                self.models.append(speed.prepare(m))
            self.bns = [b for m in self.models for b in m.modules() if isinstance(b, _BatchNorm)]
        else:
            # channels_last is left out under vmap: batched NHWC tensors hit slow fallbacks
            base = copy.deepcopy(model).to("meta")  # the weights come stacked, below
            self.base = dataclasses.replace(speed, channels_last=False).prepare(base)
            self.params, offset = {}, 0
            for name, p in model.named_parameters():
                self.params[name] = vectors[:, offset : offset + p.numel()].reshape(
                    self.n, *p.shape
                )
                offset += p.numel()
            self.buffers = {
                name: b.detach().unsqueeze(0).repeat(self.n, *([1] * b.dim()))
                for name, b in model.named_buffers()
            }
            self.bns = [b for b in self.base.modules() if isinstance(b, _BatchNorm)]

            def call(params, buffers, x):
                return functional_call(self.base, (params, buffers), (x,))

            self.call = vmap(call, in_dims=(0, 0, None), randomness="different")

    def reset_bn(self) -> None:
        """Running mean 0, variance 1, counter 0 in every BN of every point (as reset_running_stats)."""
        if self.mode == "loop":
            for bn in self.bns:
                bn.reset_running_stats()
            return
        for module_name, module in self.base.named_modules():
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                prefix = f"{module_name}." if module_name else ""
                self.buffers[prefix + "running_mean"].zero_()
                self.buffers[prefix + "running_var"].fill_(1.0)
                self.buffers[prefix + "num_batches_tracked"].zero_()

    def set_momentum(self, momentum: float) -> None:
        for bn in self.bns:
            bn.momentum = momentum

    def train(self, mode: bool) -> None:
        for m in self.models if self.mode == "loop" else [self.base]:
            m.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (P, B, C) of every point on the batch x."""
        if self.mode == "loop":
            return torch.stack([m(x) for m in self.models])
        return self.call(self.params, self.buffers, x)


@torch.no_grad()
def evaluate_points(
    model: nn.Module,
    vectors: torch.Tensor,
    bn_inputs: Iterable[torch.Tensor],
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    weight_decay: float,
    mode: str = "auto",
    speed: Speed | None = None,
) -> list[dict[str, float]]:
    """METRICS of analysis.points for each row of `vectors` (P, D), one pass over each stream.

    `model` is only the architecture (its own weights are not used nor changed). bn_inputs,
    train_batches and test_batches are consumed once; every batch goes to all P points.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    speed = speed or Speed()
    device = next(model.parameters()).device
    if mode == "auto":
        mode = "vmap" if device.type == "cuda" else "loop"
    vectors = vectors.detach().to(device=device, dtype=torch.float32)
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be (points, parameters), got shape {tuple(vectors.shape)}")
    n_params = sum(p.numel() for p in model.parameters())
    if vectors.shape[1] != n_params:
        raise ValueError(f"vectors have {vectors.shape[1]} entries, the model {n_params}")
    points = _Points(model, vectors, mode, speed)

    with speed.autocast(device):
        if points.bns:  # BN refresh as bn_refresh.refresh_bn, for all points at once
            points.reset_bn()
            points.train(True)
            seen = 0
            for x in bn_inputs:
                b = x.shape[0]
                points.set_momentum(b / (seen + b))
                points(x)
                seen += b
        points.train(False)
        train = _metrics(points, train_batches)
        test = _metrics(points, test_batches)
    l2 = vectors.double().pow(2).sum(dim=1).cpu()
    results = []
    for i in range(points.n):
        results.append(
            {
                "train_loss": train["nll"][i] + 0.5 * weight_decay * float(l2[i]),
                "train_nll": train["nll"][i],
                "train_err": train["err"][i],
                "test_loss": test["nll"][i],
                "test_nll": test["nll"][i],
                "test_err": test["err"][i],
            }
        )
    return results


def _metrics(
    points: _Points, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, list[float]]:
    nll_sum = torch.zeros(points.n, dtype=torch.float64)
    correct = torch.zeros(points.n, dtype=torch.int64)
    n = 0
    for inputs, labels in batches:
        logits = points(inputs).float()  # (P, B, C)
        p, b, c = logits.shape
        nll = F.cross_entropy(logits.reshape(p * b, c), labels.repeat(p), reduction="none")
        nll_sum += nll.view(p, b).sum(dim=1).double().cpu()
        correct += (logits.argmax(dim=2) == labels).sum(dim=1).cpu()
        n += b
    acc = 100.0 * correct.double() / n
    return {"nll": (nll_sum / n).tolist(), "err": (100.0 - acc).tolist()}
