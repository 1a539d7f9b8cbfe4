"""Evaluating a model of a run: the BN refresh over the run's training stream, the test metrics,
and the logits of the test and held-out splits, each rank taking its share in a distributed run.

One object for the training loop (Evaluator.of_run) and for work on a finished run
(Evaluator.open: the posterior command, load_model's check), so that a model evaluated after
training gets exactly the batches, BN-refresh stream and numerics the run used:

    refresh(module, epoch)   BN statistics recomputed over the BN-refresh pass of (0-based)
                             `epoch` (bn_refresh.refresh_bn; bn_refresh_images caps it), the
                             ranks' statistics combined; with keep_rng or a seed, the global RNG
                             (dropout in train mode draws from it) is restored afterwards
    test_metrics(module)     metrics.evaluate over the test set, sums added over the ranks
    logits(module, split)    this rank's logits (float32, CPU) and labels of "test" or "val"
    reduce(vector)           a CPU float64 vector summed over the ranks
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from swa_repro.bn_refresh import refresh_bn
from swa_repro.data import open_data
from swa_repro.distributed import Distributed
from swa_repro.fast import Speed
from swa_repro.metrics import evaluate
from swa_repro.rng import rng_kept


@dataclass
class Evaluator:
    data: object  # swa_repro.data: DeviceData or FolderData
    bn_stream: object  # the BN-refresh TrainStream
    speed: Speed
    device: torch.device
    dist: Distributed
    eval_batch_size: int
    bn_images: int | None  # cfg.bn_refresh_images
    epochs_done: int  # a final model's BN refresh uses the pass of the last epoch done

    @classmethod
    def of_run(cls, run) -> Evaluator:
        """The evaluator of a training run (a swa_repro.loop.Run) at its current epoch."""
        cfg = run.cfg
        batch = run.speed.eval_batch_size or cfg.eval_batch_size
        return cls(run.data, run.bn_stream, run.speed, run.device, run.dist, batch,
                   cfg.bn_refresh_images, run.state.epoch)  # fmt: skip

    @classmethod
    def open(cls, cfg: DictConfig, epochs_done: int, dist: Distributed | None = None) -> Evaluator:
        """The evaluator of a run's config (its data loaded as train.py does) after
        `epochs_done` epochs, on cfg.device."""
        dist = dist or Distributed()
        speed = Speed.from_cfg(cfg.get("speed"))
        speed.set_backends()
        device = dist.device(cfg.device)
        data = open_data(cfg, device, dist.rank, dist.world, dist.agree)
        bn_stream = data.train_stream(speed.bn_refresh_batch_size or cfg.optim.batch_size)
        batch = speed.eval_batch_size or cfg.eval_batch_size
        return cls(data, bn_stream, speed, device, dist, batch, cfg.bn_refresh_images, epochs_done)

    @property
    def has_val(self) -> bool:
        """Whether the run held training images out (data.val_size > 0)."""
        return getattr(self.data, "val_size", 0) > 0

    def refresh(
        self,
        module: torch.nn.Module,
        epoch: int | None = None,
        keep_rng: bool = False,
        seed: int | None = None,
    ) -> None:
        """Recompute the BN statistics of `module` over the BN-refresh pass of `epoch` (None:
        the last epoch done). keep_rng / seed: run it on a forked global RNG (seeded)."""
        epoch = self.epochs_done - 1 if epoch is None else epoch
        images = self.bn_stream.inputs("bn_refresh", epoch, self.bn_images)
        forked = rng_kept(self.device, seed) if keep_rng or seed is not None else None
        with forked or contextlib.nullcontext(), self.speed.autocast(self.device):
            refresh_bn(module, images, self.dist.all_reduce_sum)

    def test_metrics(self, module: torch.nn.Module) -> dict[str, float]:
        """Test-set metrics of `module` (sharded over the ranks and summed)."""
        batches = self.data.test_batches(self.eval_batch_size)
        with self.speed.autocast(self.device):
            return evaluate(module, batches, reduce=self.dist.all_reduce_sum)

    def evaluate(self, module: torch.nn.Module) -> dict[str, float]:
        """BN refresh over the last epoch's pass, then the test metrics."""
        self.refresh(module)
        return self.test_metrics(module)

    @torch.no_grad()
    def logits(self, module: torch.nn.Module, split: str = "test"):
        """(logits, labels) of this rank's share of `split` ("test" or "val"), on the CPU;
        module in eval mode (its mode restored)."""
        batches = (
            self.data.test_batches(self.eval_batch_size)
            if split == "test"
            else self.data.val_batches(self.eval_batch_size)
        )
        was_training, outputs, labels = module.training, [], []
        module.eval()
        try:
            with self.speed.autocast(self.device):
                for inputs, targets in batches:
                    outputs.append(module(inputs).float().cpu())
                    labels.append(targets.cpu())
        finally:
            module.train(was_training)
        return torch.cat(outputs), torch.cat(labels)

    def reduce(self, vector: torch.Tensor) -> torch.Tensor:
        """A CPU vector summed over the ranks (through the device: NCCL needs GPU tensors)."""
        if not self.dist.enabled:
            return vector
        return self.dist.all_reduce_sum(vector.to(self.device)).cpu()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (CPU), concatenated in rank order: the whole split."""
        return torch.cat(self.dist.gather(tensor.cpu()))
