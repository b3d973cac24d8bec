"""montecarlo: ensembles equal one-by-one networks, chunking cannot change a trial, statistics are right."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binomtest

from probprune.config import GapSpec, LawSpec, MCSpec, NetSpec, ProbPruneError, PruneSpec, RunConfig, config_hash
from probprune.gap import sup_gap
from probprune.montecarlo import (
    GridPoint,
    clopper_pearson,
    expand_grid,
    fit_slope,
    point_bound,
    probe_generator,
    prune_ensemble,
    run_trials,
    sample_ensemble,
    slopes_by_rule,
    summarize_point,
    trial_generators,
)
from probprune.records import GridRow, PointSummary
from reference import check_batched_equals_reference, one_trial

SMALL = RunConfig(
    net=NetSpec(widths=(6, 24, 24, 3)),
    prunes=(PruneSpec(method="magnitude", relative_threshold=0.2),
            PruneSpec(method="random", p=0.2, rescale=True),
            PruneSpec(method="magnitude", prune_fraction=0.3, scope="global")),
    gap=GapSpec(n_points=96, n_restarts=2, n_steps=4),
    mc=MCSpec(n_trials=6, hidden_widths=(24, 40)),
)
H = config_hash(SMALL)


def _strip(rows: list) -> list[dict]:
    return [dict(r.to_dict(), seconds=0.0) for r in rows]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ensemble_members_equal_one_by_one_networks(dtype: str) -> None:
    cfg = RunConfig(net=SMALL.net, prunes=SMALL.prunes, mc=MCSpec(dtype=dtype))  # type: ignore[arg-type]
    h = config_hash(cfg)
    trials = [3, 0, 7, 1]

    def batched(point: GridPoint) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        ens = sample_ensemble(cfg, point, h, trials)
        pruned, sparsity = prune_ensemble(cfg, point, h, trials, ens)
        rows = [(list(ens.member(k).weights), list(pruned.member(k).weights)) for k in range(len(trials))]
        for k, t in enumerate(trials):  # the measured sparsity, to the old tolerance
            assert sparsity[k].item() == pytest.approx(one_trial(cfg, point, h, t, dt)[1].stats.sparsity, abs=1e-12)
        return rows

    def reference(point: GridPoint, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        one, res = one_trial(cfg, point, h, trials[k], dt)
        return list(one.weights), list(res.model.weights)

    dt = getattr(torch, dtype)
    points = expand_grid(cfg)
    # targets and pruned weights bit-identical (same dtype) to the one-network trial
    assert check_batched_equals_reference(batched, reference, points) == len(points) * len(trials)


def test_chunking_cannot_change_a_trial() -> None:
    for point in expand_grid(SMALL)[:3]:  # one width, every rule
        whole = run_trials(SMALL, point, H, range(6))
        chunks = run_trials(SMALL, point, H, [0, 1, 2, 3]) + run_trials(SMALL, point, H, [4, 5])
        singles = [run_trials(SMALL, point, H, [t])[0] for t in range(6)]
        assert _strip(whole) == _strip(chunks) == _strip(singles)
        reordered = run_trials(SMALL, point, H, [5, 2, 0])
        assert _strip(reordered) == [_strip(whole)[i] for i in (5, 2, 0)]


def test_rows_are_a_sandwich_and_match_the_estimator() -> None:
    point = expand_grid(SMALL)[0]
    rows = run_trials(SMALL, point, H, range(4))
    for r in rows:
        assert 0.0 < r.gap_lower <= r.gap_upper  # the certified bound is above the attained value
        assert r.rel_gap_lower == pytest.approx(r.gap_lower / r.out_sup)
        assert 0.0 < r.sparsity < 1.0 and r.n_evals > 0
    # the lower gap of trial 2 is the estimator on that member alone, with the point's probe generator
    ens = sample_ensemble(SMALL, point, H, [2])
    pruned, _ = prune_ensemble(SMALL, point, H, [2], ens)
    est = sup_gap(ens.member(0), pruned.member(0), SMALL.gap, probe_generator(H, point.index, "gap"))
    assert float(est.value) == pytest.approx(rows[2].gap_lower, rel=1e-6)


def test_seeds_differ_between_trials_streams_and_points() -> None:
    gens = trial_generators(H, 0, [0, 1], "weights") + trial_generators(H, 1, [0], "weights") + \
        trial_generators(H, 0, [0], "mask")
    draws = [torch.rand(4, generator=g) for g in gens]
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j])
    with pytest.raises(ProbPruneError, match="stream"):
        trial_generators(H, 0, [0], "nope")


def test_run_trials_rejects_bad_chunks() -> None:
    point = expand_grid(SMALL)[0]
    with pytest.raises(ProbPruneError, match="empty"):
        run_trials(SMALL, point, H, [])
    with pytest.raises(ProbPruneError, match="distinct"):
        run_trials(SMALL, point, H, [1, 1])


def test_expand_grid_widths_times_rules_and_schedules() -> None:
    cfg = RunConfig(net=NetSpec(widths=(4, 10, 20, 2)),
                    prunes=(PruneSpec(schedule_c=2.0, schedule_alpha=0.5),
                            PruneSpec(method="random", p=0.1)),
                    mc=MCSpec(hidden_widths=(16, 64)))
    pts = expand_grid(cfg)
    assert [(p.index, p.width, p.prune_index) for p in pts] == [(0, 16, 0), (1, 16, 1), (2, 64, 0), (3, 64, 1)]
    assert pts[0].net.widths == (4, 16, 16, 2)
    assert pts[0].level_name == "relative_threshold" and pts[0].level_value == pytest.approx(0.5)
    assert pts[2].level_value == pytest.approx(0.25)
    assert pts[3].level_name == "p" and pts[3].level_value == 0.1
    # the arch as given: one width, the smallest hidden width
    given_arch = RunConfig(net=NetSpec(widths=(4, 30, 20, 2)), prunes=(PruneSpec(relative_threshold=0.1),))
    assert [p.width for p in expand_grid(given_arch)] == [20]
    with pytest.raises(ProbPruneError, match="give a level"):
        expand_grid(RunConfig(prunes=(PruneSpec(),)))
    with pytest.raises(ProbPruneError, match="no hidden layer"):
        expand_grid(RunConfig(net=NetSpec(widths=(4, 2)), prunes=(PruneSpec(p=0.1, method="random"),),
                              mc=MCSpec(hidden_widths=(8,))))


def test_point_bound_covered_uncovered_and_scaled() -> None:
    pts = expand_grid(SMALL)
    b = point_bound(SMALL, pts[0])
    assert b.eps is not None and b.eps == b.eps_theory and b.theorem.startswith("§")
    assert b.theory_exponent is None  # fixed level, no schedule
    scaled = RunConfig(net=SMALL.net, prunes=SMALL.prunes, mc=MCSpec(eps_scale=0.1))
    assert point_bound(scaled, expand_grid(scaled)[0]).eps == pytest.approx(0.1 * b.eps)  # type: ignore[operator]
    exact_random = RunConfig(prunes=(PruneSpec(method="random", prune_fraction=0.1),))
    nb = point_bound(exact_random, expand_grid(exact_random)[0])
    assert nb.eps is None and nb.theorem.startswith("not covered")
    user = RunConfig(prunes=(PruneSpec(method="random", prune_fraction=0.1),), bound=SMALL.bound.__class__(eps=0.5))
    assert point_bound(user, expand_grid(user)[0]).eps == 0.5
    sched = RunConfig(prunes=(PruneSpec(method="random", schedule_c=1.0, schedule_alpha=0.5),))
    assert point_bound(sched, expand_grid(sched)[0]).theory_exponent == pytest.approx(0.75)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 30), (3, 30), (29, 30), (30, 30), (57, 100), (950, 1000)])
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_beta_quantiles(k: int, n: int, conf: float) -> None:
    lo, hi = clopper_pearson(k, n, conf)
    a = 1 - conf
    want_lo = 0.0 if k == 0 else beta.ppf(a / 2, k, n - k + 1)
    want_hi = 1.0 if k == n else beta.ppf(1 - a / 2, k + 1, n - k)
    assert lo == pytest.approx(want_lo, abs=1e-12) and hi == pytest.approx(want_hi, abs=1e-12)
    ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), data=st.data())
def test_clopper_pearson_contains_the_estimate_and_is_monotone(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = clopper_pearson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k < n:
        lo2, hi2 = clopper_pearson(k + 1, n)
        assert lo2 >= lo and hi2 >= hi
    lo9, hi9 = clopper_pearson(k, n, 0.9)
    assert lo9 >= lo and hi9 <= hi


@pytest.mark.parametrize("k,n,conf", [(-1, 5, 0.95), (6, 5, 0.95), (0, 0, 0.95), (1, 5, 1.0)])
def test_clopper_pearson_rejects_bad_input(k: int, n: int, conf: float) -> None:
    with pytest.raises(ProbPruneError):
        clopper_pearson(k, n, conf)


def test_summary_true_bound_passes_and_a_tenth_of_it_fails() -> None:
    # gaps of a real ensemble against the real ε(δ), then against ε/10
    point = expand_grid(SMALL)[0]
    rows = run_trials(SMALL, point, H, range(6))
    eps = point_bound(SMALL, point).eps
    assert eps is not None
    lower, upper = [r.gap_lower for r in rows], [r.gap_upper for r in rows]
    good = summarize_point(lower, upper, eps, 0.05)
    assert good.passed is True and good.coverage == 1.0 and good.tightness is not None and good.tightness > 1
    # a deliberately wrong bound: below the smallest observed gap -> every trial violates it
    wrong = min(lower) * 0.9
    bad = summarize_point(lower, upper, wrong, 0.05)
    assert bad.n_covered == 0 and bad.coverage_high is not None and bad.coverage_high < 0.95
    assert bad.passed is False


def test_summary_statistics_on_known_values() -> None:
    lower = [float(i) for i in range(1, 21)]  # 1..20
    s = summarize_point(lower, [2.0 * x for x in lower], eps=18.0, delta=0.1, confidence=0.95)
    assert s.n_trials == 20 and s.gap_lower_median == pytest.approx(10.5)
    assert s.gap_lower_quantile == pytest.approx(18.1)  # numpy's linear 0.9-quantile of 1..20
    assert s.gap_upper_median == pytest.approx(21.0)
    assert s.n_covered == 18 and s.coverage == pytest.approx(0.9)
    assert (s.coverage_low, s.coverage_high) == pytest.approx(clopper_pearson(18, 20, 0.95))
    assert s.coverage_certified == pytest.approx(9 / 20)
    assert s.tightness == pytest.approx(18.0 / 18.1)
    assert s.passed is True  # 0.9 coverage with 20 trials cannot reject 1 - δ = 0.9
    none = summarize_point(lower, lower, None, 0.1)
    assert none.passed is None and none.coverage is None
    with pytest.raises(ProbPruneError):
        summarize_point([], [], 1.0, 0.1)


def test_fit_slope_recovers_a_power_law_and_slopes_by_rule() -> None:
    ws = [128, 256, 512, 1024, 2048]
    s, b = fit_slope(ws, [3.0 * w ** -0.75 for w in ws])
    assert s == pytest.approx(-0.75, abs=1e-12) and b == pytest.approx(math.log(3.0), abs=1e-12)
    assert math.isnan(fit_slope([128], [1.0])[0])
    assert math.isnan(fit_slope([128, 256], [1.0, 0.0])[0])  # non-positive values are dropped
    pts = [(GridRow(grid_index=0, width=w, prune_index=j, arch="", method=m, scope="layerwise", level_name="p",
                    level_value=0.1, rescale=False, theory_exponent=e),
            PointSummary(n_trials=1, gap_lower_median=c * w ** -e, rel_gap_lower_median=c * w ** -(e - 0.5)))
           for j, (m, c, e) in enumerate([("magnitude", 2.0, 1.25), ("random", 1.0, 0.75)]) for w in ws]
    out = slopes_by_rule(pts)
    assert [o.method for o in out] == ["magnitude", "random"]
    assert out[0].exponent == pytest.approx(1.25) and out[1].rel_slope == pytest.approx(-0.25)
    assert out[0].theory_exponent == 1.25


def test_law_and_prune_specs_are_honoured() -> None:
    cfg = RunConfig(net=NetSpec(widths=(4, 16, 2)), law=LawSpec(kind="gaussian", scale=1.0),
                    prunes=(PruneSpec(method="random", p=0.5),), gap=GapSpec(n_points=32, n_restarts=0, n_steps=0))
    rows = run_trials(cfg, expand_grid(cfg)[0], config_hash(cfg), range(8), certify=False)
    assert all(math.isnan(r.gap_upper) for r in rows)
    assert abs(sum(r.sparsity for r in rows) / 8 - 0.5) < 0.1  # 8·96 Bernoulli(0.5) draws: sd ≈ 0.018


def test_tf32_trials_get_a_bound_that_covers_tf32_products() -> None:
    # under mc.matmul = tf32 the gap search may run on TF32 tensor cores: the certified value must cover that
    # forward pass (a wider rounding margin), or a TF32 lower value could exceed it
    import dataclasses

    cfg = dataclasses.replace(SMALL, mc=dataclasses.replace(SMALL.mc, matmul="tf32"))
    point = expand_grid(SMALL)[0]
    fp32 = run_trials(SMALL, point, H, [0, 1])
    tf32 = run_trials(cfg, point, H, [0, 1])
    for a, b in zip(fp32, tf32):
        assert b.gap_upper > a.gap_upper * (1 + 1e-4)  # TF32 operands are rounded to 10 bits: a visible margin
