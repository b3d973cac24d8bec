"""Local certificates (format 4, ``model: chain``): ``certify --certificate``, ``certificate check`` re-derives them.

Each ball states a centre (inline, or a row of an ``.npy`` named by digest), a norm, a radius, a box, the certified
upper bound (differential or layerwise, both stated), a witnessed lower bound and the certified-agreement verdict;
every edited field is caught.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cliharness import run
from probprune.config import LawSpec, NetSpec, ProbPruneError, PruneSpec
from probprune.masks import prune
from probprune.report.certificate import load_schema, read_certificate, validate_certificate
from probprune.rng import make_generator
from probprune.runner.certificate_local import check_local_certificate, make_local_certificate
from probprune.runner.prune import save_net
from probprune.sampling import sample_net

pytestmark = pytest.mark.usefixtures("one_thread")
Doc = dict[str, Any]
ARCH = "fcn:6,16,16,3"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Target, pruned (30 % magnitude), 4 inputs in [0, 1] (.npy), and the certificate of `certify --certificate`."""
    d = tmp_path_factory.mktemp("local")
    target = sample_net(NetSpec(widths=(6, 16, 16, 3), bias=True), LawSpec(), make_generator(0))
    pruned = prune(target, PruneSpec(prune_fraction=0.3)).model
    files = {"model": d / "target.safetensors", "pruned": d / "pruned.safetensors", "data": d / "x.npy",
             "cert": d / "cert.json"}
    save_net(target, str(files["model"]))
    save_net(pruned, str(files["pruned"]))
    np.save(files["data"], np.random.default_rng(3).uniform(0.0, 1.0, (4, 6)))
    import contextlib
    import io

    from probprune.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(["certify", "--weights", str(files["model"]), "--pruned", str(files["pruned"]), "--arch", ARCH,
                  "--bias", "--data", str(files["data"]), "--n-points", "4", "--radius", "0.05", "--norm", "linf",
                  "--clip", "0,1", "--n-restarts", "2", "--n-steps", "10", "--certificate", str(files["cert"])])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    assert code == 0, err.getvalue()
    return files


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


def _check(files: dict[str, Path], capsys: pytest.CaptureFixture[str], as_json: bool = False) -> tuple[int, str, str]:
    return run(["certificate", "check", str(files["cert"]), "--weights", str(files["model"]), "--pruned",
                str(files["pruned"]), *(["--json"] if as_json else [])], capsys)


