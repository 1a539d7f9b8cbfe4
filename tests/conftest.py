"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs use one thread, like OMP_NUM_THREADS=1 of the CLI runs: on a small loaded
    machine extra threads only slow them down (results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
