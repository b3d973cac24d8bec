"""Run units of work on a Ray cluster (``--executor ray``); same results as the local executor.

:class:`RayExecutor` has the shape of :class:`probprune.runner.verify.LocalExecutor`: ``map(fn,
units)`` yields ``(unit, rows)`` pairs as units finish. Each unit becomes one Ray task that
calls ``fn(unit)`` in a worker process; a unit is plain data and ``fn`` derives every seed from
(config hash, grid point, trial), so a task computes exactly what the local executor computes
for that unit on the same device and dtype. Nothing here writes files: the driver
(:func:`probprune.runner.verify.run_verify`) stores what ``map`` yields, one transaction per unit.

Failures:

* a worker process that dies (killed, out of memory, node lost) is a *system* failure: Ray
  re-runs the task up to ``max_retries`` times. A task's result reaches the driver once, and
  the driver stores rows keyed by ``(grid_index, trial)`` and skips stored trials, so a trial is
  never recorded twice;
* an exception raised by ``fn`` is an *application* failure: it is not retried, it is recorded
  with the unit's description (grid point, trials and their seeds) and the remaining units go
  on. When every unit has been handled, ``map`` raises :class:`SweepError` naming each failed
  unit; the rows of the others are already stored, so re-running the same command computes
  only the missing trials.

``ray`` is an optional dependency (``pip install 'probprune[ray]'``) imported only inside
functions, so ``import probprune`` never needs it.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from probprune.config import ProbPruneError
from probprune.rng import derive_seed

__all__ = [
    "RAY_INSTALL_HINT",
    "RayExecutor",
    "SweepError",
    "UnitFailure",
    "describe_unit",
    "import_ray",
    "make_executor",
    "parse_address",
]

RAY_INSTALL_HINT = "pip install 'probprune[ray]'"
#: Ray refuses an object store smaller than this (bytes).
MIN_OBJECT_STORE = 75 * 1024 * 1024

U = TypeVar("U")
Rows = list[Any]  # what a unit gives: trial records (verify) or setting rows (experiment)


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ProbPruneError` that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ProbPruneError(f"--executor ray: ray is not installed ({e}); install it with {RAY_INSTALL_HINT}"
                             ) from None
    return ray


def parse_address(address: str | None) -> tuple[str, str | None, int | None]:
    """Classify a cluster address: ``('local'|'auto'|'client'|'gcs', host, port)``.

    >>> parse_address(None), parse_address("auto")
    (('local', None, None), ('auto', None, None))
    >>> parse_address("ray://10.0.0.1:10001"), parse_address("head:6379")
    (('client', '10.0.0.1', 10001), ('gcs', 'head', 6379))
    """
    if address is None or address == "":
        return "local", None, None
    if address == "auto":
        return "auto", None, None
    kind, rest = ("client", address[len("ray://"):]) if address.startswith("ray://") else ("gcs", address)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProbPruneError(f"--address {address!r}: expected 'auto', 'ray://HOST:PORT' or 'HOST:PORT'")
    return kind, host.strip("[]"), int(port_text)


def _check_reachable(address: str, host: str, port: int, timeout_s: float) -> None:
    """Open (and close) a TCP connection to ``host:port`` within ``timeout_s`` or fail clearly."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ProbPruneError(f"--address {address!r}: cannot reach a Ray cluster at {host}:{port} within "
                             f"{timeout_s:g} s ({e.strerror or e})") from None


@dataclass(frozen=True)
class UnitFailure:
    """A unit whose function raised (or whose worker died more often than ``max_retries``).

    Attributes:
        unit: :func:`describe_unit` of the unit (grid point, trials, seeds).
        error: ``"ExceptionType: message"``.
        traceback: the worker-side traceback text ('' when the worker died).
    """

    unit: str
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.unit}: {self.error}"


class SweepError(ProbPruneError):
    """Some units failed; the others were computed and stored. ``failures`` lists the failed units."""

    def __init__(self, failures: Sequence[UnitFailure], n_units: int) -> None:
        self.failures = tuple(failures)
        self.n_units = n_units
        shown = "; ".join(str(f) for f in self.failures[:5])
        more = f"; … and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} of {n_units} unit(s) failed, the other units were stored "
                         f"(re-run the same command to retry only the missing trials): {shown}{more}")


