"""Operator norms: exact where claimed, never below the exact value where certified."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from probprune.bounds.norms import conv_norm, matrix_norm_bound, operator_norm, power_lower
from probprune.config import ConvSpec, ProbPruneError

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(w: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w.double())[0])


def unrolled(w: torch.Tensor, conv: ConvSpec, shape: tuple[int, int, int]) -> torch.Tensor:
    """The conv layer as an explicit matrix [out_dim, in_dim], built column by column."""
    c, h, wd = shape
    eye = torch.eye(c * h * wd, dtype=torch.float64).reshape(-1, c, h, wd)
    p = conv.pad
    if conv.padding_mode == "circular" and p > 0:
        y = F.conv2d(F.pad(eye, (p, p, p, p), mode="circular"), w.double(), stride=conv.stride)
    else:
        y = F.conv2d(eye, w.double(), stride=conv.stride, padding=p)
    return y.reshape(c * h * wd, -1).T


@settings(max_examples=150, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 10**6),
       method=st.sampled_from(["svd", "gram-cholesky", "frobenius-holder", "auto"]),
       rank1=st.booleans())
def test_matrix_norm_never_below_exact(m: int, n: int, seed: int, method: str, rank1: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g)
    if rank1:  # a hard case for the certificates: one dominant direction, float32 input
        w = torch.outer(torch.randn(m, generator=g), torch.randn(n, generator=g)) + 1e-3 * w
    ref = exact(w)
    nv = matrix_norm_bound(w, method)  # type: ignore[arg-type]
    assert float(nv.value) >= ref
    if nv.exact or nv.method == "gram-cholesky":
        assert float(nv.value) <= ref * (1 + 2e-5) + 1e-12
    assert float(power_lower(w)) <= ref * (1 + 1e-12)


def test_methods_and_flags() -> None:
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    assert matrix_norm_bound(w).method == "svd" and matrix_norm_bound(w).exact
    gc = matrix_norm_bound(w, "gram-cholesky")
    assert gc.method == "gram-cholesky" and not gc.exact
    fh = matrix_norm_bound(w, "frobenius-holder")
    assert not fh.exact and float(fh.value) <= float(w.double().norm()) * (1 + 1e-6)
    with pytest.raises(ProbPruneError, match="method='bogus'"):
        matrix_norm_bound(w, "bogus")  # type: ignore[arg-type]


def test_auto_switches_with_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import probprune.bounds.norms as norms
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(norms, "SVD_BUDGET", 10.0)
    assert norms.matrix_norm_bound(w).method == "gram-cholesky"
    monkeypatch.setattr(norms, "GRAM_BUDGET", 10.0)
    big = norms.matrix_norm_bound(w)
    assert big.method == "frobenius-holder" and float(big.value) >= exact(w)


def test_ensemble_values_per_member() -> None:
    w = torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(2))
    for method in ("svd", "gram-cholesky", "frobenius-holder"):
        nv = matrix_norm_bound(w, method)  # type: ignore[arg-type]
        assert nv.value.shape == (5,)
        for k in range(5):
            assert float(nv.value[k]) == pytest.approx(float(matrix_norm_bound(w[k], method).value),  # type: ignore[arg-type]
                                                       rel=1e-9)


def test_zero_matrix() -> None:
    for method in ("svd", "gram-cholesky", "frobenius-holder"):
        assert float(matrix_norm_bound(torch.zeros(4, 3), method).value) == 0.0  # type: ignore[arg-type]


CONV_CASES = [
    # (c_out, c_in, k, stride, padding, mode, H, W)
    (2, 1, 3, 1, None, "circular", 5, 5),
    (3, 2, 3, 1, None, "circular", 6, 4),
    (2, 3, 5, 1, None, "circular", 4, 4),   # kernel larger than the grid: taps fold
    (1, 1, 1, 1, None, "circular", 3, 3),
    (4, 2, 3, 1, None, "zeros", 5, 5),
    (2, 2, 5, 1, 0, "zeros", 7, 6),
    (3, 1, 3, 2, None, "zeros", 7, 7),
    (2, 2, 4, 2, 1, "zeros", 6, 6),
    (2, 2, 3, 2, None, "circular", 6, 6),
    (2, 1, 3, 1, 0, "circular", 5, 5),     # rows dropped
    (2, 1, 3, 1, 2, "circular", 4, 4),     # rows repeated
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_norm_against_unrolled_matrix(case: tuple) -> None:
    co, ci, k, s, p, mode, h, wd = case
    conv = ConvSpec(co, k, s, p, mode)
    w = torch.randn(co, ci, k, k, generator=torch.Generator().manual_seed(co * 100 + k))
    ref = exact(unrolled(w, conv, (ci, h, wd)))
    nv = conv_norm(w, conv, (ci, h, wd))
    assert nv.method == "fft"
    if mode == "circular" and s == 1 and 2 * conv.pad == k - 1:
        assert nv.exact
        assert float(nv.value) == pytest.approx(ref, rel=1e-5)
    else:
        assert not nv.exact
        assert float(nv.value) >= ref


@settings(max_examples=120, deadline=None)
@given(co=st.integers(1, 3), ci=st.integers(1, 3), k=st.integers(1, 4), s=st.integers(1, 3),
       p=st.one_of(st.none(), st.integers(0, 3)), circ=st.booleans(), h=st.integers(2, 6), wd=st.integers(2, 6),
       seed=st.integers(0, 10**6))
def test_conv_norm_never_below_exact(co: int, ci: int, k: int, s: int, p: int | None, circ: bool, h: int, wd: int,
                                     seed: int) -> None:
    conv = ConvSpec(co, k, s, p, "circular" if circ else "zeros")
    pad = conv.pad
    if (h + 2 * pad - k) < 0 or (wd + 2 * pad - k) < 0 or (circ and pad > min(h, wd)):
        return  # empty output, or circular padding wider than the input (torch refuses it)
    w = torch.randn(co, ci, k, k, generator=torch.Generator().manual_seed(seed))
    ref = exact(unrolled(w, conv, (ci, h, wd)))
    nv = conv_norm(w, conv, (ci, h, wd))
    assert float(nv.value) >= ref * (1 - 1e-12)
    if nv.exact:
        assert float(nv.value) == pytest.approx(ref, rel=1e-5)


def test_conv_ensemble_and_errors() -> None:
    conv = ConvSpec(2, 3, padding_mode="circular")
    w = torch.randn(4, 2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    nv = operator_norm(w, conv, (1, 5, 5))
    assert nv.value.shape == (4,)
    assert float(nv.value[2]) == pytest.approx(float(operator_norm(w[2], conv, (1, 5, 5)).value), rel=1e-12)
    with pytest.raises(ProbPruneError, match="input_shape=None"):
        operator_norm(w, conv)
    with pytest.raises(ProbPruneError, match="channels"):
        operator_norm(w, conv, (3, 5, 5))
    with pytest.raises(ProbPruneError, match="weight shape"):
        operator_norm(torch.zeros(2))


def test_power_lower_is_close_for_a_clear_gap() -> None:
    w = torch.diag(torch.tensor([5.0, 1.0, 0.5]))
    assert float(power_lower(w)) == pytest.approx(5.0, rel=1e-6)
    assert math.isfinite(float(power_lower(torch.zeros(3, 3))))


def test_cheap_bound_rounding_margin_on_long_sums() -> None:
    """Many equal float32 terms (worst case for rounding): the certified value stays above the float64 truth."""
    for shape in ((1, 50000), (50000, 1), (300, 300)):
        w = torch.full(shape, 0.1)
        nv = matrix_norm_bound(w, "frobenius-holder")
        w64 = w.double()
        truth = min(float(w64.norm()), math.sqrt(float(w64.abs().sum(0).max() * w64.abs().sum(1).max())))
        assert float(nv.value) >= truth
        assert float(nv.value) >= exact(w)
        assert float(nv.value) <= truth * 1.01


def test_minus_gives_the_norm_of_the_difference() -> None:
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(3, 40, 30, generator=g), torch.randn(3, 40, 30, generator=g)
    for method in ("svd", "gram-cholesky", "frobenius-holder"):
        # svd / gram-cholesky: the norm of the exact difference (operands cast to float64 first), not of the
        # float32-rounded a − b; frobenius-holder sums a float32 rounding of it (and accounts for that rounding)
        got = matrix_norm_bound(a, method, minus=b)  # type: ignore[arg-type]
        ref = matrix_norm_bound(a - b if method == "frobenius-holder" else a.double() - b.double(),
                                method)  # type: ignore[arg-type]
        torch.testing.assert_close(got.value, ref.value, rtol=1e-6, atol=0)
        assert bool((got.value >= torch.linalg.svdvals(a.double() - b.double())[:, 0]).all())
    conv = ConvSpec(2, 3, padding_mode="circular")
    wa, wb = torch.randn(2, 1, 3, 3, generator=g), torch.randn(2, 1, 3, 3, generator=g)
    assert float(operator_norm(wa, conv, (1, 5, 5), minus=wb).value) == pytest.approx(
        float(operator_norm(wa.double() - wb.double(), conv, (1, 5, 5)).value), rel=1e-12)
    with pytest.raises(ProbPruneError, match="minus"):
        matrix_norm_bound(a, minus=b[0])


def test_certificates_on_flat_spectra() -> None:
    """Orthogonal matrices (all singular values equal) are the hardest case for the Cholesky margin."""
    for n in (1, 7, 60):
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64))
        for scale in (1.0, 1e-3, 1e3):
            w = q * scale
            for method in ("gram-cholesky", "frobenius-holder", "svd"):
                v = float(matrix_norm_bound(w, method).value)  # type: ignore[arg-type]
                assert v >= scale * (1 - 1e-15)
                if method != "frobenius-holder":
                    assert v <= scale * (1 + 1e-5)
