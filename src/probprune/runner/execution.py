"""The execution of a run: the runner owns the worker pool and the global torch settings.

The core (``nets``, ``sampling``, ``gap``, ``montecarlo``) takes an explicit
:class:`~probprune.config.ExecutionPolicy` and, for its CPU work items, an explicit pool of
workers; it never reads the environment and never changes global torch state. This module is
where a run turns its policy into that state, for the duration of the run only:

- ``threads``: torch's intra-op thread count on the calling thread, and a pool of that many
  single-threaded workers that run an ensemble's members / row blocks in parallel (each item on
  one thread, so results do not depend on the thread count);
- ``matmul``: the CUDA TF32 flags of float32 matrix products and convolutions.

On exit — normal or by an exception — the pool is shut down and the previous thread count and
flags are restored. ``PROBPRUNE_FORWARD`` (the documented ``auto|batched|members`` knob) is read
here, once per run, into the policy (:func:`policy_from_env`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch

from probprune.config import FORWARDS, ExecutionPolicy, Matmul, ProbPruneError

__all__ = ["FORWARD_ENV", "Execution", "execution", "matmul_precision", "policy_from_env"]

#: The environment variable that forces the form of an ensemble forward (``auto|batched|members``).
FORWARD_ENV = "PROBPRUNE_FORWARD"


def policy_from_env(environ: Mapping[str, str] | None = None, *, threads: int | None = None,
                    matmul: Matmul | None = None) -> ExecutionPolicy:
    """The run's policy: ``forward`` from ``$PROBPRUNE_FORWARD`` (default ``auto``), the rest as given.

    Raises:
        ProbPruneError: ``PROBPRUNE_FORWARD`` is set to anything but auto, batched or members.
    """
    env = os.environ if environ is None else environ
    mode = env.get(FORWARD_ENV, "auto")
    if mode not in FORWARDS:
        raise ProbPruneError(f"{FORWARD_ENV}={mode!r}: must be auto, batched or members")
    return ExecutionPolicy(forward=mode, threads=threads, matmul=matmul)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Execution:
    """What the core is handed inside :func:`execution`.

    Attributes:
        policy: the policy with ``threads`` resolved (never ``None``).
        workers: the single-threaded CPU workers: a pool of ``threads`` threads, or, when
            ``threads`` is 1, the calling thread itself (set to one intra-op thread).
    """

    policy: ExecutionPolicy
    workers: Executor


class _CallingThread(Executor):
    """An executor that runs each item at once on the calling thread (the one-thread case)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future, as a pool would
            fut.set_exception(exc)
        return fut


def _single_thread() -> None:
    """Pool initializer: each worker computes its items on one intra-op thread."""
    torch.set_num_threads(1)


@contextlib.contextmanager
def matmul_precision(mode: str) -> Iterator[None]:
    """Within the block, CUDA float32 matrix products and convolutions use ``mode``.

    ``fp32``: full float32 (TF32 off); ``tf32``: TF32 tensor cores. The previous global
    settings are restored on exit (also when the block raises). CPU products are unaffected.
    """
    if mode not in ("fp32", "tf32"):
        raise ProbPruneError(f"matmul={mode!r}: must be fp32 or tf32")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def execution(policy: ExecutionPolicy | None = None) -> Iterator[Execution]:
    """Apply ``policy`` (threads, TF32 flags) for the block; yield what the core needs.

    ``policy.threads = None`` keeps the process's current thread count, ``policy.matmul = None``
    its TF32 flags. The previous thread count and flags are restored on exit, also when the block
    raises.

    >>> from probprune.config import ExecutionPolicy
    >>> before = torch.get_num_threads()
    >>> with execution(ExecutionPolicy(threads=1)) as ex:
    ...     (ex.policy.threads, torch.get_num_threads())
    (1, 1)
    >>> torch.get_num_threads() == before
    True
    """
    pol = ExecutionPolicy() if policy is None else policy
    if not isinstance(pol, ExecutionPolicy):
        raise ProbPruneError(f"policy: expected an ExecutionPolicy, got {type(pol).__name__}")
    old_threads = torch.get_num_threads()
    threads = old_threads if pol.threads is None else pol.threads
    pool: ThreadPoolExecutor | None = None
    try:
        with contextlib.nullcontext() if pol.matmul is None else matmul_precision(pol.matmul):
            if threads != old_threads:
                torch.set_num_threads(threads)
            if threads > 1:
                pool = ThreadPoolExecutor(threads, thread_name_prefix="probprune-worker",
                                          initializer=_single_thread)
            yield Execution(replace(pol, threads=threads), _CallingThread() if pool is None else pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        # a worker's set_num_threads(1) also sets the count new threads start with: restore it
        torch.set_num_threads(old_threads)
