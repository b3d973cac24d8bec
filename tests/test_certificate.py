"""Certificates: made by ``prune --certificate`` / the Python API, checked against the weights, rejected when wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from cliharness import run
from probprune.cli import main
from probprune.config import GapSpec, ProbPruneError, PruneJob, PruneSpec, parse_arch, parse_law
from probprune.report.certificate import FORMAT, load_schema, read_certificate, validate_certificate, write_certificate
from probprune.runner import run_prune
from probprune.runner.certificate import check_certificate, file_sha256, make_certificate

ARCH = "fcn:8,32,32,4"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run(args, capsys)


def run_quiet(args: list[str]) -> int:
    """``main(args)`` outside capsys (module fixtures): the exit code."""
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0



@pytest.fixture(scope="module")
def made_once(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sampled target pruned by magnitude, with its certificate, made once through the CLI."""
    d = tmp_path_factory.mktemp("made")
    files = {"cert": d / "cert.json", "pruned": d / "pruned.safetensors", "target": d / "target.safetensors"}
    rc = run_quiet(["prune", "--arch", ARCH, "--law", "uniform:K=2.449", "--relative-threshold", "0.3", "--seed", "3",
                    "--out", str(files["pruned"]), "--save-target", str(files["target"]), "--certificate",
                    str(files["cert"]), "--radius", "2.0", "--delta", "0.1", "--json"])
    assert rc == 0
    return files


