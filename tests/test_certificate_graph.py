"""Certificates of ONNX graph models (format 4): ``prune --certificate`` on the graph path, ``certificate check``.

The model is built here: a residual CNN with a BatchNormalization folded into its first Conv (the chain reader
refuses it). Each forgery edits a private copy of a genuine certificate, staying inside the schema, and the check
has to reject it by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cliharness import run
from probprune.config import GapSpec, ProbPruneError, PruneSpec
from probprune.report.certificate import load_schema, read_certificate, validate_certificate
from probprune.runner.certificate_graph import (
    check_graph_certificate,
    graph_params_sha256,
    make_graph_certificate,
    read_graph_model,
)
from probprune.runner.graph import run_graph_prune, write_graph
from probprune.store import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")
Doc = dict[str, Any]


def _model(path: Path, scale: float = 1.0) -> Path:
    """x → Conv → BatchNormalization → Relu → Conv, + x → Relu → Flatten → Gemm (``scale`` × the Gemm weight)."""
    gen = np.random.default_rng(5)

    def init(name: str, shape: tuple[int, ...], s: float = 0.4, shift: float = 0.0) -> onnx.TensorProto:
        return numpy_helper.from_array((gen.standard_normal(shape) * s + shift).astype(np.float32), name)

    n = helper.make_node
    fc = init("fc.weight", (3, 2 * 4 * 4))
    fc = numpy_helper.from_array((numpy_helper.to_array(fc) * np.float32(scale)).astype(np.float32), "fc.weight")
    inits = [init("c1.weight", (3, 2, 3, 3)), init("bn.scale", (3,), 0.2, 1.0), init("bn.bias", (3,), 0.1),
             init("bn.mean", (3,), 0.1), numpy_helper.from_array(np.array([1.5, 0.8, 1.2], np.float32), "bn.var"),
             init("c2.weight", (2, 3, 3, 3)), fc, init("fc.bias", (3,))]
    nodes = [n("Conv", ["x", "c1.weight"], ["h1"], pads=[1, 1, 1, 1], name="c1"),
             n("BatchNormalization", ["h1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
             n("Relu", ["b1"], ["r1"], name="r1"),
             n("Conv", ["r1", "c2.weight"], ["h2"], pads=[1, 1, 1, 1], name="c2"),
             n("Add", ["h2", "x"], ["s"], name="skip"), n("Relu", ["s"], ["r2"], name="r2"),
             n("Flatten", ["r2"], ["f"], axis=1, name="flat"),
             n("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "residual-bn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


FAST = GapSpec(radius=1.5, n_restarts=2, n_steps=15)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A genuine graph certificate (magnitude, global, 40 %) made through the CLI, and its files."""
    d = tmp_path_factory.mktemp("graphcert")
    files = {"model": _model(d / "model.onnx"), "pruned": d / "pruned.onnx", "cert": d / "cert.json"}
    code, out, err = _run(["prune", "--weights", str(files["model"]), "--prune-fraction", "0.4", "--scope", "global",
                           "--radius", "1.5", "--out", str(files["pruned"]), "--certificate", str(files["cert"])])
    assert code == 0, err
    assert "certificate written to" in out
    return files


def _run(argv: list[str]) -> tuple[int, str, str]:
    class _Cap:  # cliharness.run wants capsys; a module fixture has none, so capture by hand
        def readouterr(self) -> tuple[str, str]:
            return "", ""
    import contextlib
    import io

    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code, _, _ = run(argv, _Cap())  # type: ignore[arg-type]
    return code, o.getvalue(), e.getvalue()


def _copy(made: dict[str, Path], tmp: Path) -> dict[str, Path]:
    return {k: Path(shutil.copyfile(p, tmp / p.name)) for k, p in made.items()}


