"""Shared pytest fixtures."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads; the old count is restored on leaving, also on an error."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Every test module runs torch on one intra-op thread; the old count is restored after the module.

    The tensors of the suite are tiny: one thread is faster and immune to a busy shared CPU, and
    results that could depend on the thread count (float64 sums in the certified bound, compared
    bit for bit across executors) are computed under the same count everywhere. Module scope, so
    module-scoped fixtures that build runs (set up after this autouse fixture) run on one thread too.
    """
    with torch_threads(1):
        yield