@pytest.fixture()
def made(made_once: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the made files (tests edit the certificate)."""
    out = {}
    for k, p in made_once.items():
        out[k] = tmp_path / p.name
        shutil.copyfile(p, out[k])
    return out


def edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_schema_is_valid_and_the_formats_agree() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["format"]["const"] == FORMAT


def test_certificate_contents(made: dict[str, Path]) -> None:
    doc = read_certificate(made["cert"])
    assert doc["format"] == FORMAT and doc["arch"] == ARCH and doc["law"].startswith("uniform:K=2.449")
    assert doc["prune"] == {"method": "magnitude", "scope": "layerwise", "level_name": "relative_threshold",
                            "level_value": 0.3, "rescale": False}
    assert doc["gap"]["radius"] == 2.0
    assert 0 < doc["gap"]["lower"] <= doc["gap"]["upper"]
    assert doc["gap"]["ratio"] == pytest.approx(doc["gap"]["upper"] / doc["gap"]["lower"])
    assert doc["probabilistic"]["delta"] == 0.1
    assert doc["probabilistic"]["eps"] is None or doc["probabilistic"]["eps"] > 0
    assert doc["seeds"]["seed"] == 3
    assert doc["pruned"]["sha256"] == file_sha256(made["pruned"])
    assert doc["target"]["source"] == "sampled" and doc["target"]["path"].endswith("target.safetensors")
    assert doc["target"]["sha256"] == file_sha256(made["target"])
    assert [layer["name"] for layer in doc["layers"]] == ["0.weight", "2.weight", "4.weight"]
    assert sum(layer["pruned"] for layer in doc["layers"]) == doc["total"]["pruned"] > 0
    for layer in doc["layers"]:
        assert layer["sparsity"] == pytest.approx(layer["pruned"] / layer["size"])
        assert "prune_fraction" not in layer  # the measured share is the sparsity; prune_fraction is the rule
        assert layer["zeros"] == layer["pruned"]  # sampled uniform weights are never exactly 0
    assert len(doc["config_hash"]) == 16 and doc["versions"]["torch"]
    assert "created" not in doc  # no timestamp: same command and seed, same bytes
    assert len(doc["gap"]["witness"]) == 8
    assert sum(v * v for v in doc["gap"]["witness"]) ** 0.5 <= doc["gap"]["radius"]
    assert doc["gap"]["estimator"]["n_evals"] > 0


def test_check_confirms_with_and_without_target(made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    upper = json.loads(made["cert"].read_text())["gap"]["upper"]
    rc, out, err = run_cli(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"]), "--json"],
                           capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["confirmed"] and doc["target_source"] == "resampled"
    assert doc["upper"] == pytest.approx(upper, rel=1e-9)
    rc, out, err = run_cli(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"]),
                            "--target", str(made["target"])], capsys)
    assert rc == 0, err
    assert "certificate confirmed" in out and "target resampled" in out
    # the given target file is checked against the re-sampled one
    rc, out, err = run_cli(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"]),
                            "--target", str(made["target"]), "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert {"target", "target.sha256", "seeds.seed", "gap.witness", "prune", "layers"} <= set(doc["verified"])
    assert {"gap.estimator", "target.path", "pruned.path"} == {e["field"] for e in doc["not_verified"]}


def _rejected(args: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    rc, out, err = run_cli(args, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0]
    return lines[0]


def test_a_wrong_upper_bound_is_rejected(made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    edit(made["cert"], lambda d: d["gap"].update(upper=d["gap"]["upper"] / 2))
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"])], capsys,
              "rejected", "certified upper bound")


def test_a_certificate_of_hash_rule_1_is_rejected_with_the_reason(made: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from probprune.runner.certificate import _resolved

    d = json.loads(made["cert"].read_text())
    pr = PruneSpec(method=d["prune"]["method"], scope=d["prune"]["scope"], rescale=d["prune"]["rescale"],
                   **{d["prune"]["level_name"]: d["prune"]["level_value"]})
    est = {k: v for k, v in d["gap"]["estimator"].items() if k != "n_evals"}
    resolved = _resolved(d["arch"], d["activation"], d["bias"], d["law"], None, d["seeds"]["seed"], pr,
                         GapSpec(radius=d["gap"]["radius"], **est), d["probabilistic"]["delta"],
                         d["gap"]["norm_method"])
    rule1 = hashlib.sha256(json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert rule1 != d["config_hash"]
    edit(made["cert"], lambda doc: doc.update(config_hash=rule1))  # as made before issue 14
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"])], capsys,
              "field config_hash", "hash rule 1")


def test_other_weights_are_rejected(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.safetensors"
    rc, _, err = run_cli(["prune", "--arch", ARCH, "--law", "uniform:K=2.449", "--relative-threshold", "0.5",
                          "--seed", "3", "--out", str(other)], capsys)
    assert rc == 0, err
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(other)], capsys, "rejected", "zero weights")


def test_another_target_is_rejected(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t2 = tmp_path / "t2.safetensors"
    rc, _, err = run_cli(["prune", "--arch", ARCH, "--law", "uniform:K=2.449", "--p", "0.1", "--method", "random",
                          "--seed", "4", "--save-target", str(t2)], capsys)
    assert rc == 0, err
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"]), "--target", str(t2)],
              capsys, "rejected", "not the certified target")
    # without the digest to compare, re-sampling the target gives the wrong target away
    edit(made["cert"], lambda d: d["target"].update(sha256=None))
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"]), "--target", str(t2)],
              capsys, "rejected", "field target:", "is not the target re-sampled")


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("gap"), "(document)"),
    (lambda d: d["gap"].update(upper="big"), "gap.upper"),
    (lambda d: d["gap"].update(lower=-1.0), "gap.lower"),
    (lambda d: d.update(format="other/9"), "format"),
    (lambda d: d["layers"][0].update(sparsity=1.5), "layers.0.sparsity"),
    (lambda d: d["gap"].update(lower=d["gap"]["upper"] * 2), "gap.lower"),
    (lambda d: d.update(extra=1), "(document)"),
])
def test_schema_violations_are_rejected(made: dict[str, Path], capsys: pytest.CaptureFixture[str], change: Any,
                                        field: str) -> None:
    edit(made["cert"], change)
    line = _rejected(["certificate", "check", str(made["cert"]), "--weights", str(made["pruned"])], capsys)
    assert f"field {field}" in line


def test_unreadable_inputs(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _rejected(["certificate", "check", str(bad), "--weights", str(made["pruned"])], capsys, "not readable JSON")
    _rejected(["certificate", "check", str(tmp_path / "none.json"), "--weights", str(made["pruned"])], capsys,
              "file not found")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    _rejected(["certificate", "check", str(deep), "--weights", str(made["pruned"])], capsys, "nested too deeply")
    nan = tmp_path / "nan.json"
    nan.write_text(made["cert"].read_text().replace('"upper": ', '"upper": NaN, "x": ', 1))
    _rejected(["certificate", "check", str(nan), "--weights", str(made["pruned"])], capsys, "NaN", "not readable")
    _rejected(["certificate", "check", str(made["cert"]), "--weights", str(tmp_path / "none.safetensors")], capsys,
              "none.safetensors")


def test_a_file_target_needs_target(tmp_path: Path, made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cert, pruned = tmp_path / "c2.json", tmp_path / "p2.safetensors"
    rc, _, err = run_cli(["prune", "--arch", ARCH, "--weights", str(made["target"]), "--prune-fraction", "0.4",
                          "--scope", "global", "--out", str(pruned), "--certificate", str(cert)], capsys)
    assert rc == 0, err
    doc = read_certificate(cert)
    assert doc["law"] is None and doc["probabilistic"] is None and doc["target"]["source"] == "file"
    assert doc["total"]["pruned"] == round(0.4 * doc["total"]["size"])
    _rejected(["certificate", "check", str(cert), "--weights", str(pruned)], capsys, "--target")
    rc, out, err = run_cli(["certificate", "check", str(cert), "--weights", str(pruned), "--target",
                            str(made["target"])], capsys)
    assert rc == 0, err


def test_prune_certificate_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.safetensors"
    _rejected(["prune", "--arch", ARCH, "--law", "uniform", "--p", "0.1", "--method", "random", "--out", str(out),
               "--certificate", str(tmp_path / "c.txt")], capsys, "certificate=")
    _rejected(["prune", "--arch", ARCH, "--law", "uniform", "--p", "0.1", "--method", "random", "--out", str(out),
               "--certificate", str(tmp_path / "c.json"), "--delta", "1.5"], capsys, "delta=")
    assert list(tmp_path.iterdir()) == []


def test_python_api_random_rescaled(tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    job = PruneJob(net=parse_arch(ARCH), prune=PruneSpec(method="random", p=0.2, rescale=True),
                   law=parse_law("uniform"), seed=1, out=str(out))
    doc = make_certificate(run_prune(job), job, gap=GapSpec(n_points=256))
    write_certificate(tmp_path / "c.json", doc)
    back = read_certificate(tmp_path / "c.json")
    assert back == doc
    res = check_certificate(back, out)
    assert res.upper == pytest.approx(doc["gap"]["upper"], rel=1e-9) and res.target_source == "resampled"
    bad = dict(doc, gap={**doc["gap"], "radius": 0.0})
    with pytest.raises(ProbPruneError, match="gap.radius"):
        write_certificate(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ProbPruneError):
        validate_certificate([])


def test_same_command_and_seed_give_the_same_certificate_bytes(tmp_path: Path) -> None:
    # two separate processes (own hash seeds, own torch state), the same command in two folders
    args = ["prune", "--arch", ARCH, "--law", "uniform:K=2.449", "--method", "random", "--p", "0.3", "--rescale",
            "--seed", "11", "--out", "pruned.safetensors", "--save-target", "target.safetensors",
            "--certificate", "cert.json", "--json"]
    texts = []
    for i, hash_seed in enumerate(("1", "2")):
        d = tmp_path / f"run{i}"
        d.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run([sys.executable, "-m", "probprune", *args], cwd=d, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        texts.append((d / "cert.json").read_bytes())
    assert texts[0] == texts[1]
    doc = json.loads(texts[0])
    assert "created" not in doc and doc["pruned"]["path"] == "pruned.safetensors"
    # keys sorted, floats as repr: the file is its own canonical form
    assert texts[0].decode() == json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_certified_upper_covers_the_float32_forward_pass(tmp_path: Path) -> None:
    # the certificate computes its bound on float64 copies of the weights, but the user runs the float32 networks:
    # the stated upper bound must carry the float32 rounding margin, not the (far smaller) float64 one
    from probprune.bounds import certified_gap_bound

    out = tmp_path / "p.safetensors"
    job = PruneJob(net=parse_arch("fcn:16,256,256,4"), prune=PruneSpec(method="magnitude", prune_fraction=0.3),
                   law=parse_law("uniform"), seed=2, out=str(out))
    outcome = run_prune(job)
    assert outcome.target.dtype == torch.float32
    doc = make_certificate(outcome, job, gap=GapSpec(n_points=64))
    own = certified_gap_bound(outcome.target, outcome.pruned, radius=doc["gap"]["radius"])
    as64 = certified_gap_bound(outcome.target.to(dtype=torch.float64), outcome.pruned.to(dtype=torch.float64),
                               radius=doc["gap"]["radius"])
    assert float(own.value) > float(as64.value) * (1 + 1e-6)  # the float32 margin is visible at this width
    # the same float32 margin (the norms themselves may differ in the last digits: float64 copies vs float32 inputs)
    assert doc["gap"]["upper"] > float(as64.value) * (1 + 1e-6)
    assert doc["gap"]["upper"] == pytest.approx(float(own.value), rel=1e-6)


def test_make_certificate_computes_the_certified_bound_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the certificate's float64 CPU bound is handed to the sandwich, which then computes none of its own
    import probprune.runner.certificate as rc
    import probprune.runner.gap as rg

    calls: list[float] = []
    real = rc.certified_gap_bound

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(kw["radius"])
        return real(*args, **kw)

    monkeypatch.setattr(rc, "certified_gap_bound", counted)
    monkeypatch.setattr(rg, "certified_gap_bound", counted)
    job = PruneJob(net=parse_arch(ARCH), prune=PruneSpec(relative_threshold=0.3), law=parse_law("uniform"), seed=4,
                   out=str(tmp_path / "p.safetensors"))
    doc = make_certificate(run_prune(job), job, gap=GapSpec(radius=1.5, n_points=64))
    assert calls == [1.5]
    assert doc["gap"]["lower"] <= doc["gap"]["upper"]
