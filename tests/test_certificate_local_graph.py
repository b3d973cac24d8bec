"""Local certificates of graph models (format 4, ``model: graph``): ``certify --certificate`` on an ONNX residual
net, ``certificate check`` re-derives every ball from the two ONNX files, every forged field is caught."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import probprune as pp
from cliharness import run
from probprune.config import ProbPruneError
from probprune.nets.graph import Graph, Node, activation
from probprune.nets.onnx_graph import load_onnx_graph, save_onnx_graph
from probprune.report.certificate import read_certificate, render_certificate, validate_certificate

pytestmark = pytest.mark.usefixtures("one_thread")
Doc = dict[str, Any]
FAST = ["--n-restarts", "2", "--n-steps", "10"]


def _residual(seed: int) -> Graph:
    """conv → relu → conv (+ skip) → relu → avgpool → flatten → linear (no chain form)."""
    g = torch.Generator().manual_seed(seed)
    pad = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}

    def t(*shape: int, s: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    return Graph([Node("c1", "conv", ("input",), pad, {"weight": t(2, 1, 3, 3, s=0.5), "bias": t(2, s=0.1)}),
                  Node("r1", "act", ("c1",), {"act": activation("relu")}),
                  Node("c2", "conv", ("r1",), pad, {"weight": t(2, 2, 3, 3, s=0.3)}),
                  Node("sum", "add", ("c2", "r1")),
                  Node("r2", "act", ("sum",), {"act": activation("relu")}),
                  Node("pool", "avgpool", ("r2",), {"dims": 2, "kernel": (2, 2), "stride": (2, 2),
                                                    "padding": (0, 0), "count_include_pad": True}),
                  Node("flat", "reshape", ("pool",), {"shape": (8,)}),
                  Node("fc", "linear", ("flat",), params={"weight": t(3, 8, s=0.5), "bias": t(3, s=0.1)})],
                 (1, 4, 4))


def _pruned(target: Graph, cut: float) -> Graph:
    p = target.parameters()
    return target.with_parameters({k: p[k] * (p[k].abs() > cut) for k in target.prunable()})


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Target, pruned, 3 inputs [3, 1, 4, 4] in [0, 1] (.npy) and the certificate of `certify --certificate`."""
    d = tmp_path_factory.mktemp("glocal")
    target = _residual(0)
    files = {"model": d / "t.onnx", "pruned": d / "p.onnx", "other": d / "o.onnx", "data": d / "x.npy",
             "cert": d / "cert.json"}
    save_onnx_graph(target, files["model"], dtype=torch.float64)
    save_onnx_graph(_pruned(target, 0.15), files["pruned"], dtype=torch.float64)
    save_onnx_graph(_pruned(target, 0.25), files["other"], dtype=torch.float64)
    x = np.random.default_rng(3).uniform(0.0, 1.0, (3, 1, 4, 4))
    x[:, 0, 0, 0] = 0.01  # the clip box cuts every ball: a forged box changes the bounds
    np.save(files["data"], x)
    from probprune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(["certify", "--weights", str(files["model"]), "--pruned", str(files["pruned"]), "--data",
                  str(files["data"]), "--n-points", "3", "--radius", "0.05", "--norm", "linf", "--clip", "0,1",
                  *FAST, "--radii", "0.1", "--certificate", str(files["cert"])])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    assert code == 0, err.getvalue()
    return files


def _copy(made: dict[str, Path], tmp: Path) -> dict[str, Path]:
    return {k: Path(shutil.copyfile(p, tmp / p.name)) for k, p in made.items()}


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        key: Any = int(last) if isinstance(node, list) else last
        node[key] = value(node[key]) if callable(value) else value
    return change


def _check(files: dict[str, Path], capsys: pytest.CaptureFixture[str], pruned: str = "pruned",
           as_json: bool = False) -> tuple[int, str, str]:
    return run(["certificate", "check", str(files["cert"]), "--weights", str(files["model"]), "--pruned",
                str(files[pruned]), *(["--json"] if as_json else [])], capsys)