def _error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_genuine_local_certificate_is_confirmed(made: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    doc = read_certificate(files["cert"])
    assert doc["format"] == "probprune-certificate/4" and doc["model"] == "chain" and len(doc["local"]) == 4
    for i, ball in enumerate(doc["local"]):
        assert ball["centre"]["index"] == i and ball["centre"]["path"] == str(made["data"])
        assert ball["norm"] == "linf" and ball["radius"] == 0.05 and ball["box"] == [0.0, 1.0]
        assert 0 <= ball["lower"] <= ball["upper"]
        assert ball["upper"] == min(v for v in (ball["upper_differential"], ball["upper_layerwise"]) if v is not None)
        assert isinstance(ball["certified_agree"], bool)
    code, out, err = _check(files, capsys, as_json=True)
    assert code == 0, err
    res = json.loads(out)
    verified = set(res["verified"])
    assert res["confirmed"] and {"local", "local.0", "local.3", "params_sha256", "target.sha256"} <= verified
    code, out, err = _check(files, capsys)
    assert code == 0 and "4 local balls re-derived" in out, err


def _smaller_upper(d: Doc) -> None:  # still above the lower bound: only the re-derivation catches it
    ball = d["local"][1]
    ball["upper"] = ball["lower"] + 0.5 * (ball["upper"] - ball["lower"])


def _move_centre(d: Doc) -> None:
    d["local"][0]["centre"] = [float(v) for v in np.load(d["local"][0]["centre"]["path"])[0] + 0.01]


FORGERIES: list[tuple[str, Callable[[Doc], None], tuple[str, ...]]] = [
    ("upper-smaller", _smaller_upper, ("field local.1.upper",)),
    ("upper-below-lower", _set("local.1.upper", 0.0), ("field local.1.lower=", "exceeds")),
    ("upper-differential", _set("local.0.upper_differential", lambda v: v * 0.9), ("field local.0.upper_diff",)),
    ("upper-layerwise", _set("local.0.upper_layerwise", lambda v: v * 0.9), ("field local.0.upper_layerwise",)),
    ("layerwise-radius", _set("local.2.layerwise_radius", lambda v: v * 0.9), ("field local.2.layerwise_radius",)),
    ("method", _set("local.0.method", "layerwise"), ("field local.0.method",)),
    ("lower", _set("local.3.lower", lambda v: v * 0.5), ("field local.3.lower",)),
    ("witness", _set("local.0.witness.0", lambda v: min(1.0, v + 1e-3)), ("field local.0.",)),
    ("moved-centre-index", _set("local.0.centre.index", 1), ("field local.0.",)),
    ("moved-centre-inline", _move_centre, ("field local.0.",)),
    ("centre-sha", _set("local.0.centre.sha256", "0" * 64), ("field local.0.centre.sha256",)),
    ("larger-radius", _set("local.1.radius", 0.08), ("field local.1.",)),
    ("norm", _set("local.1.norm", "l2"), ("field local.1.",)),
    ("box", _set("local.2.box", [-1.0, 2.0]), ("field local.2.",)),
    ("agreement", _set("local.0.certified_agree", lambda v: not v), ("field local.0.certified_agree",)),
    ("params-sha", _set("params_sha256.pruned", "0" * 64), ("field params_sha256.pruned",)),
    ("target-sha", _set("target.sha256", "0" * 64), ("field target.sha256",)),
    ("activation", _set("activation", "tanh"), ("field local.0",)),
]


@pytest.mark.parametrize("name, change, words", FORGERIES, ids=[n for n, _, _ in FORGERIES])
def test_a_forged_ball_is_rejected_by_name(made: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], name: str,
                                           change: Callable[[Doc], None], words: tuple[str, ...]) -> None:
    files = _copy(made, tmp_path)
    _edit(files["cert"], change)
    line = _error_line(*_check(files, capsys)[::2])
    for w in words:
        assert w in line, line


