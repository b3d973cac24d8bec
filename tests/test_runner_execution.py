"""Execution policy: the core reads no environment and sets no global torch state; the runner applies and restores."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from probprune.config import (
    ExecutionPolicy,
    GapSpec,
    MCSpec,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    config_hash,
)
from probprune.montecarlo import expand_grid, run_trials
from probprune.runner.execution import execution, matmul_precision, policy_from_env
from probprune.runner.verify import compute_unit, plan_units, run_verify
from probprune.store.runs import read_trials

# a 2048-point search over 64-wide layers: the sampling phase runs member by member (the CPU member loop)
CFG = RunConfig(
    net=NetSpec(widths=(6, 64, 64, 3), bias=True),
    prunes=(PruneSpec(method="magnitude", prune_fraction=0.5), PruneSpec(method="random", p=0.3)),
    gap=GapSpec(n_points=2048, n_restarts=2, n_steps=3),
    mc=MCSpec(n_trials=4, chunk_size=4),
)
H = config_hash(CFG)


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _new_thread_count() -> int:
    """The intra-op thread count a thread started now begins with (torch keeps it globally)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch at 2 intra-op threads (where the old core changed the count), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class _MatmulSpy:
    """Stands in for ``torch.backends.cuda.matmul``: records every attribute written."""

    def __init__(self) -> None:
        object.__setattr__(self, "writes", [])
        object.__setattr__(self, "allow_tf32", False)

    def __setattr__(self, name: str, value: Any) -> None:
        self.writes.append((name, value))
        object.__setattr__(self, name, value)


def _strip(rows: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in rows]


def test_core_reads_no_environment_and_sets_no_global_torch_state(two_threads: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    spy = _MatmulSpy()
    monkeypatch.setenv("PROBPRUNE_FORWARD", "fast")  # the old core read (and refused) this on every forward
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch.backends.cuda, "matmul", spy)
    point = expand_grid(CFG)[1]
    tf32 = dataclasses.replace(CFG, mc=dataclasses.replace(CFG.mc, matmul="tf32"))
    with ThreadPoolExecutor(2) as pool:  # any executor: the core only submits work items to it
        members = ExecutionPolicy(forward="members")
        for cfg, policy, workers in ((CFG, None, None), (CFG, None, pool), (CFG, members, None), (CFG, members, pool),
                                     (tf32, ExecutionPolicy(forward="batched", matmul="tf32"), pool)):
            rows = run_trials(cfg, point, config_hash(cfg), [0, 1, 2], policy=policy, workers=workers)
            assert len(rows) == 3
    assert calls == [] and spy.writes == []
    monkeypatch.undo()
    assert torch.get_num_threads() == 2 and _new_thread_count() == 2


def test_two_policies_give_equal_results() -> None:
    point = expand_grid(CFG)[0]
    out = {}
    for name, pol in (("one", ExecutionPolicy(threads=1)), ("two", ExecutionPolicy(threads=2)),
                      ("members", ExecutionPolicy(forward="members", threads=2))):
        with execution(pol) as ex:
            out[name] = _strip(run_trials(CFG, point, H, [0, 1, 2, 3], policy=ex.policy, workers=ex.workers))
    assert out["two"] == out["members"]  # the same thread count: bit for bit
    # the forward passes run on single-threaded blocks: bit for bit whatever the thread count; the
    # certified bound's float64 reductions run on the calling thread's intra-op threads, so its
    # (rounded-up) value may move in the last bits
    for a, b in zip(out["one"], out["two"]):
        assert {k: v for k, v in a.items() if k != "gap_upper"} == {k: v for k, v in b.items() if k != "gap_upper"}
        assert a["gap_upper"] == pytest.approx(b["gap_upper"], rel=1e-13)
    with execution(ExecutionPolicy(forward="batched", threads=1)) as ex:
        batched = _strip(run_trials(CFG, point, H, [0, 1, 2, 3], policy=ex.policy, workers=ex.workers))
    for a, b in zip(out["one"], batched):  # the other form agrees to rounding
        assert a["sparsity"] == b["sparsity"] and a["gap_upper"] == b["gap_upper"]
        assert a["gap_lower"] == pytest.approx(b["gap_lower"], rel=1e-5)


def test_units_carry_the_policy_and_give_the_same_rows(tmp_path: Path) -> None:
    points = expand_grid(CFG)
    from probprune.montecarlo import point_bound

    bounds = [point_bound(CFG, p) for p in points]
    rows = {}
    for threads in (1, 2):
        units = plan_units(CFG, points, bounds, {}, "v", ExecutionPolicy(threads=threads))
        assert all(u.policy.threads == threads for u in units)
        rows[threads] = [{k: v for k, v in r.to_dict().items() if k not in ("seconds", "gap_upper")}
                         for u in units for r in compute_unit(u)]
    assert rows[1] == rows[2]  # the certified value's last bits may move with the thread count (see above)
    before = torch.get_num_threads()
    res = run_verify(CFG, tmp_path, policy=ExecutionPolicy(threads=1))
    assert torch.get_num_threads() == before
    stored = sorted(read_trials(res.run_dir), key=lambda r: (r["grid_index"], r["trial"]))
    assert [r["gap_lower"] for r in stored] == [r["gap_lower"] for r in rows[1]]


