"""The one search engine (probprune.search): exact sups where known, witnesses inside, seeds, bad budgets."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probprune.bounds.differential import gap_search
from probprune.bounds.graph import graph_search_budget, search_graph_gap
from probprune.config import BallSpec, GapSpec, NetSpec, ProbPruneError
from probprune.gap import sup_gap
from probprune.nets import Net
from probprune.nets.graph import Graph, Node
from probprune.search import Budget, Region, maximise

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_pair(d_out: int, d_in: int, seed: int) -> tuple[Net, Net, torch.Tensor]:
    """One linear layer F and f = F with half its weights zeroed; D = W − W̃ (float64)."""
    g = gen(seed)
    w = torch.randn(d_out, d_in, generator=g, dtype=F64)
    keep = torch.rand(d_out, d_in, generator=g) < 0.5
    spec = NetSpec(widths=(d_in, d_out))
    return Net.from_weights(spec, [w]), Net.from_weights(spec, [w * keep]), w - w * keep


def sq_norm(d: torch.Tensor, c: torch.Tensor | None = None):
    """Objective ``‖D x‖²`` on points ``[R, B, d]`` (optionally ``‖D x + c‖²``)."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x @ d.T.to(x.dtype)
        if c is not None:
            y = y + c.to(x.dtype)
        return y.square().sum(-1)
    return fn


@pytest.mark.parametrize("shape", [(12, 40), (30, 8), (10, 10)])
def test_l2_ball_of_one_linear_layer_reaches_r_sigma_max(shape: tuple[int, int]) -> None:
    """sup over ‖x‖₂ ≤ r of ‖(W − W̃)x‖ = r·σ_max(W − W̃): the engine, gap_search and sup_gap within 1e-6."""
    d_out, d_in = shape
    t, p, d = linear_pair(d_out, d_in, seed=d_in)
    sigma = float(torch.linalg.svdvals(d)[0])
    for r in (1.0, 2.5):
        truth = r * sigma
        reg = Region(torch.zeros(1, d_in, dtype=F64), r)
        res = maximise(sq_norm(d), reg, Budget(n_restarts=4, n_steps=200), gen(0))
        assert float(res.value[0].sqrt()) == pytest.approx(truth, rel=1e-6)
        assert float(res.value[0].sqrt()) <= truth * (1 + 1e-12)
        assert bool(reg.inside(res.x.unsqueeze(0)).all())
        w = gap_search(t, p, BallSpec(radius=r), gen(1), n_restarts=4, n_steps=200)
        assert float(w.value[0]) == pytest.approx(truth, rel=1e-6)
        est = sup_gap(t, p, GapSpec(radius=r, n_points=64, n_restarts=4, n_steps=100), gen(2))
        assert float(est.value) == pytest.approx(truth, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_ball_of_one_output_reaches_r_times_row_l1_norm(seed: int) -> None:
    """sup over ‖x − c‖∞ ≤ r of |d·x| = |d·c| + r·‖d‖₁ (a vertex), within 1e-6 relative."""
    g = gen(seed)
    n = 20
    dvec = torch.randn(1, n, generator=g, dtype=F64)
    for centre in (torch.zeros(1, n, dtype=F64), 0.3 * torch.randn(1, n, generator=g, dtype=F64)):
        r = 0.05
        truth = float((dvec @ centre.T).abs()) + r * float(dvec.abs().sum())
        reg = Region(centre, r, "linf")
        res = maximise(sq_norm(dvec), reg, Budget(n_restarts=4, n_steps=40), gen(seed))
        assert float(res.value[0].sqrt()) == pytest.approx(truth, rel=1e-6)
        assert bool(reg.inside(res.x.unsqueeze(0)).all())
        # the same through gap_search (one linear layer F, and f = 0: the gap is |d·x|)
        spec = NetSpec(widths=(n, 1))
        t = Net.from_weights(spec, [dvec])
        p = Net.from_weights(spec, [torch.zeros_like(dvec)])
        ball = BallSpec(radius=r, centre=tuple(float(v) for v in centre[0]), norm="linf")
        w = gap_search(t, p, ball, gen(seed), n_restarts=4, n_steps=40)
        assert float(w.value[0]) == pytest.approx(truth, rel=1e-6)


def _exactly_inside(x: torch.Tensor, c: torch.Tensor, r: float, norm: str, box: tuple[float, float] | None) -> bool:
    """Membership in rational arithmetic (no rounding at all)."""
    xs = [Fraction(float(v)) for v in x]
    cs = [Fraction(float(v)) for v in c]
    if box is not None and not all(Fraction(box[0]) <= v <= Fraction(box[1]) for v in xs):
        return False
    if norm == "linf":
        return max(abs(a - b) for a, b in zip(xs, cs)) <= Fraction(r)
    return sum((a - b) ** 2 for a, b in zip(xs, cs)) <= Fraction(r) ** 2


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 6), b=st.integers(1, 3), r=st.floats(1e-3, 10.0), norm=st.sampled_from(["l2", "linf"]),
       boxed=st.booleans(), dt=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 16))