def describe_unit(unit: Any) -> str:
    """A short description of a unit for error messages: grid point, trials and their seeds.

    A verify unit (attributes ``config_hash``, ``grid_index``, ``trials``) is described with the
    seed of each trial — the ``seed`` column of the trials table,
    ``derive_seed(config_hash, grid_index, trial, "weights")``; another unit by its ``describe()``
    method when it has one, else by ``repr``.
    """
    describe = getattr(unit, "describe", None)
    if callable(describe):
        return str(describe())
    g, trials, h = getattr(unit, "grid_index", None), getattr(unit, "trials", None), getattr(unit, "config_hash", None)
    if g is None or trials is None or h is None:
        return repr(unit)
    seeds = ", ".join(f"trial {t} (seed {derive_seed(h, g, t, 'weights')})" for t in trials)
    return f"grid point {g}: {seeds}"


def _unit_device(unit: Any) -> str:
    cfg = getattr(unit, "config", None)
    if isinstance(cfg, dict):
        mc = cfg.get("mc")
        if isinstance(mc, dict) and isinstance(mc.get("device"), str):
            return str(mc["device"])
    dev = getattr(unit, "device", "cpu")
    return dev if isinstance(dev, str) else "cpu"


def _run_unit(fn: Callable[[Any], Rows], unit: Any, threads: int) -> tuple[bool, Any, str]:
    """Worker side: ``(True, rows, '')`` or ``(False, 'Type: message', traceback)`` — never raises.

    Catching here keeps application errors out of Ray's retry machinery (only a dying worker is
    retried) and carries the worker's traceback back to the driver as plain text. ``threads`` fixes
    torch's intra-op threads (a pooled worker may have run a task with another setting).
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        return True, fn(unit), ""
    except Exception as e:  # reported per unit by the driver; the sweep goes on
        return False, f"{type(e).__name__}: {e}", traceback.format_exc()


class RayExecutor:
    """Runs units as Ray tasks, yielding ``(unit, rows)`` as they finish (``ray.wait``).

    Args:
        address: ``None`` starts a private local Ray instance (or uses the one this process
            already started with ``ray.init``); ``"auto"`` joins the cluster started on this
            machine with ``ray start``; ``"ray://HOST:PORT"`` (Ray client) or ``"HOST:PORT"`` (GCS)
            joins a remote cluster — an unreachable one fails within ``connect_timeout_s``.
        num_cpus: CPUs of a local instance (default: all of this machine's).
        object_store_memory: bytes of a local instance's object store (default: Ray's choice;
            at least 75 MiB).
        max_retries: times Ray re-runs a task whose worker died.
        num_gpus: GPUs per task; ``None`` asks for 1 when the unit's device is ``cuda``, else 0.
        connect_timeout_s: bound on reaching / joining an existing cluster (seconds).
        runtime_env: Ray runtime environment for the tasks (e.g. ``{"pip": ["probprune[ray]"]}``
            on nodes without probprune installed).
        threads_per_task: CPUs each task reserves and torch threads it uses. Results are
            bit-identical to the local executor run with the same torch thread count; with another
            count, multi-threaded float64 linear algebra may change the certified bound
            (``gap_upper``) in its last bits (measured: ≤ 1.5e-15 relative, docs/distributed.md).
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_memory: int | None = None, max_retries: int = 3, num_gpus: float | None = None,
                 connect_timeout_s: float = 30.0, runtime_env: dict[str, Any] | None = None,
                 threads_per_task: int = 1) -> None:
        self.kind, self.host, self.port = parse_address(address)
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ProbPruneError(f"num_cpus={num_cpus!r}: must be an integer >= 1")
        if object_store_memory is not None and (not isinstance(object_store_memory, int)
                                                or object_store_memory < MIN_OBJECT_STORE):
            raise ProbPruneError(f"object_store_memory={object_store_memory!r}: must be an integer >= "
                                 f"{MIN_OBJECT_STORE} bytes (75 MiB, Ray's minimum)")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ProbPruneError(f"max_retries={max_retries!r}: must be an integer >= 0")
        if num_gpus is not None and not num_gpus >= 0:
            raise ProbPruneError(f"num_gpus={num_gpus!r}: must be >= 0")
        if isinstance(threads_per_task, bool) or not isinstance(threads_per_task, int) or threads_per_task < 1:
            raise ProbPruneError(f"threads_per_task={threads_per_task!r}: must be an integer >= 1")
        if not connect_timeout_s > 0:
            raise ProbPruneError(f"connect_timeout_s={connect_timeout_s!r}: must be > 0")
        if self.kind != "local" and (num_cpus is not None or object_store_memory is not None):
            raise ProbPruneError(f"--address {address!r}: num_cpus / object_store_memory apply only to a local "
                                 "instance (the cluster's own settings are used)")
        self.address = address
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.max_retries = max_retries
        self.num_gpus = num_gpus
        self.connect_timeout_s = float(connect_timeout_s)
        self.runtime_env = runtime_env
        self.threads_per_task = threads_per_task
        self._owned = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RayExecutor:
        """Start or join Ray (idempotent); raises :class:`ProbPruneError` on a missing ray or unreachable cluster."""
        ray = import_ray()
        if self._started and ray.is_initialized():
            return self
        if self.host is not None and self.port is not None:
            _check_reachable(str(self.address), self.host, self.port, self.connect_timeout_s)
        if ray.is_initialized():
            # someone in this process (a script, a test) already chose the cluster: use it, leave it running
            self._started, self._owned = True, False
            return self
        kw: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
        if self.runtime_env is not None:
            kw["runtime_env"] = self.runtime_env
        if self.kind == "local":
            # a private instance on this machine: no dashboard, no token (nothing else can reach it)
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=self.num_cpus, object_store_memory=self.object_store_memory,
                     include_dashboard=False, **kw)
            self._owned = True
        else:
            self._join(ray, kw)
            self._owned = False
        self._started = True
        return self

    def _join(self, ray: Any, kw: dict[str, Any]) -> None:
        """``ray.init(address=…)`` bounded by ``connect_timeout_s`` (Ray's own waits run to minutes)."""
        outcome: dict[str, BaseException | None] = {}

        def target() -> None:
            try:
                ray.init(address=self.address, **kw)
                outcome["error"] = None
            except BaseException as e:  # includes the SystemExit Ray raises when the GCS never answers
                outcome["error"] = e

        t = threading.Thread(target=target, name="probprune-ray-connect", daemon=True)
        t.start()
        t.join(self.connect_timeout_s)
        if t.is_alive():
            raise ProbPruneError(f"--address {self.address!r}: no Ray cluster answered within "
                                 f"{self.connect_timeout_s:g} s")
        err = outcome.get("error")
        if err is not None:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ProbPruneError(f"--address {self.address!r}: cannot join the Ray cluster ({msg})") from None

    def shutdown(self) -> None:
        """Stop the local instance this executor started (a joined cluster is left running)."""
        if self._started and self._owned:
            ray = import_ray()
            if ray.is_initialized():
                ray.shutdown()
        self._started = self._owned = False

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> dict[str, Any]:
        """Where the work runs (call after :meth:`start`): ``where`` (``"local Ray instance"`` or the
        cluster address), ``address`` (the GCS address Ray reports), ``n_nodes``, ``n_cpus``, ``n_gpus``
        and ``n_workers`` (tasks that can run at once: CPUs // ``threads_per_task``)."""
        ray = import_ray()
        self.start()
        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive", True)]
        try:
            gcs = str(ray.get_runtime_context().gcs_address)
        except Exception:  # older Ray or Ray client: the address given is all we know
            gcs = str(self.address)
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        where = "local Ray instance" if self.kind == "local" else f"Ray cluster {self.address}"
        return {"where": where, "address": gcs, "n_nodes": len(nodes), "n_cpus": cpus, "n_gpus": gpus,
                "n_workers": max(1, int(cpus) // self.threads_per_task)}

    # ------------------------------------------------------------------ checks

    def cluster_gpus(self) -> float:
        """GPUs the cluster has in total (starts / joins Ray first)."""
        ray = import_ray()
        self.start()
        return float(ray.cluster_resources().get("GPU", 0.0))

    def check_device(self, device: str) -> None:
        """Check ``device`` against the cluster (not this machine): ``cuda`` needs GPUs on some node.

        Raises:
            ProbPruneError: CUDA asked for and the cluster has no GPU; ``cuda:N`` with N > 0 (Ray
                gives each task its own GPU, visible to it as ``cuda:0`` — use ``cuda``).
        """
        if not device.startswith("cuda"):
            return
        if ":" in device and device.split(":", 1)[1] not in ("0", ""):
            raise ProbPruneError(f"mc.device={device!r}: with --executor ray use 'cuda' (Ray assigns each task "
                                 "one GPU, which the task sees as cuda:0)")
        gpus = self.cluster_gpus()
        need = 1.0 if self.num_gpus is None else self.num_gpus
        if gpus < max(need, 1e-9):
            where = "the local Ray instance" if self.kind == "local" else f"the Ray cluster at {self.address!r}"
            raise ProbPruneError(f"mc.device={device!r}: {where} has no GPU (cluster GPUs: {gpus:g}); "
                                 "start workers on GPU nodes or use --device cpu")

    def _gpus_for(self, units: Sequence[Any]) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if any(_unit_device(u).startswith("cuda") for u in units) else 0.0

    # ------------------------------------------------------------------ work

    def map(self, fn: Callable[[U], Rows], units: Sequence[U]) -> Iterator[tuple[U, Rows]]:
        """Run ``fn`` on every unit as a Ray task; yield ``(unit, rows)`` in order of completion.

        Raises:
            ProbPruneError: ray missing, cluster unreachable, GPUs asked for on a cluster without any.
            SweepError: after every other unit was yielded, when some units raised or their
                workers died more than ``max_retries`` times.
        """
        if not units:
            return
        ray = import_ray()
        self.start()
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if cpus < self.threads_per_task:  # such a task could never be scheduled: fail instead of waiting
            raise ProbPruneError(f"threads_per_task={self.threads_per_task}: the Ray cluster has {cpus:g} CPU(s)")
        gpus = self._gpus_for(units)
        if gpus > 0:
            have = float(ray.cluster_resources().get("GPU", 0.0))
            if have < gpus:
                raise ProbPruneError(f"units ask for {gpus:g} GPU each but the Ray cluster has {have:g}; "
                                     "start workers on GPU nodes or use --device cpu")
        task = ray.remote(_run_unit).options(num_cpus=self.threads_per_task, num_gpus=gpus,
                                             max_retries=self.max_retries, retry_exceptions=False,
                                             name="probprune-unit")
        fn_ref = ray.put(fn)
        pending: dict[Any, U] = {task.remote(fn_ref, u, self.threads_per_task): u for u in units}
        failures: list[UnitFailure] = []
        refs = list(pending)
        try:
            while refs:
                ready, refs = ray.wait(refs, num_returns=1)
                if refs:  # everything else already finished: one pass over the waiting list per wake-up
                    more, refs = ray.wait(refs, num_returns=len(refs), timeout=0)
                    ready = [*ready, *more]
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        ok, payload, tb = ray.get(ref)
                    except Exception as e:  # the worker died more than max_retries times, the node was lost …
                        failures.append(UnitFailure(describe_unit(unit), f"{type(e).__name__}: "
                                                    f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"))
                        continue
                    if ok:
                        yield unit, payload
                    else:
                        failures.append(UnitFailure(describe_unit(unit), str(payload), tb))
        finally:
            # the driver stopped early (error, Ctrl-C): do not leave tasks running on the cluster
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # pragma: no cover - best effort on shutdown
                    pass
        if failures:
            raise SweepError(failures, len(units))


def make_executor(name: str, address: str | None = None, **ray_options: Any) -> Any:
    """The executor named on the command line: ``local`` (in-process) or ``ray``.

    Args:
        name: ``local`` or ``ray``.
        address: for ``ray`` only — see :class:`RayExecutor`.
        **ray_options: further :class:`RayExecutor` options.

    Raises:
        ProbPruneError: an unknown name; ``--address`` with ``local``; ``ray`` without ray installed.

    >>> type(make_executor("local")).__name__
    'LocalExecutor'
    """
    if name == "local":
        if address is not None:
            raise ProbPruneError(f"--address {address!r}: only meaningful with --executor ray")
        from probprune.runner.verify import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        import_ray()  # fail now, before anything is written, when the extra is missing
        return RayExecutor(address, **ray_options)
    raise ProbPruneError(f"--executor {name!r}: must be 'local' or 'ray'")
