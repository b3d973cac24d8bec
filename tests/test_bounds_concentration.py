"""Concentration lemmas (docs/theory.md §3): each bound holds at its stated probability on sampled
matrices (Clopper–Pearson), and the Chernoff forms are as tight as claimed."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import beta

from probprune.bounds.concentration import op_norm_bound
from probprune.bounds.entries import entry_stats
from probprune.config import LawSpec
from probprune.rng import make_generator

N_NETS = 300
CONF = 0.95  # one-sided confidence of the Clopper–Pearson upper end


def cp_upper(k: int, n: int, conf: float = CONF) -> float:
    """One-sided Clopper–Pearson upper confidence limit for a binomial proportion k/n."""
    return 1.0 if k >= n else float(beta.ppf(conf, k + 1, n - k))


@pytest.mark.parametrize(("role", "level", "rescale", "kind"), [
    ("target", 0.0, False, "uniform"), ("diff", 0.3, False, "uniform"), ("diff", 0.3, True, "uniform"),
    ("target", 0.0, False, "gaussian"), ("diff", 0.5, False, "gaussian"),
])
def test_operator_norm_lemma_holds(role: str, level: float, rescale: bool, kind: str) -> None:
    """Lemma 1 (§3): P(‖A‖₂ > bound(δ)) ≤ δ over 300 matrices (exact norms), for W and D."""
    law = LawSpec(kind=kind)  # type: ignore[arg-type]
    m, n, a = 40, 6, 0.3
    method = "random" if rescale else "magnitude"
    g = make_generator(11)
    w = (torch.rand(N_NETS, m, n, generator=g, dtype=torch.float64) * 2 - 1) * a if kind == "uniform" else \
        torch.randn(N_NETS, m, n, generator=g, dtype=torch.float64) * a / math.sqrt(3)
    if role == "diff":
        if method == "magnitude":
            w = w * (w.abs() <= level * a)
        else:
            keep = torch.rand(N_NETS, m, n, generator=g, dtype=torch.float64) >= level
            w = w - w * keep / (1 - level)
    norms = torch.linalg.matrix_norm(w, ord=2)
    for delta in (0.05, 0.5):
        z = math.inf
        if kind == "gaussian":  # Lemma 1 for Gaussians uses the truncation event T with its own δ_T
            from probprune.bounds.entries import gauss_trunc_z
            z = gauss_trunc_z(m * n, delta / 2)
        stt = entry_stats(law, a, role, method, level, rescale, z)  # type: ignore[arg-type]
        bound, _ = op_norm_bound(m, n, stt, delta / 2 if kind == "gaussian" else delta)
        k = int((norms > bound).sum())
        assert cp_upper(k, N_NETS) <= delta, (role, kind, delta, bound, float(norms.max()))
    # and the bound is not absurdly loose: within a factor 4 of the largest sampled norm
    assert bound <= 4 * float(norms.max())


@pytest.mark.parametrize(("kind", "role", "level"), [("uniform", "target", 0.0), ("uniform", "diff", 0.3),
                                                      ("gaussian", "target", 0.0)])
def test_fixed_vector_lemmas_hold(kind: str, role: str, level: float) -> None:
    """Lemma 2 (‖Av‖) and Lemma 3 (‖relu(Wv)‖) for a fixed v: failure frequency ≤ e^{−ξ} (Clopper–Pearson)."""
    from probprune.bounds.concentration import activation_gain, forward_fixed, subgauss_fixed
    from probprune.nets import Activation
    law = LawSpec(kind=kind)  # type: ignore[arg-type]
    m, n, a = 8, 50, 0.4
    g = make_generator(21)
    w = (torch.rand(N_NETS, m, n, generator=g, dtype=torch.float64) * 2 - 1) * a if kind == "uniform" else \
        torch.randn(N_NETS, m, n, generator=g, dtype=torch.float64) * a / math.sqrt(3)
    if role == "diff":
        w = w * (w.abs() <= level * a)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    st_ = entry_stats(law, a, role, "magnitude", level)  # type: ignore[arg-type]
    for delta in (0.05, 0.5):
        xi = math.log(1 / delta)
        av = (w @ v).norm(dim=-1)
        k = int((av > subgauss_fixed(m, st_.proxy, xi) * v.norm()).sum())
        assert cp_upper(k, N_NETS) <= delta
        if role == "target":
            fw = torch.relu(w @ v).norm(dim=-1)
            bound = forward_fixed(m, st_, activation_gain(Activation("relu")), 1.0, xi) * v.norm()
            assert cp_upper(int((fw > bound).sum()), N_NETS) <= delta


def _layer(kind: str, method: str, level: float, n_rows: int, n_cols: int, seed: int) -> tuple:
    g = make_generator(seed)
    a = 0.3
    w = (torch.rand(N_NETS, n_rows, n_cols, generator=g, dtype=torch.float64) * 2 - 1) * a if kind == "uniform" \
        else torch.randn(N_NETS, n_rows, n_cols, generator=g, dtype=torch.float64) * a / math.sqrt(3)
    if method == "magnitude":
        removed = w.abs() <= level * a
    else:
        removed = torch.rand(w.shape, generator=g, dtype=torch.float64) < level
    return w, removed, a, g


@pytest.mark.parametrize(("kind", "method", "level", "relu", "e_scale"), [
    ("uniform", "magnitude", 0.3, True, 1.0), ("uniform", "magnitude", 0.3, True, 0.0),
    ("uniform", "random", 0.2, True, 1.0), ("uniform", "random", 0.2, False, 0.3),
    ("gaussian", "magnitude", 0.5, True, 1.0), ("uniform", "magnitude", 0.05, False, 0.0),
])
def test_lemma4_error_vector_in_one_piece(kind: str, method: str, level: float, relu: bool, e_scale: float) -> None:
    """‖σ(z + u) − σ(z)‖ (ReLU) or ‖u‖, u = W̃e − Dx: failure frequency ≤ e^{−ξ} (Clopper–Pearson), δ = 0.05, 0.5."""
    from probprune.bounds.concentration import chernoff_sq
    law = LawSpec(kind=kind)  # type: ignore[arg-type]
    m, n = 40, 30
    w, removed, a, g = _layer(kind, method, level, m, n, seed=31)
    kept_w, d = w * ~removed, w * removed
    x = torch.randn(n, generator=g, dtype=torch.float64)
    e = torch.randn(n, generator=g, dtype=torch.float64) * e_scale
    z = w @ x
    u = kept_w @ e - d @ x
    out = (torch.relu(z + u) - torch.relu(z)).norm(dim=-1) if relu else u.norm(dim=-1)
    st_k = entry_stats(law, a, "pruned", method, level)  # type: ignore[arg-type]
    st_d = entry_stats(law, a, "diff", method, level)  # type: ignore[arg-type]
    kappa = math.sqrt(st_k.proxy * float(e.norm()) ** 2 + st_d.proxy * float(x.norm()) ** 2)
    for delta in (0.05, 0.5):
        bound = kappa * math.sqrt(chernoff_sq(m, math.log(1 / delta), relu))
        k = int((out > bound).sum())
        assert cp_upper(k, N_NETS) <= delta, (delta, k, bound, float(out.median()))


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_lemma4_forward_half_chi2(kind: str) -> None:
    from probprune.bounds.concentration import chernoff_sq
    law = LawSpec(kind=kind)  # type: ignore[arg-type]
    m, n = 64, 20
    w, _, a, g = _layer(kind, "magnitude", 0.0, m, n, seed=41)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    out = torch.relu(w @ x).norm(dim=-1)
    nu2 = entry_stats(law, a, "target", "magnitude", 0.0).proxy
    for delta in (0.05, 0.5):
        bound = math.sqrt(nu2 * chernoff_sq(m, math.log(1 / delta), True)) * float(x.norm())
        assert cp_upper(int((out > bound).sum()), N_NETS) <= delta
    # the half-χ² value sits near the truth: the median is at least 70% of the δ = 0.5 bound
    assert float(out.median()) >= 0.7 * math.sqrt(nu2 * chernoff_sq(m, math.log(2), True)) * float(x.norm())


def test_chernoff_form_beats_laurent_massart() -> None:
    from probprune.bounds.concentration import chernoff_sq
    for m, xi in ((4, 3.0), (64, 10.0), (2048, 155.0)):
        lm = (math.sqrt(m) + math.sqrt(2 * xi)) ** 2
        assert chernoff_sq(m, xi, False) <= lm * 1.001
        assert chernoff_sq(m, xi, True) < chernoff_sq(m, xi, False)
