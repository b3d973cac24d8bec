"""The real-data experiment: train LeNets on MNIST / Fashion-MNIST, prune, fine-tune, bound the gap.

For every model and seed a dense target F is trained once (checkpoint: safetensors + JSON
architecture under ``runs/<hash>/checkpoints/``); then for every prune_fraction, method
(``random``, ``magnitude``) and scope (``layerwise``, ``global``) the pruned net f is measured
as is and after a short fine-tuning with the mask held fixed. Per setting the run stores (one
SQLite row, :mod:`probprune.store.experiments`): test accuracy; the gap sandwich over the ball
of radius ``r = max ‖x‖₂`` of the test set — ``gap_lower`` (empirical sup,
:func:`probprune.gap.sup_gap`) and ``gap_upper`` (certified,
:func:`probprune.bounds.certified_gap_bound`); and the mean / max of ``‖f(x) − F(x)‖₂`` over the
test set (how much the logits move on real inputs). A fine-tuned f is compared with the same
dense target F (its biases have moved too; the certified bound covers that).

Seeds derive from (dataset, model, seed, setting, stream) only, so a seed trains the same
target whatever grid it belongs to, and a resumed run computes exactly the missing settings.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probprune.bounds import certified_gap_bound
from probprune.config import ExecutionPolicy, ExperimentSpec, GapSpec, ProbPruneError, PruneSpec, TrainSpec
from probprune.data import (
    as_net,
    init_module,
    inputs_for,
    lenet_spec,
    load_dataset,
    predict,
    train,
)
from probprune.gap import sup_gap
from probprune.masks import prune
from probprune.nets import Net, from_state_dict, to_module
from probprune.records import ExperimentRow
from probprune.rng import derive_seed, make_generator
from probprune.runner.execution import execution
from probprune.runner.prune import check_time, n_weights
from probprune.store import atomic_write_text, load_tensors, save_tensors
from probprune.store.experiments import ExperimentStore, read_experiment

__all__ = [
    "DatasetCache",
    "ExperimentOutcome",
    "SettingUnit",
    "check_budget",
    "compute_setting",
    "evaluate_pruned",
    "run_experiment",
    "summarize",
]

Progress = Callable[[str, int, int], None]


def check_budget(spec: ExperimentSpec) -> None:
    """Refuse a run whose training alone clearly takes too long (see ``runner.prune.check_time``).

    Estimate: 6 flop per weight per training image (forward + backward), dense and fine-tuning
    epochs over the 60 000 training images, for every model and seed — a lower bound of the work.
    """
    seconds = 0.0
    ft_runs = len(spec.prune_fractions) * len(spec.methods) * len(spec.scopes)
    for m in spec.models:
        per_epoch = 6.0 * 60_000 * n_weights(lenet_spec(m)) / 1e11
        seconds += len(spec.seeds) * per_epoch * (spec.epochs[m] + ft_runs * spec.finetune_epochs)
    check_time(f"experiment (epochs={spec.epochs}, finetune_epochs={spec.finetune_epochs!r}, "
               f"{len(spec.seeds)} seed(s))", seconds)


@dataclass(frozen=True)
class ExperimentOutcome:
    """A finished (or resumed) run: its folder, all stored rows, and the seconds this call took."""

    run_dir: Path
    rows: list[dict[str, Any]]
    seconds: float
    computed: int


@dataclass(frozen=True, eq=False)
class _Eval:
    test_accuracy: float
    mean_test_gap: float
    max_test_gap: float
    gap_upper: float
    gap_lower: float
    gap_n_evals: int
    bound_exact: bool


def evaluate_pruned(target: Net, pruned: Net, x_test: Tensor, y_test: Tensor, target_logits: Tensor,
                    radius: float, gap: GapSpec, generator: torch.Generator, *,
                    workers: Executor | None = None) -> dict[str, Any]:
    """Accuracy, test-set gap and the gap sandwich of ``pruned`` against ``target``.

    Args:
        target, pruned: F and f (single networks).
        x_test: ``[N, …]`` test inputs; y_test: ``[N]`` labels; target_logits: ``F(x_test)`` ``[N, classes]``.
        radius: r of the ball (e.g. max ‖x‖ of the test set).
        gap: sup-gap estimator budget (its radius is replaced by ``radius``).
        generator: randomness of the sup-gap estimator.
        workers: CPU workers of the estimator's forward passes (the runner's; same values either way).

    Returns:
        ``test_accuracy``, ``mean_test_gap`` / ``max_test_gap`` (‖f(x) − F(x)‖₂ over the test set),
        ``gap_upper`` (certified), ``gap_lower`` (the larger of the empirical sup over the ball and the
        largest test-set gap — both attained inside the ball when ``radius`` ≥ every test norm),
        ``gap_n_evals``, ``bound_exact``.
    """
    logits = predict(pruned, x_test)
    acc = float((logits.argmax(dim=-1) == y_test).double().mean())
    diff = (logits.double() - target_logits.double()).norm(dim=-1)
    upper = certified_gap_bound(target, pruned, radius=radius)
    est = sup_gap(target, pruned, GapSpec(radius=radius, n_points=gap.n_points, n_restarts=gap.n_restarts,
                                          n_steps=gap.n_steps, step_size=gap.step_size), generator,
                  workers=workers)
    # test inputs inside the ball (all of them when r = max ‖x‖) give a lower bound on the gap too
    inside = x_test.reshape(x_test.shape[0], -1).double().norm(dim=-1) <= radius
    lower = max(float(est.value), float(diff[inside].max()) if bool(inside.any()) else 0.0)
    return {"test_accuracy": acc, "mean_test_gap": float(diff.mean()), "max_test_gap": float(diff.max()),
            "gap_upper": float(upper.value), "gap_lower": lower, "gap_n_evals": int(est.n_evals) + len(diff),
            "bound_exact": bool(upper.exact)}


def _checkpoint(run_dir: Path, model: str, seed: int) -> Path:
    return run_dir / "checkpoints" / f"{model}-seed{seed}.safetensors"


def _dense_target(spec: ExperimentSpec, run_dir: Path, model: str, seed: int, x: Tensor, y: Tensor,
                  progress: Progress | None) -> Net:
    net_spec = lenet_spec(model)
    ckpt = _checkpoint(run_dir, model, seed)
    if ckpt.is_file():
        tensors, _meta = load_tensors(str(ckpt))
        return from_state_dict(net_spec, tensors)
    g = make_generator(derive_seed(f"experiment:{spec.dataset}", model, seed, "dense"))
    module = init_module(net_spec, g)
    label = f"train {model} seed {seed}"
    cb = None if progress is None else (lambda s, n: progress(label, s, n))
    trained = train(module, x, y, TrainSpec(epochs=spec.epochs[model], batch_size=spec.batch_size, lr=spec.lr,
                              weight_decay=spec.weight_decay),
                    g, on_step=cb)
    net = as_net(trained, net_spec)
    arch = {"arch": net_spec.to_arch(), "activation": net_spec.activation, "bias": net_spec.bias,
            "dataset": spec.dataset, "model": model, "seed": seed}
    save_tensors(str(ckpt), net.state_dict(), {"arch": net_spec.to_arch(), "format": "probprune"})
    atomic_write_text(ckpt.with_suffix(".json"), json.dumps(arch, indent=2, sort_keys=True) + "\n")
    return net


def run_experiment(spec: ExperimentSpec, runs_dir: str | Path = "runs", data_root: str | Path | None = None,
                   progress: Progress | None = None, executor: Any = None,
                   threads: int | None = None) -> ExperimentOutcome:
    """Run (or resume) an experiment; returns every stored row.

    Args:
        spec: the experiment.
        runs_dir: parent of the run folder ``<runs_dir>/<spec.hash>/``.
        data_root: dataset root (default ``$PROBPRUNE_DATA`` / the per-user cache).
        progress: called as ``progress(description, done, total)``.
        executor: ``None`` computes every setting here; an executor (``map(fn, units)`` yielding
            ``(unit, rows)``, e.g. :class:`probprune.runner.ray_executor.RayExecutor`) computes the
            settings of each dense target as :class:`SettingUnit` s wherever it runs them (dense
            training stays on the driver, which alone writes the run folder). Same rows either way.
        threads: torch intra-op threads on this process during the call (``None``: leave torch's
            setting; 1 is much faster on a shared, oversubscribed CPU).

    Raises:
        ProbPruneError: dataset not prepared (names ``probprune data prepare …``), bad spec,
            a run folder holding another config.
    """
    t0 = time.perf_counter()
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ProbPruneError(f"threads={threads!r}: must be an integer >= 1")
    datasets = DatasetCache()  # the run's data: loaded (and checked) once, shared with in-process settings
    data = datasets.get(spec.dataset, data_root)
    with execution(ExecutionPolicy(threads=threads)) as ex:  # restores the thread count afterwards
        return _run(spec, runs_dir, data_root, data, progress, executor, t0, datasets, ex.workers)


def _run(spec: ExperimentSpec, runs_dir: str | Path, data_root: str | Path | None, data: Any,
         progress: Progress | None, executor: Any, t0: float, datasets: DatasetCache,
         workers: Executor) -> ExperimentOutcome:
    run_dir = Path(runs_dir) / spec.hash
    total = spec.n_settings()
    computed = 0
    gap_budget = GapSpec(radius=1.0, n_points=spec.gap_points, n_restarts=spec.gap_restarts, n_steps=spec.gap_steps)
    with ExperimentStore(run_dir, spec.to_dict(), hash=spec.hash) as store:
        done = store.done()
        n_done = len(done)
        if progress is not None:
            progress("settings", n_done, total)
        for model in spec.models:
            net_spec = lenet_spec(model)
            x_train = inputs_for(data.train_images, net_spec)
            x_test = inputs_for(data.test_images, net_spec)
            y_test = data.test_labels
            if spec.test_limit is not None:
                x_test, y_test = x_test[:spec.test_limit], y_test[:spec.test_limit]
            radius = float(x_test.reshape(x_test.shape[0], -1).double().norm(dim=-1).max())
            for seed in spec.seeds:
                keys = [(spec.dataset, model, me, sc, round(f, 6), ft, seed)
                        for f in spec.prune_fractions for me in spec.methods for sc in spec.scopes
                        for ft in ((False, True) if spec.finetune_epochs > 0 else (False,))]
                if all(k in done for k in keys):
                    continue
                target = _dense_target(spec, run_dir, model, seed, x_train, data.train_labels, progress)
                target_logits = predict(target, x_test)
                dense_acc = float((target_logits.argmax(dim=-1) == y_test).double().mean())
                if executor is not None:
                    for row in _settings_via(executor, spec, data_root, model, seed, target, target_logits,
                                             radius, dense_acc, done, datasets):
                        store.add(row)
                        done.add(ExperimentStore.key(row))
                        computed += 1
                        n_done += 1
                        if progress is not None:
                            progress("settings", n_done, total)
                    continue
                cache: dict[tuple[Any, ...], dict[str, Any]] = {}
                for f in spec.prune_fractions:
                    for method in spec.methods:
                        for scope in spec.scopes:
                            for ft in ((False, True) if spec.finetune_epochs > 0 else (False,)):
                                key = (spec.dataset, model, method, scope, round(f, 6), ft, seed)
                                if key in done:
                                    continue
                                ts = time.perf_counter()
                                # prune_fraction 0 removes nothing: every method/scope gives the same net
                                ckey = ("dense", ft) if f == 0.0 else (method, scope, f, ft)
                                if ckey not in cache:
                                    cache[ckey] = _one_setting(spec, model, seed, target, method, scope, f, ft,
                                                               x_train, data.train_labels, x_test, y_test,
                                                               target_logits, radius, gap_budget, workers)
                                row = ExperimentRow(dataset=spec.dataset, model=model, method=method, scope=scope,
                                                    prune_fraction=f, finetuned=ft, seed=seed,
                                                    dense_accuracy=dense_acc, radius=radius, **cache[ckey],
                                                    seconds=time.perf_counter() - ts)
                                store.add(row)
                                done.add(key)
                                computed += 1
                                n_done += 1
                                if progress is not None:
                                    progress("settings", n_done, total)
    rows = read_experiment(run_dir)
    return ExperimentOutcome(run_dir=run_dir, rows=rows, seconds=time.perf_counter() - t0, computed=computed)


def _one_setting(spec: ExperimentSpec, model: str, seed: int, target: Net, method: str, scope: str, f: float,
                 ft: bool, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, target_logits: Tensor,
                 radius: float, gap_budget: GapSpec, workers: Executor | None = None) -> dict[str, Any]:
    stream = ("dense",) if f == 0.0 else (method, scope, round(f, 6))
    mask_gen = make_generator(derive_seed(f"experiment:{spec.dataset}", model, seed, *stream, "mask"))
    rule = PruneSpec(method=method, prune_fraction=f, scope=scope)  # type: ignore[arg-type]
    res = prune(target, rule, generator=mask_gen if method == "random" else None)
    pruned: Net = res.model
    if ft:
        g = make_generator(derive_seed(f"experiment:{spec.dataset}", model, seed, *stream, "finetune"))
        module = train(to_module(pruned), x_train, y_train,
                       TrainSpec(epochs=spec.finetune_epochs, batch_size=spec.batch_size, lr=spec.finetune_lr),
                       g, masks=res.masks)
        pruned = as_net(module, target.spec)
    gap_gen = make_generator(derive_seed(f"experiment:{spec.dataset}", model, seed, *stream, ft, "gap"))
    out = evaluate_pruned(target, pruned, x_test, y_test, target_logits, radius, gap_budget, gap_gen,
                          workers=workers)
    n_weights = res.stats.size
    n_kept = sum(int((w != 0).sum()) for w in pruned.weights)
    out.update({"sparsity": res.stats.sparsity, "n_weights": n_weights, "n_kept": n_kept})
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over seeds: one dict per (dataset, model, method, scope, prune_fraction, finetuned).

    Each holds ``n_seeds``, mean and sample std of ``test_accuracy``, and the means of
    ``dense_accuracy``, ``gap_upper``, ``gap_lower``, ``mean_test_gap``, ``n_kept``, ``n_weights``.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        k = (r["dataset"], r["model"], r["method"], r["scope"], r["prune_fraction"], r["finetuned"])
        groups.setdefault(k, []).append(r)
    out: list[dict[str, Any]] = []
    for k, rs in sorted(groups.items()):
        accs = [r["test_accuracy"] for r in rs]
        m = sum(accs) / len(accs)
        sd = math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0

        def mean(col: str, rs: list[dict[str, Any]] = rs) -> float | None:
            vals = [r[col] for r in rs if r.get(col) is not None]
            return sum(vals) / len(vals) if vals else None

        out.append({"dataset": k[0], "model": k[1], "method": k[2], "scope": k[3], "prune_fraction": k[4],
                    "finetuned": k[5], "n_seeds": len(rs), "test_accuracy": m, "test_accuracy_std": sd,
                    "dense_accuracy": mean("dense_accuracy"), "gap_upper": mean("gap_upper"),
                    "gap_lower": mean("gap_lower"), "mean_test_gap": mean("mean_test_gap"),
                    "n_kept": mean("n_kept"), "n_weights": mean("n_weights")})
    return out


# --------------------------------------------------------------------------- settings as units (any executor)


@dataclass(frozen=True, eq=False)
class SettingUnit:
    """One pruning setting of one dense target, as plain picklable data for an executor.

    Holds the dense target F (``target``: its state dict), ``F(x_test)`` and the ball radius, so a
    worker needs only the prepared dataset (``data_root``) to compute exactly what
    :func:`run_experiment` computes locally: every seed derives from (dataset, model, seed, setting).
    """

    spec: ExperimentSpec
    data_root: str | None
    model: str
    seed: int
    method: str
    scope: str
    prune_fraction: float
    finetuned: bool
    target: dict[str, Tensor]
    target_logits: Tensor
    radius: float

    def describe(self) -> str:
        """E.g. ``mnist lenet-5 seed 1: magnitude/global prune_fraction=0.9 fine-tuned``."""
        ft = "fine-tuned" if self.finetuned else "not fine-tuned"
        return (f"{self.spec.dataset} {self.model} seed {self.seed}: {self.method}/{self.scope} "
                f"prune_fraction={self.prune_fraction:g} {ft}")


class DatasetCache:
    """The data sets a run has loaded, by (dataset, data root): an explicit object owned by the run.

    :func:`run_experiment` makes one per call and hands it to :func:`compute_setting` (through the
    executor), so settings computed in the driver's process reuse the driver's data set. Pickling it
    (to ship the work to another process, e.g. a Ray task) carries no data: the receiving copy
    loads, and checks, its own. One data set is held at a time.
    """

    def __init__(self) -> None:
        self._data: dict[tuple[str, str | None], Any] = {}

    def get(self, dataset: str, data_root: str | Path | None) -> Any:
        """The loaded data set (:func:`probprune.data.load_dataset`), loaded on first use."""
        key = (dataset, None if data_root is None else str(data_root))
        if key not in self._data:
            self._data.clear()
            self._data[key] = load_dataset(dataset, data_root)
        return self._data[key]

    def __getstate__(self) -> dict[str, Any]:
        return {}  # never ship a data set: the receiving process loads its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data = {}


def compute_setting(unit: SettingUnit, datasets: DatasetCache | None = None) -> list[dict[str, Any]]:
    """The measured values of one setting (one dict: accuracy, gap sandwich, test-set gap, ``seconds``).

    ``datasets``: where the data set comes from (the run's :class:`DatasetCache`); ``None`` loads it.
    """
    ts = time.perf_counter()
    spec = unit.spec
    data = (DatasetCache() if datasets is None else datasets).get(spec.dataset, unit.data_root)
    net_spec = lenet_spec(unit.model)
    x_train = inputs_for(data.train_images, net_spec)
    x_test = inputs_for(data.test_images, net_spec)
    y_test = data.test_labels
    if spec.test_limit is not None:
        x_test, y_test = x_test[:spec.test_limit], y_test[:spec.test_limit]
    target = from_state_dict(net_spec, unit.target)
    gap_budget = GapSpec(radius=1.0, n_points=spec.gap_points, n_restarts=spec.gap_restarts, n_steps=spec.gap_steps)
    with execution() as ex:  # this process's thread count; the workers are this call's own
        out = _one_setting(spec, unit.model, unit.seed, target, unit.method, unit.scope, unit.prune_fraction,
                           unit.finetuned, x_train, data.train_labels, x_test, y_test, unit.target_logits,
                           unit.radius, gap_budget, ex.workers)
    return [{**out, "seconds": time.perf_counter() - ts}]


def _settings_via(executor: Any, spec: ExperimentSpec, data_root: str | Path | None, model: str, seed: int,
                  target: Net, target_logits: Tensor, radius: float, dense_acc: float,
                  done: set[tuple[Any, ...]], datasets: DatasetCache) -> Any:
    """Rows of the missing settings of one dense target, computed by ``executor`` (yielded as they finish)."""
    fts = (False, True) if spec.finetune_epochs > 0 else (False,)
    groups: dict[tuple[Any, ...], list[tuple[str, str, float, bool]]] = {}
    for f in spec.prune_fractions:
        for method in spec.methods:
            for scope in spec.scopes:
                for ft in fts:
                    if (spec.dataset, model, method, scope, round(f, 6), ft, seed) in done:
                        continue
                    # prune_fraction 0 removes nothing: every method/scope gives the same net
                    ckey = ("dense", ft) if f == 0.0 else (method, scope, f, ft)
                    groups.setdefault(ckey, []).append((method, scope, f, ft))
    state = {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}
    units = {ckey: SettingUnit(spec, None if data_root is None else str(data_root), model, seed, ms[0][0], ms[0][1],
                               ms[0][2], ms[0][3], state, target_logits.detach().cpu(), radius)
             for ckey, ms in groups.items()}
    for unit, rows in executor.map(functools.partial(compute_setting, datasets=datasets), list(units.values())):
        f0 = unit.prune_fraction
        ckey = ("dense", unit.finetuned) if f0 == 0.0 else (unit.method, unit.scope, f0, unit.finetuned)
        for method, scope, f, ft in groups[ckey]:
            yield ExperimentRow(dataset=spec.dataset, model=model, method=method, scope=scope, prune_fraction=f,
                                finetuned=ft, seed=seed, dense_accuracy=dense_acc, radius=radius, **rows[0])