def test_witness_is_inside_the_ball_and_box(d: int, b: int, r: float, norm: str, boxed: bool, dt: torch.dtype,
                                            seed: int) -> None:
    """Every witness lies in the closed ball ∩ box, checked exactly in rationals (ℓ2, ℓ∞, box; float32/64)."""
    g = gen(seed)
    box = (0.0, 1.0) if boxed else None
    centres = torch.rand(b, d, generator=g, dtype=F64) if boxed else torch.randn(b, d, generator=g, dtype=F64) * 3
    mat = torch.randn(3, d, generator=g, dtype=F64)
    reg = Region(centres, r, norm, box)  # type: ignore[arg-type]
    res = maximise(sq_norm(mat, torch.ones(3, dtype=F64)), reg, Budget(n_restarts=3, n_steps=8, n_screen=2,
                                                                       screen_steps=3, power=True), g, dtype=dt)
    assert res.x.dtype == dt and res.x.shape == (b, d)
    assert bool(torch.isfinite(res.value).all())
    for j in range(b):
        assert _exactly_inside(res.x[j], centres[j], r, norm, box)
    # and so is every projected point
    pts = reg.project((torch.randn(5, b, d, generator=g, dtype=F64) * 4 * r + centres).to(dt))
    for i in range(5):
        for j in range(b):
            assert _exactly_inside(pts[i, j], centres[j], r, norm, box)


def test_sphere_points_lie_on_the_sphere_inside_the_ball() -> None:
    reg = Region(torch.zeros(2, 7, dtype=F64), 1.5, sphere=True)
    x = reg.random_starts(6, gen(0), torch.float32)
    nrm = x.double().norm(dim=-1)
    assert bool((nrm <= 1.5).all()) and bool((nrm >= 1.5 * (1 - 1e-6)).all())
    assert bool(reg.inside(x).all())


