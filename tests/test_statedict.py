"""Safetensors checkpoints under a model's own parameter names (issue 15): mapped exactly, or refused.

Every model is the user's own ``nn.Module`` written here; its ``state_dict()`` is saved with
``safetensors.torch.save_file`` as a user would. Reading it back as the architecture must give the module's
outputs (which also checks the order of the layers), and the pruned model is written under the same names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cliharness import run
from probprune.config import ProbPruneError, parse_arch
from probprune.runner.prune import load_net, save_net
from probprune.runner.statedict import own_names, renamed


def _save(module: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


def _same_outputs(module: nn.Module, arch: str, path: Path, shape: tuple[int, ...], bias: bool = True) -> None:
    net = load_net(parse_arch(arch, bias=bias), str(path))
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = module(x)
    got = net(x.reshape(16, -1) if net.spec.kind == "fcn" else x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


class TwoBlocks(nn.Module):
    """A user's MLP: named sub-modules in two containers (``features.*``, ``classifier.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 6),
                                      nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


def test_sequential_with_flatten_relu_dropout_maps_by_index(tmp_path: Path) -> None:
    module = _seeded(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8),
                                   nn.ReLU(), nn.Linear(8, 3)))
    path = _save(module, tmp_path / "seq.safetensors")
    spec = parse_arch("fcn:12,8,8,3", bias=True)
    assert own_names(spec, load_file(str(path))) == {
        "0.weight": "1.weight", "0.bias": "1.bias", "2.weight": "4.weight", "2.bias": "4.bias",
        "4.weight": "6.weight", "4.bias": "6.bias"}
    _same_outputs(module, "fcn:12,8,8,3", path, (3, 4))


def test_names_in_two_containers_map_by_shape(tmp_path: Path) -> None:
    module = _seeded(TwoBlocks())
    path = _save(module, tmp_path / "two.safetensors")
    _same_outputs(module, "fcn:12,8,6,3", path, (12,))


def test_integer_indices_order_layers_of_equal_shape(tmp_path: Path) -> None:
    """Indices 8 and 10 (as text "10" < "8"): the two 6x6 layers are taken in the module's order."""
    module = _seeded(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), *[nn.Identity() for _ in range(6)], nn.Linear(6, 6),
                                   nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)))
    path = _save(module, tmp_path / "deep.safetensors")
    names = own_names(parse_arch("fcn:4,6,6,6,3", bias=True), load_file(str(path)))
    assert names is not None and [names[k] for k in ("2.weight", "4.weight")] == ["8.weight", "10.weight"]
    _same_outputs(module, "fcn:4,6,6,6,3", path, (4,))


def test_conv_net_with_pool_and_flatten(tmp_path: Path) -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Sequential(nn.Linear(36, 5), nn.ReLU(), nn.Linear(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))  # type: ignore[no-any-return]

    module = _seeded(Small())
    path = _save(module, tmp_path / "cnn.safetensors")
    _same_outputs(module, "cnn:1x8x8,c4k3p0m2,5,3", path, (1, 8, 8))


def test_probprune_names_read_as_before(tmp_path: Path) -> None:
    module = _seeded(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)))
    path = _save(module, tmp_path / "ours.safetensors")
    assert own_names(parse_arch("fcn:5,4,2", bias=True), load_file(str(path))) is None
    _same_outputs(module, "fcn:5,4,2", path, (5,))


