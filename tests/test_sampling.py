"""Weight laws: the paper's scale, variances, determinism, ensembles, user laws."""

import math

import pytest
import torch

from probprune import LawSpec, NetSpec, ProbPruneError, sample_net
from probprune.config import layer_scale, parse_arch, parse_law
from probprune.rng import make_generator
from probprune.sampling import layer_scales
from reference import check_batched_equals_reference


def test_paper_law_scale_and_variance() -> None:
    spec = NetSpec(widths=(300, 1000, 200))
    net = sample_net(spec, LawSpec(scale=2.0), make_generator(0), dtype=torch.float64)
    for w, (o, i) in zip(net.weights, spec.weight_shapes()):
        a = 2.0 / math.sqrt(max(o, i))
        assert float(w.abs().max()) <= a
        n = w.numel()
        var = float(w.var())
        # sample variance of U[-a, a]: mean a²/3, sd ≈ a²·sqrt(4/45)/sqrt(n); allow 5 sd
        assert abs(var - a * a / 3) < 5 * a * a * math.sqrt(4 / 45) / math.sqrt(n)
        assert abs(float(w.mean())) < 5 * a / math.sqrt(3 * n)


def test_gaussian_law_same_variance() -> None:
    spec = NetSpec(widths=(500, 800))
    net = sample_net(spec, LawSpec("gaussian", 3.0), make_generator(1), dtype=torch.float64)
    a = 3.0 / math.sqrt(800)
    var = float(net.weights[0].var())
    n = net.weights[0].numel()
    # Var of sample variance of N(0, s²): 2 s⁴/(n-1)
    assert abs(var - a * a / 3) < 5 * (a * a / 3) * math.sqrt(2 / n)


def test_conv_layer_scale_uses_matrix_form() -> None:
    spec = parse_arch("cnn:3x8x8,c16k3,10")
    scales = layer_scales(spec, LawSpec(scale=1.0))
    assert scales[0] == pytest.approx(1 / math.sqrt(16 * 9))  # fan_out = 144 > fan_in = 27
    assert scales[1] == pytest.approx(1 / math.sqrt(16 * 8 * 8))
    assert layer_scale((2, 5), 1.0) == pytest.approx(1 / math.sqrt(5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_seed_bit_identical_and_ensemble_members(dtype: torch.dtype) -> None:
    spec = parse_arch("cnn:2x6x6,c3k3,c4k3s2r,5", bias=True)
    a = sample_net(spec, LawSpec(), make_generator(42), dtype=dtype)
    b = sample_net(spec, LawSpec(), make_generator(42), dtype=dtype)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ens = sample_net(spec, LawSpec(), [make_generator(s) for s in (41, 42, 43)], dtype=dtype)
    assert ens.n_trials == 3
    m = ens.member(1)
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), a.state_dict().values()))
    # every member, bit for bit and in the same dtype, is the network sampled alone from its generator
    check_batched_equals_reference(
        lambda seeds: [list(ens.member(k).state_dict().values()) for k in range(len(seeds))],
        lambda seeds, k: list(sample_net(spec, LawSpec(), make_generator(seeds[k]), dtype=dtype).state_dict().values()),
        [(41, 42, 43)])


def test_user_law_hook() -> None:
    def ones(shape, a, generator, device, dtype):  # type: ignore[no-untyped-def]
        return torch.full(shape, a, device=device, dtype=dtype)

    net = sample_net(NetSpec(widths=(4, 9)), ones, make_generator(0), scale=3.0)
    assert torch.allclose(net.weights[0], torch.full((9, 4), 1.0))

    def bad(shape, a, generator, device, dtype):  # type: ignore[no-untyped-def]
        return torch.zeros(2)

    with pytest.raises(ProbPruneError, match="user law"):
        sample_net(NetSpec(widths=(4, 9)), bad, make_generator(0))


def test_parse_law() -> None:
    assert parse_law("uniform:K=2.449") == LawSpec("uniform", 2.449)
    assert parse_law("gaussian").scale == pytest.approx(math.sqrt(6))
    with pytest.raises(ProbPruneError, match="law.kind"):
        parse_law("cauchy:K=1")
    with pytest.raises(ProbPruneError, match="law.scale"):
        parse_law("uniform:K=-1")
    with pytest.raises(ProbPruneError, match="law.scale"):
        parse_law("uniform:K=abc")