def _error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_genuine_graph_certificate_is_confirmed(made: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    doc = read_certificate(files["cert"])
    assert doc["format"] == "probprune-certificate/4" and doc["model"] == "graph" and len(doc["local"]) == 3
    assert doc["graph"]["input_shape"] == [1, 4, 4] and "add" in doc["graph"]["ops"] and "arch" not in doc
    for i, ball in enumerate(doc["local"]):
        assert ball["centre"]["index"] == i and ball["norm"] == "linf" and ball["box"] == [0.0, 1.0]
        assert 0 <= ball["lower"] <= ball["upper"] and len(ball["witness"]) == 16
        assert ball["upper"] == min(v for v in (ball["upper_differential"], ball["upper_layerwise"]) if v is not None)
        assert isinstance(ball["certified_agree"], bool)
    code, out, err = _check(files, capsys, as_json=True)
    assert code == 0, err
    res = json.loads(out)
    assert res["confirmed"] and {"graph", "local.0", "local.2", "target.sha256", "model"} <= set(res["verified"])
    assert "local certificate" in render_certificate(doc) and "graph" in render_certificate(doc)


def _smaller_upper(d: Doc) -> None:  # still above the lower bound: only the re-derivation catches it
    ball = d["local"][1]
    ball["upper"] = ball["lower"] + 0.5 * (ball["upper"] - ball["lower"])


FORGERIES: list[tuple[str, Callable[[Doc], None], tuple[str, ...]]] = [
    ("upper-smaller", _smaller_upper, ("field local.1.upper",)),
    ("upper-differential", _set("local.0.upper_differential", lambda v: v * 0.9), ("field local.0.upper_diff",)),
    ("upper-layerwise", _set("local.0.upper_layerwise", lambda v: v * 0.9), ("field local.0.upper_layerwise",)),
    ("layerwise-radius", _set("local.2.layerwise_radius", lambda v: v * 0.9), ("field local.2.layerwise_radius",)),
    ("method", _set("local.0.method", "layerwise"), ("field local.0.method",)),
    ("lower", _set("local.2.lower", lambda v: v * 0.5), ("field local.2.lower",)),
    ("witness", _set("local.0.witness.5", lambda v: min(1.0, v + 1e-3)), ("field local.0.",)),
    ("centre-index", _set("local.0.centre.index", 1), ("field local.0.",)),
    ("centre-sha", _set("local.0.centre.sha256", "0" * 64), ("field local.0.centre.sha256",)),
    ("larger-radius", _set("local.1.radius", 0.08), ("field local.1.",)),
    ("norm", _set("local.1.norm", "l2"), ("field local.1.",)),
    ("box", _set("local.2.box", [-1.0, 2.0]), ("field local.2.",)),
    ("agreement", _set("local.0.certified_agree", lambda v: not v), ("field local.0.certified_agree",)),
    ("params-sha", _set("graph.params_sha256.pruned", "0" * 64), ("field graph",)),
    ("ops", _set("graph.ops", ["linear"]), ("field graph",)),
    ("target-sha", _set("target.sha256", "0" * 64), ("field target.sha256",)),
    ("pruned-sha", _set("pruned.sha256", "0" * 64), ("field pruned.sha256",)),
    ("chain-keys", _set("arch", "fcn:16,3"), ("field (document)",)),
    ("model-chain", _set("model", "chain"), ("field (document)",)),
]


@pytest.mark.parametrize("name, change, words", FORGERIES, ids=[n for n, _, _ in FORGERIES])
def test_a_forged_graph_ball_is_rejected_by_name(made: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], name: str,
                                                 change: Callable[[Doc], None], words: tuple[str, ...]) -> None:
    files = _copy(made, tmp_path)
    doc = json.loads(files["cert"].read_text())
    change(doc)
    files["cert"].write_text(json.dumps(doc))
    line = _error_line(*_check(files, capsys)[::2])
    for w in words:
        assert w in line, line