class Unordered(nn.Module):
    """Two 8x8 layers whose names (``mid_a``, ``mid_b``) do not give their order."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid_b, self.mid_a, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), \
            nn.Linear(8, 3)


@pytest.mark.parametrize("module, arch, fragment", [
    (Unordered(), "fcn:4,8,8,8,3", "'mid_a.weight', 'mid_b.weight'"),
    (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), "fcn:4,8,3",
     "'1.num_batches_tracked': not the weight or bias"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3)), "fcn:4,8,8,3", "has 3 layers"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3)), "fcn:4,8,2", "layer 1 (2.weight)"),
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3)), "fcn:8,4,3", "layer 0 (0.weight)"),
])
def test_refusals_name_the_tensors(module: nn.Module, arch: str, fragment: str, tmp_path: Path) -> None:
    path = _save(module, tmp_path / "m.safetensors")
    with pytest.raises(ProbPruneError, match="weights=") as e:
        load_net(parse_arch(arch, bias=True), str(path))
    assert fragment.replace("'", "") in str(e.value).replace("'", ""), str(e.value)


def test_bias_mismatch_is_refused(tmp_path: Path) -> None:
    path = _save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3)), tmp_path / "b.safetensors")
    with pytest.raises(ProbPruneError, match=r"tensor '0.bias': the architecture has no biases \(give --bias\)"):
        load_net(parse_arch("fcn:4,8,3", bias=False), str(path))
    no_bias = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3, bias=False))
    path = _save(no_bias, tmp_path / "n.safetensors")
    with pytest.raises(ProbPruneError, match="has no bias"):
        load_net(parse_arch("fcn:4,8,3", bias=True), str(path))
    load_net(parse_arch("fcn:4,8,3", bias=False), str(path))  # as it is: read


def test_renamed_refuses_a_name_outside_the_map() -> None:
    with pytest.raises(ProbPruneError, match="'x'"):
        renamed({"x": torch.zeros(1)}, {"y": "z"})


def test_cli_prune_writes_the_models_own_names_and_gap_reads_them(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Round trip: the user's names in, the same names out; the pruned file loads into the user's module
    (strict), its zeros are the pruned count, and it equals pruning the same net saved under probprune's names."""
    module = _seeded(TwoBlocks())
    own, out = _save(module, tmp_path / "own.safetensors"), tmp_path / "pruned.safetensors"
    arch = ["--arch", "fcn:12,8,6,3", "--bias"]
    code, text, err = run(["prune", "--weights", str(own), *arch, "--prune-fraction", "0.5", "--scope", "global",
                           "--out", str(out), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(text)
    written = load_file(str(out))
    assert set(written) == set(module.state_dict())
    again = TwoBlocks()
    again.load_state_dict(written, strict=True)
    zeros = sum(int((v == 0).sum()) for k, v in written.items() if k.endswith(".weight"))
    assert zeros == doc["stats"]["total"]["pruned"] > 0
    ours, ours_out = tmp_path / "ours.safetensors", tmp_path / "ours-pruned.safetensors"
    save_net(load_net(parse_arch("fcn:12,8,6,3", bias=True), str(own)), str(ours))
    code, text, err = run(["prune", "--weights", str(ours), *arch, "--prune-fraction", "0.5", "--scope", "global",
                           "--out", str(ours_out), "--json"], capsys)
    assert code == 0, err
    assert json.loads(text)["stats"] == doc["stats"]
    names = own_names(parse_arch("fcn:12,8,6,3", bias=True), load_file(str(own)))
    assert names is not None
    theirs = load_file(str(ours_out))
    assert all(torch.equal(written[names[k]], v) for k, v in theirs.items())
    code, text, err = run(["gap", "--weights", str(own), "--pruned", str(out), *arch, "--n-points", "64",
                           "--n-restarts", "2", "--n-steps", "5", "--json"], capsys)
    assert code == 0, err
    sw = json.loads(text)["sandwich"]
    assert 0 < sw["lower"] <= sw["upper"]


def test_cli_refusal_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _save(Unordered(), tmp_path / "u.safetensors")
    out = tmp_path / "p.safetensors"
    code, text, err = run(["prune", "--weights", str(path), "--arch", "fcn:4,8,8,8,3", "--bias",
                           "--prune-fraction", "0.5", "--out", str(out)], capsys)
    assert code == 2 and "sparsity" not in text and not out.exists()  # at most the header line, no result
    assert err.startswith("error: weights=") and err.count("\n") == 1 and "more than one way" in err
