"""Shared pytest fixtures."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

# The CLI processes the tests start inherit this: one OpenMP thread each, as the test processes run
# (see ``one_thread``). pytest-xdist already runs one worker per core; a two-thread child beside a
# busy worker oversubscribes the CPU (on 2 cores a 3 s bound took 65-120 s so: benchmarks/RESULTS.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hypothesis import settings

# Under CI the property tests draw the same examples on every run (seeded by each test's name) and
# keep no example database: a CI result is reproducible with `CI=true make test`. Elsewhere they
# draw fresh examples each run, as hypothesis does by default.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":  # as the rest of the suite reads CI
    settings.load_profile("ci")


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
