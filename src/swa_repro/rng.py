"""Seeding and random-state capture.

Data order, augmentation and the BN-refresh stream each draw from a generator seeded
by derive_seed(run seed, purpose, epoch): a pure function of (seed, epoch), so a
resumed run replays any epoch exactly. The global generators (torch CPU/CUDA, numpy,
python; dropout uses torch's) are captured in every checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch


def derive_seed(*keys: object) -> int:
    """A 63-bit seed determined by `keys` (stable across processes and platforms)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """Every global random state, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate needs tuples; a save/load round trip may hand back lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


@contextlib.contextmanager
def rng_kept(device: torch.device, seed: int | None = None):
    """Inside: the global torch RNG of the CPU and of `device` (a GPU's), seeded with `seed` when
    given; on exit both are restored, as if nothing had drawn from them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
        yield