def test_another_pruned_model_is_rejected(made: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    line = _error_line(*_check(files, capsys, pruned="other")[::2])
    assert "field pruned.sha256" in line
    doc = read_certificate(files["cert"])  # the digest stripped: the parameters still name the other model
    doc["pruned"]["sha256"] = None
    with pytest.raises(ProbPruneError, match="field graph"):
        pp.check_local_certificate(doc, files["model"], files["other"])


def _graphs(made: dict[str, Path]) -> tuple[Graph, Graph]:
    return load_onnx_graph(made["model"])[0], load_onnx_graph(made["pruned"])[0]


def test_python_graph_certificates(made: dict[str, Path]) -> None:
    target, pruned = _graphs(made)
    centres = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    centres[1] = 0.2
    doc = pp.make_local_certificate(target, pruned, centres, radius=0.3, norm="l2", target_path=str(made["model"]),
                                    pruned_path=str(made["pruned"]), n_restarts=1, n_steps=5)
    validate_certificate(doc)
    assert doc["model"] == "graph" and doc["local"][0]["centre"] == [0.5] * 16
    res = pp.check_local_certificate(doc, made["model"], made["pruned"])
    assert res.upper == max(b["upper"] for b in doc["local"])
    for path, new in (("local.1.centre.2", 0.6), ("local.0.radius", 0.4), ("local.1.upper", 0.0)):
        forged = copy.deepcopy(doc)
        _set(path, new)(forged)
        with pytest.raises(ProbPruneError, match=rf"field {'.'.join(path.split('.')[:2])}\."):
            pp.check_local_certificate(forged, made["model"], made["pruned"])
    with pytest.raises(ProbPruneError, match="both be nets or both be graphs"):
        from probprune.config import LawSpec, NetSpec
        from probprune.sampling import sample_net

        pp.make_local_certificate(target, sample_net(NetSpec(widths=(16, 3)), LawSpec(), torch.Generator()),
                                  centres, radius=0.1)
    with pytest.raises(ProbPruneError, match="centres"):
        pp.make_local_certificate(target, pruned, torch.zeros(2, 15), radius=0.1)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}.{i}")
    else:
        yield path, node


def _perturbed(v: Any) -> Any:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 0.5 if v != 0 else 0.25
    if isinstance(v, str):
        return v[:-1] + ("1" if v[-1:] == "0" else "0")
    return None


def test_every_graph_field_is_rederived_or_listed(made: dict[str, Path]) -> None:
    """Change any one value of a genuine one-ball graph certificate: rejected, or listed as not verified."""
    target, pruned = _graphs(made)
    centre = torch.full((1, 16), 0.5, dtype=torch.float64)
    centre[0, 0] = 0.01  # the box binds: changing it changes the bound (or leaves the centre outside)
    genuine = pp.make_local_certificate(target, pruned, centre, radius=0.05,
                                        norm="linf", clip=(0.0, 1.0), target_path=str(made["model"]),
                                        pruned_path=str(made["pruned"]), n_restarts=1, n_steps=5)
    accepted: dict[str, list[str]] = {}
    checked = 0
    for path, value in _leaves(genuine):
        vector = next((k for k in (".witness.", ".centre.") if k in path), None)
        if vector is not None and not path.endswith(f"{vector}0"):
            continue  # one entry per vector stands for all
        new = _perturbed(value)
        if new is None:
            continue
        doc = json.loads(json.dumps(genuine))
        _set(path, new)(doc)
        checked += 1
        try:
            validate_certificate(doc)
            res = pp.check_local_certificate(doc, made["model"], made["pruned"])
        except ProbPruneError:
            continue
        accepted[path] = [f for f, _ in res.not_verified]
    assert checked > 20
    uncovered = [p for p, listed in accepted.items() if not any(p == f or p.startswith(f + ".") for f in listed)]
    assert not uncovered, accepted
    assert {"seeds.seed", "estimator.n_steps", "pruned.path"} <= set(accepted)


def test_graph_certificate_with_halfwidth_is_one_line(made: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "h.npy", np.full((3, 1, 4, 4), 0.02))
    code, out, err = run(["certify", "--weights", str(made["model"]), "--pruned", str(made["pruned"]), "--data",
                          str(made["data"]), "--n-points", "3", "--norm", "linf", "--halfwidth",
                          str(tmp_path / "h.npy"), *FAST, "--certificate", str(tmp_path / "c.json")], capsys)
    assert "halfwidth" in _error_line(code, err) and not (tmp_path / "c.json").exists()