def test_a_witness_outside_the_ball_is_refused(made: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    doc = json.loads(files["cert"].read_text())
    ball = doc["local"][0]
    centre = np.load(made["data"])[0]
    ball["witness"] = [float(c + 0.06 if c < 0.5 else c - 0.06) for c in centre]  # ℓ∞ distance 0.06 > 0.05
    files["cert"].write_text(json.dumps(doc))
    line = _error_line(*_check(files, capsys)[::2])
    assert "field local.0.witness" in line and "outside the ball" in line


def test_a_missing_centres_file_is_named(made: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made, tmp_path)
    _edit(files["cert"], _set("local.0.centre.path", str(tmp_path / "gone.npy")))
    assert "field local.0.centre.path" in _error_line(*_check(files, capsys)[::2])


def test_a_format_3_checker_refuses_a_local_certificate(made: dict[str, Path]) -> None:
    import jsonschema

    doc = read_certificate(made["cert"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema())
    with pytest.raises(ProbPruneError, match="schema probprune-certificate/3"):
        validate_certificate({**doc, "format": "probprune-certificate/3"})


def test_python_certificates_with_inline_centres(made: dict[str, Path]) -> None:
    from probprune.config import parse_arch
    from probprune.runner.prune import load_net

    spec = parse_arch(ARCH, bias=True)
    target, pruned = load_net(spec, str(made["model"])), load_net(spec, str(made["pruned"]))
    centres = torch.zeros(2, 6, dtype=torch.float64)
    centres[1] += 0.5
    doc = make_local_certificate(target, pruned, centres, radius=0.3, norm="l2", target_path=str(made["model"]),
                                 pruned_path=str(made["pruned"]), n_restarts=1, n_steps=5)
    validate_certificate(doc)
    assert doc["local"][0]["centre"] == [0.0] * 6 and doc["local"][1]["box"] is None
    res = check_local_certificate(doc, made["model"], made["pruned"])
    assert res.upper == max(b["upper"] for b in doc["local"])
    for path, new in (("local.1.centre.2", 0.6), ("local.0.radius", 0.4), ("local.1.upper", 0.0)):
        forged = copy.deepcopy(doc)
        _set(path, new)(forged)
        with pytest.raises(ProbPruneError, match=rf"field {'.'.join(path.split('.')[:2])}\."):  # that ball
            check_local_certificate(forged, made["model"], made["pruned"])
    # the upper bound is a bound: no input of the ball found by the witness search exceeds it
    for ball in doc["local"]:
        assert ball["lower"] <= ball["upper"]


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
    """Change any one value of a genuine local certificate: rejected, or listed as not verified."""
    genuine = read_certificate(made["cert"])
    accepted: dict[str, list[str]] = {}
    checked = 0
    for path, value in _leaves(genuine):
        if ".witness." in path and not path.endswith(".witness.0"):
            continue  # one witness entry per ball stands for all
        new = _perturbed(value)
        if new is None:
            continue
        doc = json.loads(json.dumps(genuine))
        _set(path, new)(doc)
        checked += 1
        try:
            validate_certificate(doc)
            res = check_local_certificate(doc, made["model"], made["pruned"])
        except ProbPruneError:
            continue
        accepted[path] = [f for f, _ in res.not_verified]
    assert checked > 50
    uncovered = [p for p, listed in accepted.items() if not any(p == f or p.startswith(f + ".") for f in listed)]
    assert not uncovered, accepted
    assert {"seeds.seed", "estimator.n_steps", "pruned.path"} <= set(accepted)


def test_the_human_report_has_a_table_of_the_balls(made: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["certificate", "show", str(made["cert"])], capsys)
    assert code == 0, err
    doc = read_certificate(made["cert"])
    rows = [line for line in out.splitlines() if line.startswith("| ") and "row " in line]
    assert len(rows) == len(doc["local"]) == 4
    for line, ball in zip(rows, doc["local"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2:5] == ["linf", "0.05", "[0, 1]"]
        assert cells[5] == f"{ball['lower']:.6g}" and cells[6] == f"{ball['upper']:.6g}"
        assert cells[8] == ("yes" if ball["certified_agree"] else "no")
    assert "local certificate" in out


def test_certify_refuses_a_bad_certificate_path(made: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--weights", str(made["model"]), "--arch", ARCH, "--bias", "--data", str(made["data"]), "--n-points",
              "1", "--radius", "0.05"]
    base = ["certify", "--pruned", str(made["pruned"]), *common]
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for args, words in (([*base, "--certificate", str(tmp_path / "c.txt")], "must end in .json"),
                        (["certify", *common, "--certificate", str(tmp_path / "c.json"), "--solve", "max-prune"],
                         "not taken with --solve"),
                        ([*base, "--certificate", str(folder)], f"certificate={str(folder)!r}")):
        code, _, err = run(args, capsys)
        assert words in _error_line(code, err)
    assert list(tmp_path.iterdir()) == [folder]  # nothing written


def test_the_human_report_of_a_chain_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.json"
    code, _, err = run(["prune", "--arch", "fcn:4,8,3", "--law", "uniform", "--prune-fraction", "0.5", "--out",
                        str(tmp_path / "p.safetensors"), "--certificate", str(cert)], capsys)
    assert code == 0, err
    code, out, err = run(["certificate", "show", str(cert)], capsys)
    assert code == 0, err
    doc = read_certificate(cert)
    assert "probprune-certificate/3" in out and "model: chain fcn:4,8,3 (relu)" in out
    assert f"{doc['gap']['upper']:.6g}" in out and "Local balls" not in out and "[--target" in out
