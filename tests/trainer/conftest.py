"""Fixtures the trainer tests share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models: their intra-op threads cost more
    than they give, and on a busy 2-core machine they contend (a 2-layer training run
    measured 7x slower with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
