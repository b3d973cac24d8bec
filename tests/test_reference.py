"""tests/reference.py: the shared tester fails on any difference, and the plain references equal the library."""

from __future__ import annotations

import pytest
import torch

from probprune.config import LawSpec, parse_arch
from probprune.masks import mask_from_scores
from probprune.rng import make_generator
from probprune.sampling import sample_net
from reference import check_batched_equals_reference, forward_one, gap_over_points, magnitude_mask_one


def test_the_tester_compares_every_member_and_fails_on_a_difference() -> None:
    batched = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert check_batched_equals_reference(lambda c: batched * c, lambda c, k: batched[k] * c, [1.0, 2.0]) == 4
    with pytest.raises(AssertionError, match="case 0, member 1: not bit-identical"):
        check_batched_equals_reference(lambda c: batched, lambda c, k: batched[k] + (k == 1) * 1e-3, [None])
    with pytest.raises(AssertionError, match="float64"):  # the same values in another dtype are not equal
        check_batched_equals_reference(lambda c: batched, lambda c, k: batched[k].double(), [None])
    with pytest.raises(AssertionError, match="case 0, member 0"):  # outside the tolerance
        check_batched_equals_reference(lambda c: [1.0], lambda c, k: 1.0 + 2e-5, [None], rtol=1e-5)
    check_batched_equals_reference(lambda c: [1.0], lambda c, k: 1.0 + 5e-6, [None], rtol=1e-5)
    with pytest.raises(AssertionError, match=r"\[1\]"):  # nested sequences, item by item
        check_batched_equals_reference(lambda c: [(batched[0], 1)], lambda c, k: (batched[0], 2), [None])
    with pytest.raises(AssertionError, match="nothing was compared"):
        check_batched_equals_reference(lambda c: batched, lambda c, k: batched[k], [])


@pytest.mark.parametrize("arch", ["fcn:5,9,7,3", "cnn:2x8x8,c3k3m2,c4k3s2r,3", "cnn:1x6x6,c2k3p1,2"])
def test_the_plain_layer_loop_is_the_library_forward(arch: str) -> None:
    spec = parse_arch(arch, activation="tanh", bias=True)
    t = sample_net(spec, LawSpec(), make_generator(0), dtype=torch.float64)
    p = sample_net(spec, LawSpec(), make_generator(1), dtype=torch.float64)
    x = torch.randn(4, *((spec.input_dim,) if spec.kind == "fcn" else spec.input_shape), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(forward_one(t, x), t(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(gap_over_points(t, p, x), (p(x) - t(x)).norm(dim=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.97, 1.0])
def test_batched_layerwise_magnitude_masks_are_the_sorted_one_tensor_masks(fraction: float) -> None:
    g = torch.Generator().manual_seed(3)
    layers = [torch.randn(4, 7, 5, generator=g), torch.randn(4, 3, 7, generator=g)]  # 4 members, no ties

    def batched(ws: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        masks = mask_from_scores([w.abs() for w in ws], fraction, trial_dim=True)
        return [[m[k] for m in masks] for k in range(ws[0].shape[0])]

    def one_at_a_time(ws: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        return [magnitude_mask_one(w[k], fraction) for w in ws]

    assert check_batched_equals_reference(batched, one_at_a_time, [layers]) == 4
    assert mask_from_scores([layers[0][1].abs()], fraction)[0].equal(magnitude_mask_one(layers[0][1], fraction))
