"""The engine on a GPU: same draws, same masks, same gaps as on CPU (skipped where no GPU exists).

Run on a GPU machine with ``pytest tests/test_cuda.py``. On CPU-only machines (CI here) every
test is skipped; the CPU paths they compare against are tested everywhere else.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from probprune.bounds import certified_gap_bound
from probprune.config import ExecutionPolicy, GapSpec, MCSpec, NetSpec, PruneSpec, RunConfig, config_hash
from probprune.gap import mean_gap, sup_gap
from probprune.masks import prune
from probprune.montecarlo import (
    expand_grid,
    probe_generator,
    prune_ensemble,
    run_trials,
    sample_ensemble,
)
from probprune.nets import Net
from probprune.runner.execution import matmul_precision
from probprune.runner.verify import run_verify
from probprune.store.runs import read_points, read_trials

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CFG = RunConfig(
    net=NetSpec(widths=(16, 256, 256, 4)),
    prunes=(PruneSpec(method="magnitude", prune_fraction=0.2), PruneSpec(method="random", p=0.1)),
    gap=GapSpec(n_points=512, n_restarts=2, n_steps=5),
    mc=MCSpec(n_trials=6, chunk_size=3, device="cuda"),
)


def _member(ens: Net, k: int) -> list[torch.Tensor]:
    return [w[k] for w in ens.weights]


def _pair(n: int = 4) -> tuple[str, int, Net, Net]:
    """(config hash, grid index, targets, pruned) of the first grid point's trials 0..n-1, on the GPU."""
    h = config_hash(CFG)
    point = expand_grid(CFG)[0]
    with torch.no_grad():
        ens = sample_ensemble(CFG, point, h, list(range(n)))
        pruned, _ = prune_ensemble(CFG, point, h, list(range(n)), ens)
    return h, point.index, ens, pruned


def test_ensemble_members_equal_one_at_a_time_draws_on_cuda() -> None:
    h = config_hash(CFG)
    for point in expand_grid(CFG):
        ens = sample_ensemble(CFG, point, h, [0, 1, 2, 3])
        pruned, _ = prune_ensemble(CFG, point, h, [0, 1, 2, 3], ens)
        assert ens.device.type == "cuda"
        for k in range(4):
            one = sample_ensemble(CFG, point, h, [k])
            one_p, _ = prune_ensemble(CFG, point, h, [k], one)
            for a, b in zip(_member(ens, k), _member(one, 0)):
                assert torch.equal(a, b)
            for a, b in zip(_member(pruned, k), _member(one_p, 0)):
                assert torch.equal(a, b)


def test_magnitude_masks_on_cuda_equal_masks_on_cpu() -> None:
    h = config_hash(CFG)
    point = expand_grid(CFG)[0]
    ens = sample_ensemble(CFG, point, h, list(range(4)))
    for scope in ("layerwise", "global"):
        for frac in (0.1, 0.5, 0.93):
            on_gpu = prune(ens, PruneSpec(prune_fraction=frac, scope=scope))
            on_cpu = prune(ens.to("cpu"), PruneSpec(prune_fraction=frac, scope=scope))
            for name, m in on_gpu.masks.items():
                assert torch.equal(m.cpu(), on_cpu.masks[name]), (scope, frac, name)


def test_gap_on_cuda_matches_cpu_and_stays_under_the_certified_bound() -> None:
    h, index, ens, pruned = _pair()
    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True)).float()
    g_gpu = mean_gap(ens, pruned, x.cuda()).cpu()
    g_cpu = mean_gap(ens.to("cpu"), pruned.to("cpu"), x)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-4, atol=1e-7)
    est = sup_gap(ens, pruned, CFG.gap, probe_generator(h, index, "gap", "cuda"))
    cb = certified_gap_bound(ens, pruned, radius=1.0)
    assert est.value.device.type == "cuda"
    # the certified bound covers the float32 forward pass (its rounding margin): no slack
    assert bool((est.value.double().cpu() <= torch.as_tensor(cb.value).double().cpu()).all())


