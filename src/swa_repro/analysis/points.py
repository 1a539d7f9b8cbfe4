"""Evaluate a weight vector: the one procedure every analysis (plane, line, rays) uses, per
point (RunContext.evaluate) or for several points in one pass over the data (evaluate_many).

A point is a flat vector of the model's parameters (BN buffers are not part of it). To
evaluate it: load it into the model, recompute BN statistics over the augmented training
stream (bn_refresh), then measure on the training stream and on the test set:

    train_loss = train_nll + (weight_decay / 2) ||w||^2   (what SGD minimises)
    train_nll, train_err (%)  on the augmented training stream, as in the authors'
                              plane code (dnn-mode-connectivity evaluates its train loader,
                              which augments)
    test_loss = test_nll, test_err (%)

The BN-refresh and train-evaluation streams are drawn from fixed seeds, so every point of
an analysis sees exactly the same images. Data stay on the device across points and no
autograd graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from swa_repro.bn_refresh import refresh_bn
from swa_repro.cli import read_yaml
from swa_repro.config_check import check_device, check_int, resolve_device
from swa_repro.data import Normalizer, Splits, TrainStream, eval_batches, load_data
from swa_repro.fast import Speed
from swa_repro.layout import RunPaths
from swa_repro.metrics import evaluate
from swa_repro.models import instantiate_model
from swa_repro.multipoint import evaluate_points

METRICS = ("train_loss", "train_nll", "train_err", "test_loss", "test_nll", "test_err")


@dataclass
class RunContext:
    """A trained run's model skeleton and data, ready to evaluate many points."""

    cfg: DictConfig
    model: torch.nn.Module
    data: Splits
    stream: TrainStream
    normalize: Normalizer
    eval_batch_size: int
    seed: int  # of the analysis streams

    def evaluate(self, vector: torch.Tensor) -> dict[str, float]:
        """Metrics (METRICS) of the parameters `vector`, after a BN refresh."""
        vector_to_parameters(
            vector.to(next(self.model.parameters()).device), self.model.parameters()
        )
        refresh_bn(self.model, self.stream.inputs("analysis_bn", self.seed))
        train = evaluate(
            self.model,
            self.stream.batches("analysis_train", self.seed),
            weight_decay=self.cfg.optim.weight_decay,
        )
        test = evaluate(
            self.model,
            eval_batches(self.data.test_x, self.data.test_y, self.eval_batch_size, self.normalize),
        )
        return {
            "train_loss": train["loss"],
            "train_nll": train["nll"],
            "train_err": train["err"],
            "test_loss": test["nll"],
            "test_nll": test["nll"],
            "test_err": test["err"],
        }

    def evaluate_many(
        self,
        vectors: torch.Tensor,
        mode: str = "auto",
        bn_batch_size: int | None = None,
        speed: Speed | None = None,
    ) -> list[dict[str, float]]:
        """evaluate() of every row of `vectors` (P, D), in ONE pass over each stream for all P.

        Every batch of the BN-refresh, train and test streams is made once and fed to all P
        points (swa_repro.multipoint): "vmap" stacks parameters and BN buffers under
        torch.func.vmap, "loop" runs P model copies on the batch, "auto" is vmap on CUDA and
        loop otherwise. With the defaults the metrics equal evaluate() per point up to
        floating-point order. bn_batch_size (None: the stream's, as evaluate) changes the
        refreshed BN statistics; `speed` (bf16 autocast, channels_last) changes the numbers
        slightly (docs/performance.md).
        """
        bn_stream = self.stream
        if bn_batch_size is not None:
            bn_stream = TrainStream(
                self.stream.images,
                self.stream.labels,
                bn_batch_size,
                self.normalize,
                self.stream.seed,
            )
        return evaluate_points(
            self.model,
            vectors,
            bn_stream.inputs("analysis_bn", self.seed),
            self.stream.batches("analysis_train", self.seed),
            eval_batches(self.data.test_x, self.data.test_y, self.eval_batch_size, self.normalize),
            weight_decay=self.cfg.optim.weight_decay,
            mode=mode,
            speed=speed,
        )


def load_context(
    run_dir: str | Path, device: str = "auto", eval_batch_size: int | None = None, seed: int = 0
) -> RunContext:
    """The model and data of the run in `run_dir` (its config.yaml says which)."""
    check_device(device)
    check_int(seed, "seed", minimum=0)
    if eval_batch_size is not None:
        check_int(eval_batch_size, "eval_batch_size")
    cfg = read_yaml(RunPaths(run_dir).config, "run config")
    dev = resolve_device(device)
    Speed().set_backends()  # true fp32 as in training (PyTorch enables TF32 for convolutions)
    data = load_data(cfg.data).to(dev)
    no_download = {"pretrained": None} if "pretrained" in cfg.model else {}
    model = instantiate_model(cfg.model, **no_download).to(dev)
    normalize = Normalizer(cfg.model.mean, cfg.model.std, dev)
    # The refresh uses the run's training batch size: BN variances are means of per-batch variances.
    stream = TrainStream(data.train_x, data.train_y, cfg.optim.batch_size, normalize, seed)
    return RunContext(
        cfg, model, data, stream, normalize, eval_batch_size or cfg.eval_batch_size, seed
    )


def stored_weights(state: dict, which: str) -> dict[str, torch.Tensor]:
    """The state_dict of a loaded checkpoint's `which` ("model" = the SGD iterate, or an averaged
    model's name, e.g. "swa"), keyed as the network's own (no "module." prefix, no n_averaged);
    ValueError when the checkpoint holds no such model, or nothing averaged yet."""
    averaged = state.get("collectors") or {}
    if which != "model" and which not in averaged:
        held = ", ".join(["model", *averaged])
        raise ValueError(f"unknown selector {which!r}: the checkpoint holds {held}")
    weights = state["model"] if which == "model" else averaged[which]
    if "sq_mean" in weights:
        raise ValueError(f"{which} is a posterior, not one weight vector (its mean is swa)")
    if "n_averaged" in weights and int(weights["n_averaged"]) == 0:
        raise ValueError(f"the checkpoint holds no {which} yet (averaging had not begun)")
    return {k.removeprefix("module."): v for k, v in weights.items() if k != "n_averaged"}


def state_vector(state: dict, which: str, model: torch.nn.Module) -> torch.Tensor:
    """The flat parameter vector of a loaded checkpoint's `which` (see stored_weights), in
    `model`'s parameter order."""
    weights = stored_weights(state, which)
    names = dict(model.named_parameters())
    return parameters_to_vector([weights[name].to(torch.float32) for name in names]).cpu()
