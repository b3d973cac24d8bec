"""Pruning on graphs (probprune.graphmasks): masks by parameter name equal torch.nn.utils.prune's."""

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune as tprune

from probprune.config import ProbPruneError
from probprune.graphmasks import graph_masks, prune_graph
from probprune.nets.fx import graph_from_module

pytestmark = pytest.mark.usefixtures("one_thread")


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.GELU(), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # nn.Module initialisation draws from the global RNG; fixed here for the test
    return Small().eval()


WEIGHTS = ["features.0.weight", "head.1.weight", "head.3.weight"]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_layerwise_magnitude_equals_torch_l1_unstructured(fraction: float) -> None:
    m = model(0)
    g = graph_from_module(m, torch.randn(2, 2, 7, 7))
    assert list(g.prunable()) == WEIGHTS
    masks = graph_masks(g, fraction, "magnitude", "layerwise")
    for name in WEIGHTS:
        mod = m.get_submodule(name.rsplit(".", 1)[0])
        tprune.l1_unstructured(mod, "weight", amount=fraction)
        assert torch.equal(masks[name], mod.get_buffer("weight_mask").bool()), name


@pytest.mark.parametrize("fraction", [0.2, 0.7])
def test_global_magnitude_equals_torch_global_unstructured(fraction: float) -> None:
    m = model(1)
    g = graph_from_module(m, torch.randn(2, 2, 7, 7))
    masks = graph_masks(g, fraction, "magnitude", "global")
    mods = [(m.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in WEIGHTS]
    tprune.global_unstructured(mods, pruning_method=tprune.L1Unstructured, amount=fraction)
    for name, (mod, _) in zip(WEIGHTS, mods):
        assert torch.equal(masks[name], mod.get_buffer("weight_mask").bool()), name
    total = sum(int(v.numel()) for v in masks.values())
    assert sum(int((~v).sum()) for v in masks.values()) == round(fraction * total)


def test_pruned_graph_equals_the_torch_pruned_module() -> None:
    m = model(2)
    x = torch.randn(3, 2, 7, 7)
    f, _ = prune_graph(graph_from_module(m, x), 0.6)
    for name in WEIGHTS:
        mod = m.get_submodule(name.rsplit(".", 1)[0])
        tprune.l1_unstructured(mod, "weight", amount=0.6)
        tprune.remove(mod, "weight")
    g2 = graph_from_module(m, x)
    for k, v in g2.parameters().items():
        assert torch.equal(f.parameters()[k], v), k


def test_random_counts_seeds_and_prior() -> None:
    g = graph_from_module(model(3), torch.randn(2, 2, 7, 7))
    a = graph_masks(g, 0.3, "random", generator=torch.Generator().manual_seed(0))
    b = graph_masks(g, 0.3, "random", generator=torch.Generator().manual_seed(0))
    c = graph_masks(g, 0.3, "random", generator=torch.Generator().manual_seed(1))
    for n in WEIGHTS:
        assert int((~a[n]).sum()) == round(0.3 * a[n].numel())
        assert torch.equal(a[n], b[n])
    assert any(not torch.equal(a[n], c[n]) for n in WEIGHTS)
    prior = {"head.1.weight": a["head.1.weight"]}
    d = graph_masks(g, 0.5, "magnitude", names=["head.1.weight"], prior=prior)
    assert list(d) == ["head.1.weight"]
    assert not bool((d["head.1.weight"] & ~prior["head.1.weight"]).any())  # removed stays removed
    assert int((~d["head.1.weight"]).sum()) == round(0.5 * prior["head.1.weight"].numel())


def test_refusals() -> None:
    g = graph_from_module(model(4), torch.randn(2, 2, 7, 7))
    with pytest.raises(ProbPruneError, match="Generator"):
        graph_masks(g, 0.5, "random")
    with pytest.raises(ProbPruneError, match="not a prunable weight"):
        graph_masks(g, 0.5, names=["head.1.bias"])
    with pytest.raises(ProbPruneError, match="method"):
        graph_masks(g, 0.5, "snip")  # type: ignore[arg-type]
    with pytest.raises(ProbPruneError, match="prune_fraction"):
        graph_masks(g, 1.5)
    with pytest.raises(ProbPruneError, match="prior"):
        graph_masks(g, 0.5, names=["head.1.weight"], prior={"head.3.weight": torch.ones(3, 8, dtype=torch.bool)})
