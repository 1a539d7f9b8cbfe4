"""The process group of a multi-GPU / multi-node run (torch.distributed), and what ranks agree on.

A run is launched once per GPU: by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* set), or
as the tasks of a SLURM job under the submitit launcher (their SLURM variables are exported
to the same names). One process alone is world size 1 and every method here is then a no-op,
so the training loop reads the same for one process and for many.

What is shared across ranks, and how:
- the weights: DistributedDataParallel keeps them identical after every step, so the averaged
  weights (updated from them) are identical too; `assert_same` checks it at each checkpoint;
- sums (training loss, evaluation counts, BN statistics): `all_reduce_sum`;
- decisions only one rank may take (locking and choosing the checkpoint, which renames files):
  `agree`, which runs a function on rank 0 and hands its result, or its exception, to all.
Only rank 0 writes files and logs.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as torch_dist

from swa_repro.config_check import ConfigError, resolve_device

T = TypeVar("T")


class RanksDisagree(RuntimeError):
    """Ranks hold different values of something that must be identical on all of them."""


class Distributed:
    """This process's place in the run: rank, world size, local rank (all 0 / 1 / 0 alone)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto", timeout_min: float = 30) -> Distributed:
        """Join the process group the launcher describes (torchrun or submitit), once per process:
        NCCL when the run's `device` is a GPU (each process on the GPU of its local rank), else gloo."""
        if "RANK" not in os.environ and _submitit_tasks() > 1:
            from submitit.helpers import TorchDistributedEnvironment

            # MASTER_PORT, if set, is kept (submitit reads it); the rest comes from SLURM
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            return cls()
        dist = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
        if not torch_dist.is_initialized():
            on_gpu = dist.device(device).type == "cuda"  # sets this process's GPU first
            backend = "nccl" if on_gpu else "gloo"
            torch_dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
            # Leave the group before the interpreter tears down its threads (else: an abort)
            atexit.register(torch_dist.destroy_process_group)
        return dist

    def device(self, requested: str) -> torch.device:
        """The device of this rank: cuda:<local rank> for auto/cuda when CUDA is there, else CPU."""
        if not self.enabled:
            return resolve_device(requested)
        if requested.startswith("cuda:"):
            raise ConfigError(
                f"device={requested} with {self.world} processes: use device=cuda (or auto), "
                "each process takes the GPU of its local rank"
            )
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `model` (which keeps its own, unprefixed state_dict)."""
        if not self.enabled:
            return model
        device = next(model.parameters()).device
        device_ids = [device] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over the ranks (in place, also returned); the tensor itself alone."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        if not self.enabled:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([int(flag)], device=device)).item())

    def gather(self, value: T) -> list[T]:
        """`value` of every rank, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list = [None] * self.world
        torch_dist.all_gather_object(out, value)
        return out

    def agree(self, on_main: Callable[[], T]) -> T:
        """Run `on_main` on rank 0 only; every rank returns its result or raises its exception."""
        result, error = None, None
        if self.is_main:
            try:
                result = on_main()
            except Exception as exc:
                error = exc
        if self.enabled:
            box = [(result, error)]
            torch_dist.broadcast_object_list(box, src=0)
            result, error = box[0]
        if error is not None:
            raise error
        return result

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BN running statistics), as DDP does before a step."""
        if self.enabled:
            for buffer in model.buffers():
                torch_dist.broadcast(buffer, src=0)

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Give every rank rank 0's values of `tensors` (in place)."""
        if self.enabled:
            for tensor in tensors:
                torch_dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def assert_same(self, tensors, what: str) -> None:
        """Raise RanksDisagree unless `tensors` are bitwise identical on every rank."""
        if not self.enabled:
            return
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(
                t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )
        digests = self.gather(digest.hexdigest())
        if len(set(digests)) > 1:
            raise RanksDisagree(f"{what} differ between ranks (digests {digests})")


def _submitit_tasks() -> int:
    """Tasks of the SLURM job when this process is one of them under submitit, else 1."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", 1))
