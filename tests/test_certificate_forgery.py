"""``certificate check`` re-derives every number a certificate states: each hand-edited field is rejected by name.

Certificates are made once per module through the CLI; each test edits a private copy of the JSON
(staying inside the schema, so the check itself has to catch the edit) and expects exit code 2 with
one line ``error: … field <name> …`` that gives the stated and the recomputed value.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cliharness import run
from probprune.cli import main
from probprune.config import ProbPruneError
from probprune.report.certificate import read_certificate, validate_certificate
from probprune.runner.certificate import check_certificate

ARCH = "fcn:8,32,32,4"
Doc = dict[str, Any]

# the certificates: (extra prune arguments, whether the target is saved)
KINDS: dict[str, list[str]] = {
    # magnitude, relative threshold ρ = 0.3, sampled target, ε(δ) applies
    "threshold": ["--law", "uniform:K=2.449", "--relative-threshold", "0.3", "--radius", "2.0", "--delta", "0.1"],
    # random, p = 0.2, survivors rescaled
    "random": ["--law", "uniform:K=2.449", "--method", "random", "--p", "0.2", "--rescale"],
    # magnitude, exact share removed per layer
    "fraction": ["--law", "uniform:K=2.449", "--prune-fraction", "0.4"],
}



def _quiet(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def made_once(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """One certificate of each kind (pruned file, saved target, certificate), made through the CLI."""
    out: dict[str, dict[str, Path]] = {}
    for kind, extra in KINDS.items():
        d = tmp_path_factory.mktemp(kind)
        files = {"cert": d / "cert.json", "pruned": d / "pruned.safetensors", "target": d / "target.safetensors"}
        rc = _quiet(["prune", "--arch", ARCH, "--seed", "3", "--out", str(files["pruned"]), "--save-target",
                     str(files["target"]), "--certificate", str(files["cert"]), *extra])
        assert rc == 0, kind
        out[kind] = files
    # a user's file as the target: magnitude pruning, global scope
    d = tmp_path_factory.mktemp("file")
    files = {"cert": d / "cert.json", "pruned": d / "pruned.safetensors", "target": out["threshold"]["target"]}
    rc = _quiet(["prune", "--arch", ARCH, "--weights", str(files["target"]), "--prune-fraction", "0.3", "--scope",
                 "global", "--out", str(files["pruned"]), "--certificate", str(files["cert"])])
    assert rc == 0
    out["file"] = files
    return out


def _copy(made_once: dict[str, dict[str, Path]], kind: str, tmp_path: Path) -> dict[str, Path]:
    return {k: Path(shutil.copyfile(p, tmp_path / p.name)) for k, p in made_once[kind].items()}


def _edit(path: Path, change: Callable[[Doc], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _check(files: dict[str, Path], capsys: pytest.CaptureFixture[str], *, target: bool = False,
           as_json: bool = False) -> tuple[int, str, str]:
    args = ["certificate", "check", str(files["cert"]), "--weights", str(files["pruned"])]
    if target:
        args += ["--target", str(files["target"])]
    if as_json:
        args.append("--json")
    return run(args, capsys)


def _error_line(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert lines and lines[-1].startswith("error: ") and "rejected" in lines[-1], err
    return lines[-1]


def _scale(section: str, key: str, factor: float) -> Callable[[Doc], None]:
    def change(d: Doc) -> None:
        d[section][key] *= factor
    return change


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """Set the field at dotted ``path`` to ``value`` (or to ``value(old)`` when callable)."""
    def change(d: Doc) -> None:
        *head, last = path.split(".")
        node: Any = d
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        key: Any = int(last) if isinstance(node, list) else last
        node[key] = value(node[key]) if callable(value) else value
    return change


# (certificate kind, forged field, the edit, the words the error line must hold)
FORGERIES: list[tuple[str, str, Callable[[Doc], None], tuple[str, ...]]] = [
    # the probabilistic bound ε(δ), recomputed from the recorded setting
    ("threshold", "eps", _scale("probabilistic", "eps", 0.5), ("field probabilistic.eps",)),
    ("threshold", "delta", _set("probabilistic.delta", 0.3), ("field probabilistic.eps", "probabilistic.delta=0.3")),
    ("threshold", "theorem", _set("probabilistic.theorem", "§4 Theorem O"), ("field probabilistic.theorem",)),
    # the empirical lower bound: one forward pass at the witness
    ("threshold", "lower", _scale("gap", "lower", 0.5), ("field gap.lower",)),
    ("threshold", "witness", _set("gap.witness.0", lambda v: -v), ("field gap.lower",)),
    # the certified upper bound, its per-layer norms and counts, the ratio
    ("threshold", "upper", _scale("gap", "upper", 0.5), ("field gap.upper",)),
    ("threshold", "upper-up", _scale("gap", "upper", 1.5), ("field gap.upper",)),
    ("threshold", "ratio", _scale("gap", "ratio", 0.5), ("field gap.ratio",)),
    ("threshold", "norm_diff", _set("gap.layers.1.norm_diff.value", lambda v: v * 0.9),
     ("field gap.layers.1.norm_diff.value",)),
    ("threshold", "norm_target", _set("gap.layers.0.norm_target.value", lambda v: v * 1.1),
     ("field gap.layers.0.norm_target.value",)),
    ("threshold", "norm_pruned", _set("gap.layers.2.norm_pruned.value", lambda v: v * 1.1),
     ("field gap.layers.2.norm_pruned.value",)),
    ("threshold", "norm_exact", _set("gap.layers.0.norm_diff.exact", lambda v: not v),
     ("field gap.layers.0.norm_diff.exact",)),
    ("threshold", "norm_method", _set("gap.layers.0.norm_diff.method", "frobenius-holder"),
     ("field gap.layers.0.norm_diff.method",)),
    ("threshold", "layer_error", _set("gap.layers.1.error", lambda v: v * 0.9), ("field gap.layers.1.error",)),
    ("threshold", "n_exact", _set("gap.n_exact", lambda v: v - 1), ("field gap.n_exact",)),
    ("threshold", "n_norms", _set("gap.n_norms", lambda v: v + 1), ("field gap.n_norms",)),
    ("threshold", "exact_norms", _set("gap.exact_norms", lambda v: not v), ("field gap.exact_norms",)),
    # pruning statistics, from the re-run pruning and the weights
    ("threshold", "sparsity", _set("layers.0.sparsity", lambda v: v + 0.01),
     ("field layers.0.sparsity",)),
    ("threshold", "pruned", _set("layers.1.pruned", lambda v: v - 1), ("field layers.1.pruned",)),
    ("threshold", "zeros", _set("layers.2.zeros", lambda v: v - 1), ("field layers.2.zeros", "zero weights")),
    ("threshold", "size", _set("layers.0.size", lambda v: v + 1), ("field layers.0.size",)),
    ("threshold", "threshold", _set("layers.0.threshold", lambda v: v * 1.01), ("field layers.0.threshold",)),
    ("threshold", "layer_name", _set("layers.0.name", "9.weight"), ("field layers.0.name",)),
    ("threshold", "total_pruned", _set("total.pruned", lambda v: v + 1), ("field total.pruned",)),
    ("threshold", "total_fraction", _set("total.sparsity", lambda v: v * 0.9),
     ("field total.sparsity",)),
    # method / scope / level / rescale / seed / law: the recorded pruning, re-run, must give the weights
    ("threshold", "level_value", _set("prune.level_value", 0.35), ("field prune:", "prune.level_value=0.35")),
    ("threshold", "level_name", _set("prune.level_name", "threshold"), ("field prune:", "prune.level_name=")),
    ("threshold", "method-invalid", _set("prune.method", "random"), ("field prune:", "prune.method='random'")),
    ("fraction", "method", _set("prune.method", "random"), ("field prune.method", "'random'", "'magnitude'")),
    ("fraction", "scope", _set("prune.scope", "global"), ("field prune.scope", "'global'", "'layerwise'")),
    ("fraction", "fraction_level", _set("prune.level_value", 0.5), ("field prune:", "prune.level_value=0.5")),
    ("random", "rescale", _set("prune.rescale", False), ("field prune.rescale", "False", "True")),
    ("random", "p", _set("prune.level_value", 0.3), ("field prune:", "prune.level_value=0.3")),
    ("random", "seed", _set("seeds.seed", 4), ("field prune:", "seeds.seed=4")),
    ("threshold", "seed", _set("seeds.seed", 4), ("field prune:", "seeds.seed=4")),
    ("threshold", "law", _set("law", "uniform:K=3.0"), ("field prune:", "law='uniform:K=3.0'")),
    # digests and the config hash
    ("threshold", "pruned_sha", _set("pruned.sha256", "0" * 64), ("field pruned.sha256",)),
    ("threshold", "target_sha", _set("target.sha256", "0" * 64), ("field target.sha256",)),
    ("threshold", "config_hash", _set("config_hash", "0" * 16), ("field config_hash",)),
    ("threshold", "estimator", _set("gap.estimator.n_points", 7), ("field config_hash",)),
]


@pytest.mark.parametrize("kind, name, change, words", FORGERIES, ids=[f"{k}-{n}" for k, n, _, _ in FORGERIES])
def test_a_forged_field_is_rejected_by_name(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], kind: str, name: str,
                                            change: Callable[[Doc], None], words: tuple[str, ...]) -> None:
    files = _copy(made_once, kind, tmp_path)
    rc, _, err = _check(files, capsys)
    assert rc == 0, err  # the genuine certificate is confirmed ...
    _edit(files["cert"], change)
    line = _error_line(*_check(files, capsys)[::2])  # ... the forged one is not
    for w in words:
        assert w in line, line
    if "field prune:" not in words:  # a rule that is not reproduced is named with all its settings
        assert "stated" in line and "recomputed" in line, line


@pytest.mark.parametrize("kind", ["threshold", "random", "fraction"])
def test_a_genuine_certificate_is_confirmed(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], kind: str) -> None:
    files = _copy(made_once, kind, tmp_path)
    doc = json.loads(files["cert"].read_text())
    for target in (False, True):
        rc, out, err = _check(files, capsys, target=target, as_json=True)
        assert rc == 0, err
        res = json.loads(out)
        assert res["confirmed"] is True
        assert res["lower"] == pytest.approx(doc["gap"]["lower"], rel=1e-12)
        assert res["upper"] == pytest.approx(doc["gap"]["upper"], rel=1e-12)
        verified = set(res["verified"])
        for f in ("prune", "layers", "total", "gap", "gap.witness", "probabilistic", "config_hash", "pruned.sha256",
                  "target.sha256", "seeds.seed"):
            assert f in verified, f
        # what cannot be re-derived is listed, and is not among the verified fields
        not_verified = {e["field"] for e in res["not_verified"]}
        assert {"gap.estimator", "target.path", "pruned.path"} <= not_verified
        assert not verified & not_verified


def test_a_file_target(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "file", tmp_path)
    rc, out, err = _check(files, capsys, target=True, as_json=True)
    assert rc == 0, err
    res = json.loads(out)
    assert res["target_source"] == "file" and "prune" in res["verified"]
    # magnitude pruning of a file: the seed drives only the witness search, and says so
    assert "seeds.seed" in {e["field"] for e in res["not_verified"]}
    for change, words in [(_set("prune.scope", "layerwise"), ("field prune.scope",)),
                          (_set("prune.level_value", 0.25), ("field prune:",)),
                          (_set("total.pruned", lambda v: v + 2), ("field total.pruned",))]:
        fresh = _copy(made_once, "file", tmp_path)
        _edit(fresh["cert"], change)
        line = _error_line(*_check(fresh, capsys, target=True)[::2])
        for w in words:
            assert w in line, line


def test_a_witness_outside_the_ball_is_refused(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)
    doc = json.loads(files["cert"].read_text())
    x = torch.tensor(doc["gap"]["witness"], dtype=torch.float64)
    assert float(x.norm()) <= doc["gap"]["radius"]

    def outside(d: Doc) -> None:
        # a point outside the ball where the gap is larger: the stated lower bound is made to match it
        d["gap"]["witness"] = [v * 1.5 for v in d["gap"]["witness"]]
        d["gap"]["lower"] = d["gap"]["lower"] * 1.5
    _edit(files["cert"], outside)
    line = _error_line(*_check(files, capsys)[::2])
    assert "field gap.witness" in line and "outside the ball" in line
    # a witness of the wrong size is refused too
    files = _copy(made_once, "threshold", tmp_path)
    _edit(files["cert"], _set("gap.witness", lambda w: w[:-1]))
    assert "field gap.witness" in _error_line(*_check(files, capsys)[::2])


def test_settings_that_change_the_network_are_rejected(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # the activation, the radius and the norm method define what the numbers are about: edited, they disagree
    for change in (_set("activation", "tanh"), _set("gap.radius", 1.5), _set("gap.norm_method", "frobenius-holder")):
        files = _copy(made_once, "threshold", tmp_path)
        _edit(files["cert"], change)
        line = _error_line(*_check(files, capsys)[::2])
        assert "field gap." in line or "field config_hash" in line, line


def test_the_json_verdict_of_a_rejection(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)
    stated = json.loads(files["cert"].read_text())["layers"][1]["pruned"] - 1
    _edit(files["cert"], _set("layers.1.pruned", stated))
    rc, out, err = _check(files, capsys, as_json=True)
    assert "field layers.1.pruned" in _error_line(rc, err)
    verdict = json.loads(out)
    assert verdict["confirmed"] is False and verdict["field"] == "layers.1.pruned"
    assert verdict["stated"] == stated and verdict["recomputed"] == stated + 1


def test_what_cannot_be_rederived_is_listed_not_confirmed(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)

    def change(d: Doc) -> None:
        d["versions"]["torch"] = "0.0.1"
        d["gap"]["estimator"]["n_evals"] += 1
        d["target"]["path"] = "elsewhere.safetensors"
    _edit(files["cert"], change)
    rc, out, err = _check(files, capsys, as_json=True)
    assert rc == 0, err
    res = json.loads(out)
    listed = {e["field"]: e["reason"] for e in res["not_verified"]}
    assert "versions" in listed and "0.0.1" in listed["versions"]
    assert {"gap.estimator", "target.path"} <= set(listed)
    assert "versions" not in res["verified"]
    rc, out, err = _check(files, capsys)
    assert rc == 0 and "not verified" in out and "versions" in out


def test_a_device_that_is_not_here_is_refused(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)
    _edit(files["cert"], _set("device", "xla:0"))
    rc, _, err = _check(files, capsys)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ") and "device='xla:0'" in err


def test_an_old_certificate_without_a_witness_is_refused(made_once: dict[str, dict[str, Path]], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)

    def to_v1(d: Doc) -> None:
        d["format"] = "probprune-certificate/1"
        d["created"] = "2026-01-01T00:00:00Z"
        d["gap"]["n_evals"] = d["gap"].pop("estimator")["n_evals"]
        del d["gap"]["witness"]
    _edit(files["cert"], to_v1)
    rc, _, err = _check(files, capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("error: ")
    assert "field format" in line and "without a witness" in line and "probprune-certificate/3" in line


def test_a_format_2_certificate_is_refused_with_a_one_line_message(made_once: dict[str, dict[str, Path]],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = _copy(made_once, "threshold", tmp_path)

    def to_v2(d: Doc) -> None:  # format 2 stored the measured sparsity under the key prune_fraction
        d["format"] = "probprune-certificate/2"
        for section in (*d["layers"], d["total"]):
            section["prune_fraction"] = section.pop("sparsity")
    _edit(files["cert"], to_v2)
    rc, out, err = _check(files, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and "confirmed" not in out and len(lines) == 1 and lines[0].startswith("error: ")
    line = lines[0]
    assert "field format" in line and "'probprune-certificate/2'" in line and "prune_fraction" in line
    assert "remake it with `probprune prune" in line and "probprune-certificate/3" in line
    with pytest.raises(ProbPruneError, match="probprune-certificate/2"):
        validate_certificate(json.loads(files["cert"].read_text()))


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


@pytest.mark.parametrize("kind", ["threshold", "random"])
def test_every_field_is_rederived_or_listed(made_once: dict[str, dict[str, Path]], kind: str) -> None:
    """Change any one value of a genuine certificate: the check rejects it, or lists the field as not verified."""
    files = made_once[kind]
    genuine = read_certificate(files["cert"])
    accepted: dict[str, list[str]] = {}
    checked = 0
    for path, value in _leaves(genuine):
        new = _perturbed(value)
        if new is None:
            continue
        doc = json.loads(json.dumps(genuine))
        _set(path, new)(doc)
        checked += 1
        try:
            validate_certificate(doc)
            res = check_certificate(doc, files["pruned"])
        except ProbPruneError:
            continue
        accepted[path] = [f for f, _ in res.not_verified]
    assert checked > 60
    # accepted only where the confirmation says it does not cover the changed field
    uncovered = [p for p, listed in accepted.items() if not any(p == f or p.startswith(f + ".") for f in listed)]
    assert not uncovered, accepted
    assert {"versions.torch", "gap.estimator.n_evals", "pruned.path"} <= set(accepted)