def test_seeds_are_reproducible_and_matter() -> None:
    _, _, d = linear_pair(6, 9, seed=3)
    reg = Region(torch.randn(3, 9, generator=gen(9), dtype=F64), 0.7)
    obj = sq_norm(d, torch.ones(6, dtype=F64))
    budget = Budget(n_restarts=3, n_steps=10, n_screen=3, screen_steps=2, power=True)
    a = maximise(obj, reg, budget, gen(4))
    b = maximise(obj, reg, budget, gen(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.value, b.value) and a.n_evals == b.n_evals
    starts = [reg.random_starts(4, gen(s), F64) for s in (4, 5)]
    assert not torch.equal(starts[0], starts[1])
    state = torch.random.get_rng_state()
    maximise(obj, reg, budget, gen(5))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_batched_balls_equal_one_ball_at_a_time() -> None:
    _, _, d = linear_pair(5, 8, seed=1)
    obj = sq_norm(d, torch.ones(5, dtype=F64))
    centres = torch.randn(4, 8, generator=gen(2), dtype=F64)
    budget = Budget(n_restarts=2, n_steps=12, n_screen=3, screen_steps=3, power=True)
    for norm in ("l2", "linf"):
        both = maximise(obj, Region(centres, 0.5, norm), budget, gen(3))  # type: ignore[arg-type]
        for j in range(4):
            one = maximise(obj, Region(centres[j:j + 1], 0.5, norm), budget, gen(3))  # type: ignore[arg-type]
            assert float(one.value[0]) == pytest.approx(float(both.value[j]), rel=1e-12)


def test_given_starts_are_used_and_the_best_is_kept() -> None:
    """A start at the maximiser is never lost: the value is at least the objective there."""
    _, _, d = linear_pair(4, 6, seed=5)
    _, _, vh = torch.linalg.svd(d)
    top = vh[0].unsqueeze(0)  # the top right singular vector: the maximiser on the unit sphere
    reg = Region(torch.zeros(1, 6, dtype=F64), 1.0)
    res = maximise(sq_norm(d), reg, Budget(n_restarts=1, n_steps=0), gen(0), starts=top)
    assert float(res.value[0].sqrt()) == pytest.approx(float(torch.linalg.svdvals(d)[0]), rel=1e-9)
    assert res.n_evals == 8  # n_steps = 0: the pool (the start, the centre, random points) is only evaluated


def test_budget_evaluation_count_matches_the_search() -> None:
    _, _, d = linear_pair(4, 6, seed=5)
    reg = Region(torch.zeros(2, 6, dtype=F64), 1.0)
    for budget in (Budget(n_restarts=3, n_steps=7, n_screen=4, screen_steps=2),
                   Budget(n_restarts=2, n_steps=5, n_screen=1, screen_steps=0, power=True),
                   Budget(n_restarts=2, n_steps=0)):
        assert maximise(sq_norm(d), reg, budget, gen(0)).n_evals == budget.n_evals
    assert graph_search_budget(3, 10).n_evals == 4 * 3 * 10


def _linear_graph(w: torch.Tensor) -> Graph:
    return Graph([Node("fc", "linear", ("input",), {}, {"weight": w})], (w.shape[1],))


def test_graph_search_reaches_r_sigma_max_on_one_linear_node() -> None:
    _, _, d = linear_pair(7, 11, seed=8)
    w = torch.randn(7, 11, generator=gen(0), dtype=F64)
    value, x = search_graph_gap(_linear_graph(w), _linear_graph(w - d), radius=2.0, n_restarts=3, n_steps=30)
    assert value == pytest.approx(2.0 * float(torch.linalg.svdvals(d)[0]), rel=1e-6)
    assert x.shape == (11,) and float(x.norm()) <= 2.0


@pytest.mark.parametrize("kwargs,field", [({"n_restarts": -1}, "n_restarts"), ({"n_steps": 1.5}, "n_steps"),
                                          ({"n_screen": 0}, "n_screen"), ({"screen_steps": True}, "screen_steps"),
                                          ({"step_size": 0.0}, "step_size"), ({"step_size": float("nan")},
                                                                              "step_size"),
                                          ({"screen_step_size": -1.0}, "screen_step_size"),
                                          ({"momentum": 1.0}, "momentum")])
def test_bad_budgets_are_refused_with_one_line(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ProbPruneError, match=field) as err:
        Budget(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_bad_regions_and_graph_budgets_are_refused() -> None:
    c = torch.zeros(1, 3, dtype=F64)
    for kwargs, field in (({"radius": 0.0}, "radius"), ({"radius": float("inf")}, "radius"),
                          ({"norm": "l1"}, "norm"), ({"norm": "linf", "sphere": True}, "sphere"),
                          ({"box": (0.5, 1.0)}, "box")):
        with pytest.raises(ProbPruneError, match=field):
            Region(c, **{"radius": 1.0, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="centres"):
        Region(c.float(), 1.0)
    with pytest.raises(ProbPruneError, match="starts"):
        maximise(sq_norm(torch.eye(3, dtype=F64)), Region(c, 1.0), Budget(), gen(0), starts=torch.zeros(2, 4))
    g = _linear_graph(torch.eye(3, dtype=F64))
    for kwargs, field in (({"n_restarts": 0}, "n_restarts"), ({"n_steps": -2}, "n_steps")):
        with pytest.raises(ProbPruneError, match=field):
            search_graph_gap(g, g, radius=1.0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="radius"):
        search_graph_gap(g, g, radius=-1.0)