def test_tf32_gap_error_is_small_against_float64() -> None:
    """TF32 products (``mc.matmul = tf32``) move the measured gap by well under 1% here (fp64 reference)."""
    _, _, ens, pruned = _pair()
    x = torch.randn(4096, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    x = x / x.norm(dim=1, keepdim=True)
    ref = mean_gap(ens.to(dtype=torch.float64), pruned.to(dtype=torch.float64), x.double())
    with matmul_precision("tf32"):
        tf32 = mean_gap(ens, pruned, x)
    with matmul_precision("fp32"):
        fp32 = mean_gap(ens, pruned, x)
    rel32 = float(((fp32.double() - ref) / ref).abs().max())
    rel_tf = float(((tf32.double() - ref) / ref).abs().max())
    print(f"relative gap error vs float64: fp32 {rel32:.2e}, tf32 {rel_tf:.2e}")
    assert rel32 < 1e-4
    assert rel_tf < 1e-2


def test_verify_runs_on_cuda_and_rows_do_not_depend_on_the_chunking(tmp_path: Path) -> None:
    res = run_verify(CFG, tmp_path)
    rows = read_trials(res.run_dir)
    assert len(rows) == 12 and all(r["device"] == "cuda" for r in rows)
    assert all(r["gap_lower"] <= r["gap_upper"] for r in rows)  # the bound covers float32 rounding: no slack
    assert all(math.isfinite(r["gap_lower"]) and r["gap_lower"] > 0 for r in rows)
    assert all(p["passed"] for p in read_points(res.run_dir))
    assert run_verify(CFG, tmp_path).n_new == 0  # a re-run computes nothing
    h = config_hash(CFG)
    point = expand_grid(CFG)[1]
    together = run_trials(CFG, point, h, [0, 1, 2])
    alone = [run_trials(CFG, point, h, [t])[0] for t in (0, 1, 2)]
    # other batch sizes may pick other GEMM kernels: equal up to float32 rounding, not bit for bit
    for a, b in zip(together, alone):
        assert a.seed == b.seed and a.sparsity == b.sparsity
        assert a.gap_lower == pytest.approx(b.gap_lower, rel=1e-4)
        assert a.gap_upper == pytest.approx(b.gap_upper, rel=1e-9)


def test_tf32_verify_runs(tmp_path: Path) -> None:
    cfg = RunConfig(net=CFG.net, prunes=CFG.prunes, gap=CFG.gap,
                    mc=MCSpec(n_trials=4, chunk_size=4, device="cuda", matmul="tf32"))
    res = run_verify(cfg, tmp_path)
    rows = read_trials(res.run_dir)
    assert len(rows) == 8
    assert all(r["gap_lower"] <= r["gap_upper"] for r in rows)  # tf32=True: the bound covers TF32 products
    assert not torch.backends.cuda.matmul.allow_tf32  # restored after the run


@pytest.mark.parametrize("bias", [False, True])
def test_member_loop_forward_on_cuda_equals_batched_and_cpu(bias: bool) -> None:
    # at 4096 points × 2048 wide layers Net.forward runs member by member with the ReLU in the
    # cuBLASLt epilogue; it must agree with the batched products and with float64 on the CPU
    from probprune import LawSpec, sample_net
    from probprune.config import parse_arch
    from probprune.rng import make_generator

    spec = parse_arch("fcn:32,2048,2048,8", bias=bias)
    ens = sample_net(spec, LawSpec(), [make_generator(s, "cuda") for s in range(3)], "cuda")
    x = torch.randn(4096, 32, device="cuda")
    x = x / x.norm(dim=1, keepdim=True)
    ref = ens.to("cpu", torch.float64)(x.cpu().double())
    with torch.no_grad(), matmul_precision("fp32"):
        auto = ens(x, policy=ExecutionPolicy(forward="auto"))
        batched = ens(x, policy=ExecutionPolicy(forward="batched"))
    scale = ref.abs().max()
    assert float((auto.cpu().double() - ref).abs().max() / scale) < 1e-4
    assert float((batched.cpu().double() - ref).abs().max() / scale) < 1e-4