def _edit(path: Path, change: Callable[[Doc], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        key: Any = int(last) if isinstance(node, list) else last
        node[key] = value(node[key]) if callable(value) else value
    return change


def _check(files: dict[str, Path], capsys: pytest.CaptureFixture[str], *, weights: str = "model",
           pruned: str = "pruned", as_json: bool = False) -> tuple[int, str, str]:
    return run(["certificate", "check", str(files["cert"]), "--weights", str(files[weights]), "--pruned",
                str(files[pruned]), *(["--json"] if as_json else [])], capsys)


def _error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_genuine_graph_certificate_is_confirmed(made: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    doc = read_certificate(files["cert"])
    assert doc["format"] == "probprune-certificate/4" and doc["model"] == "graph"
    assert doc["graph"]["batchnorm"] == {"nodes": 1, "pruned": "after folding",
                                         "statement": doc["graph"]["batchnorm"]["statement"]}
    assert "folded" in doc["graph"]["batchnorm"]["statement"]
    assert any("float64" in a for a in doc["gap"]["assumptions"])
    assert 0 < doc["gap"]["lower"] <= doc["gap"]["upper"]
    assert doc["total"]["sparsity"] == pytest.approx(0.4, abs=0.01)
    # the stated digests are those of the files and of the graphs read from them
    model = read_graph_model("weights", files["model"])
    assert doc["graph"]["params_sha256"]["target"] == graph_params_sha256(model.graph)
    code, out, err = _check(files, capsys, as_json=True)
    assert code == 0, err
    res = json.loads(out)
    assert res["confirmed"] is True and res["upper"] == pytest.approx(doc["gap"]["upper"], rel=1e-12)
    assert res["lower"] == pytest.approx(doc["gap"]["lower"], rel=1e-12)
    verified = set(res["verified"])
    assert {"target.sha256", "pruned.sha256", "graph", "prune", "layers", "total", "gap", "gap.witness",
            "config_hash"} <= verified
    assert {"gap.estimator", "target.path", "pruned.path"} <= {e["field"] for e in res["not_verified"]}


# field edited → words the one error line must hold
FORGERIES: list[tuple[str, Callable[[Doc], None], tuple[str, ...]]] = [
    ("upper-smaller", _set("gap.upper", lambda v: v * 0.5), ("field gap.upper",)),
    ("upper-larger", _set("gap.upper", lambda v: v * 1.5), ("field gap.upper",)),
    ("lower", _set("gap.lower", lambda v: v * 0.5), ("field gap.lower",)),
    ("witness", _set("gap.witness.0", lambda v: -v), ("field gap.lower",)),
    ("ratio", _set("gap.ratio", lambda v: v * 0.5), ("field gap.ratio",)),
    ("margin", _set("gap.rounding_margin", lambda v: v * 0.5), ("field gap.rounding_margin",)),
    ("term-error", _set("gap.terms.2.error", lambda v: v * 0.9 if v else 1.0), ("field gap.terms.2.error",)),
    ("term-reach", _set("gap.terms.0.reach_target", lambda v: v * 1.1), ("field gap.terms.0.reach_target",)),
    ("assumption", _set("gap.assumptions.2", "a float32 forward pass is covered"), ("field gap.assumptions.2",)),
    ("radius", _set("gap.radius", 2.0), ("field gap.",)),
    ("sparsity", _set("layers.0.sparsity", lambda v: v + 0.01), ("field layers.0.sparsity",)),
    ("zeros", _set("layers.1.zeros", lambda v: v - 1), ("field layers.1.zeros",)),
    ("total", _set("total.pruned", lambda v: v + 1), ("field total.pruned",)),
    ("scope", _set("prune.scope", "layerwise"), ("field prune",)),
    ("method", _set("prune.method", "random"), ("field prune",)),
    ("level", _set("prune.level_value", 0.3), ("field prune",)),
    ("seed", _set("seeds.seed", 9), ("field config_hash",)),
    ("target-sha", _set("target.sha256", "0" * 64), ("field target.sha256",)),
    ("pruned-sha", _set("pruned.sha256", "0" * 64), ("field pruned.sha256",)),
    ("params-sha", _set("graph.params_sha256.pruned", "0" * 64), ("field graph.params_sha256.pruned",)),
    ("batchnorm", _set("graph.batchnorm.nodes", 0), ("field graph.batchnorm.nodes",)),
    ("bn-statement", _set("graph.batchnorm.statement", "pruned before folding"), ("field graph.batchnorm",)),
    ("ops", _set("graph.ops", ["linear"]), ("field graph.ops",)),
    ("shape", _set("graph.input_shape", [2, 4, 5]), ("field graph.input_shape",)),
    ("config-hash", _set("config_hash", "0" * 16), ("field config_hash",)),
    ("budget", _set("gap.estimator.n_steps", 7), ("field config_hash",)),
]


@pytest.mark.parametrize("name, change, words", FORGERIES, ids=[n for n, _, _ in FORGERIES])
def test_a_forged_field_is_rejected_by_name(made: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], name: str,
                                            change: Callable[[Doc], None], words: tuple[str, ...]) -> None:
    files = _copy(made, tmp_path)
    _edit(files["cert"], change)
    line = _error_line(*_check(files, capsys)[::2])
    for w in words:
        assert w in line, line


def test_another_model_or_pruned_model_is_rejected(made: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    files["other"] = _model(tmp_path / "other.onnx", scale=1.01)  # same structure, other weights
    assert "field target.sha256" in _error_line(*_check(files, capsys, weights="other")[::2])
    files["other_pruned"] = tmp_path / "other_pruned.onnx"
    code, _, err = run(["prune", "--weights", str(files["model"]), "--prune-fraction", "0.3",
                        "--out", str(files["other_pruned"])], capsys)
    assert code == 0, err
    assert "field pruned.sha256" in _error_line(*_check(files, capsys, pruned="other_pruned")[::2])
    # the digests alone are not the whole check: with matching digests, the other target's numbers disagree
    (tmp_path / "again").mkdir()
    other = _copy(made, tmp_path / "again")
    other["model"] = files["other"]
    _edit(other["cert"], _set("target.sha256", file_sha256(files["other"])))
    line = _error_line(*_check(other, capsys)[::2])
    assert "field graph.params_sha256.target" in line or "field prune" in line, line


def test_a_non_finite_number_is_refused(made: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    text = files["cert"].read_text()
    doc = json.loads(text)
    files["cert"].write_text(text.replace(json.dumps(doc["gap"]["upper"]), "1e999", 1))
    line = _error_line(*_check(files, capsys)[::2])
    assert "field gap.upper" in line and "not a finite number" in line
    files["cert"].write_text(text.replace(json.dumps(doc["gap"]["upper"]), "NaN", 1))
    assert "not readable JSON" in _error_line(*_check(files, capsys)[::2])


def test_a_witness_outside_the_ball_is_refused(made: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)

    def outside(d: Doc) -> None:
        d["gap"]["witness"] = [v * 1.5 for v in d["gap"]["witness"]]
    _edit(files["cert"], outside)
    line = _error_line(*_check(files, capsys)[::2])
    assert "field gap.witness" in line and "outside the ball" in line


def test_a_format_3_checker_refuses_a_graph_certificate(made: dict[str, Path]) -> None:
    import jsonschema

    doc = read_certificate(made["cert"])
    with pytest.raises(jsonschema.ValidationError):  # the format-3 schema: format const and unknown keys
        jsonschema.validate(doc, load_schema())
    relabelled = {**doc, "format": "probprune-certificate/3"}
    with pytest.raises(ProbPruneError, match="schema probprune-certificate/3"):
        validate_certificate(relabelled)


def test_the_check_needs_both_onnx_files(made: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    code, _, err = run(["certificate", "check", str(files["cert"]), "--weights", str(files["model"])], capsys)
    assert "--pruned" in _error_line(code, err)


def test_the_graph_path_refuses_a_certificate_without_out(made: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.json"
    code, _, err = run(["prune", "--weights", str(made["model"]), "--prune-fraction", "0.4", "--certificate",
                        str(cert)], capsys)
    assert "give --out" in _error_line(code, err) and not cert.exists()


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


def test_every_field_is_rederived_or_listed(made: dict[str, Path]) -> None:
    """Change any one value of a genuine graph certificate: rejected, or listed as not verified."""
    genuine = read_certificate(made["cert"])
    accepted: dict[str, list[str]] = {}
    checked = 0
    for path, value in _leaves(genuine):
        if path.startswith("gap.witness.") and not path.endswith(".0"):
            continue  # one witness entry stands for all (each changes the gap at the witness)
        new = _perturbed(value)
        if new is None:
            continue
        doc = json.loads(json.dumps(genuine))
        _set(path, new)(doc)
        checked += 1
        try:
            validate_certificate(doc)
            res = check_graph_certificate(doc, made["model"], made["pruned"])
        except ProbPruneError:
            continue
        accepted[path] = [f for f, _ in res.not_verified]
    assert checked > 60
    uncovered = [p for p, listed in accepted.items() if not any(p == f or p.startswith(f + ".") for f in listed)]
    assert not uncovered, accepted
    assert {"gap.estimator.n_evals", "pruned.path"} <= set(accepted)


def test_the_python_maker_matches_the_cli(made: dict[str, Path], tmp_path: Path) -> None:
    model = read_graph_model("weights", made["model"])
    spec = PruneSpec(prune_fraction=0.4, scope="global")
    res = run_graph_prune(model, spec, 0)
    out = str(tmp_path / "p.onnx")
    write_graph(res, out)
    doc = make_graph_certificate(model, res, spec, out, FAST)
    validate_certificate(doc)
    assert check_graph_certificate(doc, made["model"], out).upper == doc["gap"]["upper"]
    # the CLI's pruned file is the same model: the same parameter digest
    assert doc["graph"]["params_sha256"] == read_certificate(made["cert"])["graph"]["params_sha256"]


def test_an_onnx_chain_gets_a_graph_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = np.random.default_rng(2)
    inits = [numpy_helper.from_array(gen.standard_normal(s).astype(np.float32), nm)
             for nm, s in (("l1.weight", (5, 4)), ("l2.weight", (3, 5)))]
    n = helper.make_node
    nodes = [n("Gemm", ["x", "l1.weight"], ["h"], transB=1, name="l1"), n("Relu", ["h"], ["r"], name="r"),
             n("Gemm", ["r", "l2.weight"], ["y"], transB=1, name="l2")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = tmp_path / "mlp.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    files = {"model": model, "pruned": tmp_path / "p.onnx", "cert": tmp_path / "c.json"}
    code, _, err = run(["prune", "--weights", str(model), "--prune-fraction", "0.5", "--out", str(files["pruned"]),
                        "--certificate", str(files["cert"])], capsys)
    assert code == 0, err
    doc = read_certificate(files["cert"])
    assert doc["model"] == "graph" and doc["graph"]["batchnorm"]["nodes"] == 0
    code, out, err = _check(files, capsys)
    assert code == 0 and "certificate confirmed" in out, err


def test_the_human_report_names_the_graph_kind(made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["certificate", "show", str(made["cert"])], capsys)
    assert code == 0, err
    doc = read_certificate(made["cert"])
    assert "model: graph" in out and "BatchNormalization" in out and "after folding" in out
    assert f"{doc['gap']['upper']:.6g}" in out and "float64" in out
    assert "--pruned" in out


def test_the_chain_checker_points_to_the_graph_checker(made: dict[str, Path]) -> None:
    from probprune.runner.certificate import check_certificate

    with pytest.raises(ProbPruneError, match="field model: 'graph'.*check_graph_certificate"):
        check_certificate(read_certificate(made["cert"]), made["pruned"])