def test_execution_applies_and_restores_threads_and_tf32_even_on_error() -> None:
    threads, flags = torch.get_num_threads(), _tf32()
    with execution(ExecutionPolicy(threads=1, matmul="tf32")) as ex:
        assert torch.get_num_threads() == 1 and _tf32() == (True, True)
        here = threading.get_ident()
        assert ex.workers.submit(threading.get_ident).result() == here  # one thread: the calling thread
        with pytest.raises(ZeroDivisionError):
            ex.workers.submit(lambda: 1 // 0).result()
    assert torch.get_num_threads() == threads and _tf32() == flags
    with pytest.raises(RuntimeError, match="boom"):
        with execution(ExecutionPolicy(threads=3, matmul="tf32")) as ex:
            assert torch.get_num_threads() == 3 and ex.policy.threads == 3 and _tf32() == (True, True)
            seen = ex.workers.submit(torch.get_num_threads).result()
            assert seen == 1  # every worker is single-threaded
            raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and _tf32() == flags
    assert _new_thread_count() == threads  # the workers' setting does not leak to new threads
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with execution() as ex:  # default: the process's thread count and TF32 flags, left as they are
            assert ex.policy.threads == threads and _tf32() == (True, flags[1])
        with execution(ExecutionPolicy(matmul="fp32")):
            assert _tf32() == (False, False)
        assert _tf32() == (True, flags[1])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags[0]
    assert _tf32() == flags


def test_matmul_precision_sets_and_restores_the_tf32_flags() -> None:
    before = _tf32()
    with matmul_precision("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with matmul_precision("fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
    assert _tf32() == before
    with pytest.raises(ProbPruneError, match="matmul"):
        with matmul_precision("bf16"):
            pass


def test_policy_is_validated_and_read_from_the_environment_once() -> None:
    assert policy_from_env({}) == ExecutionPolicy()
    assert policy_from_env({"PROBPRUNE_FORWARD": "members"}, threads=2).forward == "members"
    with pytest.raises(ProbPruneError, match="PROBPRUNE_FORWARD='fast'"):
        policy_from_env({"PROBPRUNE_FORWARD": "fast"})
    for kwargs, msg in (({"forward": "fast"}, "execution.forward='fast'"), ({"threads": 0}, "execution.threads=0"),
                        ({"threads": True}, "execution.threads=True"), ({"matmul": "bf16"}, "execution.matmul='bf16'")):
        with pytest.raises(ProbPruneError, match=msg):
            ExecutionPolicy(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="policy"):
        with execution("members"):  # type: ignore[arg-type]
            pass


def test_run_verify_refuses_a_bad_forward_knob_before_writing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBPRUNE_FORWARD", "fast")
    with pytest.raises(ProbPruneError, match="PROBPRUNE_FORWARD='fast'"):
        run_verify(CFG, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _setting_unit() -> Any:
    from probprune.runner.experiment import ExperimentSpec, SettingUnit

    return SettingUnit(ExperimentSpec(), "/nowhere", "lenet-300-100", 0, "magnitude", "layerwise", 0.5, False, {},
                       torch.zeros(1), 1.0)


def test_experiment_data_cache_is_an_explicit_object(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from probprune.runner import experiment
    from probprune.runner.experiment import DatasetCache, compute_setting

    loads: list[tuple[str, Any]] = []

    def fake_load(name: str, root: Any = None) -> object:
        loads.append((name, root))
        return object()  # no images: compute_setting stops right after loading

    monkeypatch.setattr(experiment, "load_dataset", fake_load)
    unit = _setting_unit()
    for _ in range(2):  # no hidden module cache: without a DatasetCache every call loads
        with pytest.raises(AttributeError):
            compute_setting(unit)
    assert loads == [("mnist", "/nowhere")] * 2
    cache = DatasetCache()
    data = cache.get("mnist", Path("/nowhere"))
    for _ in range(2):  # the run's cache: the driver's data set is reused
        with pytest.raises(AttributeError):
            compute_setting(unit, datasets=cache)
    assert len(loads) == 3 and cache.get("mnist", "/nowhere") is data
    shipped = pickle.loads(pickle.dumps(cache))  # a worker's copy carries no data set and loads its own
    assert shipped.get("mnist", "/nowhere") is not data and len(loads) == 4
    assert cache.get("fashion-mnist", None) is not data and len(loads) == 5  # one data set at a time
    assert cache.get("mnist", "/nowhere") is not data and len(loads) == 6


def test_the_two_forward_forms_agree_bit_for_bit_on_one_or_two_points() -> None:
    # a product of one or two rows takes a matrix-vector kernel in the member loop: such tiny batches run batched
    # in every mode (the search engine evaluates them: the float64 witness, a last trajectory step)
    from probprune.sampling import sample_net

    net = sample_net(CFG.net, CFG.law, [torch.Generator().manual_seed(i) for i in range(4)])
    with execution(ExecutionPolicy(threads=2)) as ex, torch.no_grad():
        for n in (1, 2, 3, 8):
            x = torch.randn(4, n, CFG.net.widths[0], generator=torch.Generator().manual_seed(n))
            a = net(x, policy=ExecutionPolicy(forward="batched"), workers=ex.workers)
            b = net(x, policy=ExecutionPolicy(forward="members"), workers=ex.workers)
            assert torch.equal(a, b), n
