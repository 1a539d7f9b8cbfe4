"""Crash-safe checkpoint files.

Format: the bytes of torch.save(state) followed by a 32-byte SHA-256 of those bytes
and an 8-byte magic. Loading checks the magic and the digest before anything is
unpickled (a truncated or bit-flipped file is caught), then unpickles with
torch.load(weights_only=True), which refuses any object that would run code.

Writing is atomic: a temporary file in the same folder is written, flushed and
fsynced, then renamed over the target (and the folder fsynced), so at every instant
the target holds either the old or the new complete checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

MAGIC = b"SWACKPT1"
DIGEST_SIZE = 32


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be trusted; the message names it."""


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path` (.NAME.tmpPID), fsync, rename over `path`,
    fsync the folder: at every instant `path` is the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def save_checkpoint(state: dict, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    write_atomic(path, payload + hashlib.sha256(payload).digest() + MAGIC)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if len(blob) < DIGEST_SIZE + len(MAGIC) or not blob.endswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is truncated or not a swa_repro checkpoint")
    payload = blob[: -DIGEST_SIZE - len(MAGIC)]
    digest = blob[-DIGEST_SIZE - len(MAGIC) : -len(MAGIC)]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} refused by the safe loader: {first_line}"
        ) from None


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
