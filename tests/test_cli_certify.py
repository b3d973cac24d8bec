"""`probprune certify`: local certified gaps and certified agreement per input; JSON/CSV; one-line errors."""

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cliharness import run
from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.differential import certified_agreement, differential_bound
from probprune.config import BallSpec, PruneSpec, parse_arch
from probprune.data import as_net, dataset_status, init_module
from probprune.masks import prune
from probprune.nets import Net
from probprune.nets.onnx import load_onnx, save_onnx
from probprune.runner.certify import layerwise_radius, write_rows
from probprune.runner.prune import save_net

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "fcn:6,24,24,4"
FAST = ["--n-restarts", "2", "--n-steps", "20"]


def _pair(arch: str, seed: int = 0) -> tuple[Net, Net]:
    spec = parse_arch(arch, bias=True)
    target = as_net(init_module(spec, torch.Generator().manual_seed(seed)), spec)
    return target, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    target, pruned = _pair(ARCH)
    paths = {"t_onnx": tmp_path / "t.onnx", "p_onnx": tmp_path / "p.onnx",
             "t_st": tmp_path / "t.safetensors", "p_st": tmp_path / "p.safetensors",
             "x": tmp_path / "x.npy", "y": tmp_path / "y.npy"}
    save_onnx(target, paths["t_onnx"])
    save_onnx(pruned, paths["p_onnx"])
    save_net(target, str(paths["t_st"]))
    save_net(pruned, str(paths["p_st"]))
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(12, 6)).astype(np.float32)
    np.save(paths["x"], x)
    with torch.no_grad():
        y = target(torch.from_numpy(x)).argmax(-1).numpy()  # type: ignore[union-attr]
    y[:3] = (y[:3] + 1) % 4  # three wrong labels: accuracy of F is 9/12
    np.save(paths["y"], y.astype(np.int64))
    return paths


def _certify(files: dict[str, Path], *extra: str, onnx: bool = True, norm: str = "linf",
             radius: str = "0.05") -> list[str]:
    models = ["--weights", str(files["t_onnx"]), "--pruned", str(files["p_onnx"])] if onnx else \
        ["--weights", str(files["t_st"]), "--pruned", str(files["p_st"]), "--arch", ARCH, "--bias"]
    return ["certify", *models, "--data", str(files["x"]), "--n-points", "12", "--norm", norm,
            "--radius", radius, *FAST, *extra]


@pytest.mark.parametrize("norm,radius,clip", [("linf", "0.05", "0,1"), ("l2", "0.2", None), ("linf", "0.3", None)])
def test_rows_are_sound_and_match_the_api(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                          norm: str, radius: str, clip: str | None) -> None:
    extra = ["--json", "--labels", str(files["y"])] + (["--clip", clip] if clip else [])
    code, out, err = run(_certify(files, *extra, norm=norm, radius=radius), capsys)
    assert code == 0, err
    assert err == ""  # stderr stays empty under --json
    doc = json.loads(out)
    rows, summary = doc["rows"], doc["summary"]
    assert [r["index"] for r in rows] == list(range(12))
    target, pruned = load_onnx(files["t_onnx"]), load_onnx(files["p_onnx"])
    x = torch.from_numpy(np.load(files["x"])).double()
    box = None if clip is None else (0.0, 1.0)
    ball = BallSpec(radius=float(radius), norm=norm, box=box)  # type: ignore[arg-type]
    diff = differential_bound(target, pruned, ball, centres=x)
    agr = certified_agreement(target, pruned, ball, centres=x, attack=False)
    radii = layerwise_radius(x, float(radius), norm, box)
    for i, r in enumerate(rows):
        assert 0 <= r["lower"] <= r["upper"]
        assert r["upper"] == min(r["upper_differential"], r["upper_layerwise"])
        assert r["upper_differential"] == pytest.approx(float(diff.value[i]), rel=1e-12)
        lay = float(certified_gap_bound(target, pruned, radius=float(radii[i])).value)
        assert r["upper_layerwise"] == pytest.approx(lay, rel=1e-12)
        assert r["upper_from"] == ("differential" if r["upper_differential"] <= r["upper_layerwise"]
                                   else "layerwise")
        assert r["certified_agree"] == (agr.verdicts[i] == "certified")
        assert r["verdict"] in ("certified", "not certified", "refuted")
        if r["certified_agree"]:
            assert r["empirical_agree"]  # certified is never contradicted by the search
        if r["verdict"] == "refuted":
            assert not r["empirical_agree"]
    with torch.no_grad():
        ct = target(x.float()).argmax(-1)  # type: ignore[union-attr]
        cp = pruned(x.float()).argmax(-1)  # type: ignore[union-attr]
    assert [r["class_target"] for r in rows] == ct.tolist()
    assert [r["class_pruned"] for r in rows] == cp.tolist()
    y = np.load(files["y"])
    assert summary["accuracy_target"] == pytest.approx(float((ct.numpy() == y).mean()))
    assert summary["accuracy_target"] == pytest.approx(9 / 12)
    assert summary["accuracy_pruned"] == pytest.approx(float((cp.numpy() == y).mean()))
    assert summary["certified_agreement"] == pytest.approx(sum(r["certified_agree"] for r in rows) / 12)
    assert summary["empirical_agreement"] == pytest.approx(sum(r["empirical_agree"] for r in rows) / 12)
    assert summary["certified_agreement"] <= summary["empirical_agreement"]
    assert summary["median_upper"] == pytest.approx(float(np.median([r["upper"] for r in rows])))
    assert summary["max_ratio"] == pytest.approx(max(r["ratio"] for r in rows))


def test_small_ball_certifies_and_large_ball_does_not(files: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Radius 1e-4: near exact (certified agreement everywhere the centres agree); radius 5: nothing certified."""
    code, out, err = run(_certify(files, "--json", radius="0.0001"), capsys)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    agree_at_centre = [r["class_target"] == r["class_pruned"] for r in rows]
    assert sum(agree_at_centre) >= 6
    assert all(r["certified_agree"] for r, a in zip(rows, agree_at_centre) if a)
    assert all(r["ratio"] < 1.5 for r in rows)
    code, out, err = run(_certify(files, "--json", radius="5"), capsys)
    assert code == 0, err
    assert not any(r["certified_agree"] for r in json.loads(out)["rows"])
    # identical networks: gap 0 on both sides, ratio 1, agreement certified wherever the margin allows
    code, out, err = run([*_certify(files, "--json", radius="0.0001"), "--pruned", str(files["t_onnx"])], capsys)
    assert code == 0, err
    same = json.loads(out)["rows"]
    assert all(r["lower"] == r["upper"] == 0.0 and r["ratio"] == 1.0 for r in same)


def test_layerwise_radius_contains_the_ball() -> None:
    g = torch.Generator().manual_seed(1)
    c = torch.rand(5, 7, generator=g, dtype=torch.float64) * 2 - 0.5
    for norm in ("linf", "l2"):
        for clip in (None, (-0.5, 1.5)):
            radii = layerwise_radius(c, 0.3, norm, clip)
            for _ in range(200):
                v = torch.randn(5, 7, generator=g, dtype=torch.float64)
                v = v.sign() * 0.3 if norm == "linf" else 0.3 * v / v.norm(dim=1, keepdim=True)
                xs = c + v
                if clip is not None:
                    xs = xs.clamp(*clip)
                assert bool((xs.norm(dim=1) <= radii).all())
    # the box cuts the linf ball: tighter than ||c|| + r sqrt(d)
    c1 = torch.full((1, 4), 0.98, dtype=torch.float64)
    r = float(layerwise_radius(c1, 0.1, "linf", (0.0, 1.0))[0])
    assert r == pytest.approx(2.0, rel=1e-9) and r < 0.98 * 2 + 0.2


def test_rows_file_gets_the_umask_mode(tmp_path: Path) -> None:
    """The rows file is written atomically with the umask's permissions (as any ``open(path, "w")``), not 0600."""
    old = os.umask(0o022)
    try:
        for name in ("rows.csv", "rows.json"):
            write_rows(str(tmp_path / name), [{"index": 0, "upper": math.inf}], {"n": 1})
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "rows.json").read_text())["rows"][0]["upper"] == "inf"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_safetensors_tables_and_csv(files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out_csv = tmp_path / "rows.csv"
    code, out, err = run(_certify(files, "--out", str(out_csv), onnx=False), capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("probprune certify | config ")
    assert "progress: inputs 12/12" in err  # not a terminal: plain progress lines on stderr
    assert "certified agreement" in out and "empirical agreement" in out
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and all(float(r["lower"]) <= float(r["upper"]) for r in rows)
    code, out, _ = run(_certify(files, "--json"), capsys)  # the ONNX copies give the same rows
    onnx_rows = json.loads(out)["rows"]
    assert [float(r["upper"]) for r in rows] == pytest.approx([r["upper"] for r in onnx_rows], rel=1e-12)
    out_json = tmp_path / "rows.json"
    code, _, err = run(_certify(files, "--out", str(out_json)), capsys)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert len(doc["rows"]) == 12 and doc["summary"]["n"] == 12


def _bad(files: dict[str, Path], tmp_path: Path) -> list[tuple[list[str], str]]:
    np.save(tmp_path / "x3.npy", np.zeros((4, 3), dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.full((12, 6), np.nan, dtype=np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pt = tmp_path / "t.pt"
    pt.write_bytes(b"x")
    base = _certify(files)

    def swap(opt: str, value: str) -> list[str]:
        args = list(base)
        args[args.index(opt) + 1] = value
        return args

    return [
        (swap("--weights", str(pt)), "weights="),
        (swap("--pruned", str(tmp_path / "missing.onnx")), "no such file"),
        ([*base, "--arch", "fcn:6,8,4"], "arch="),
        (swap("--radius", "0"), "radius="),
        (swap("--radius", "-1"), "radius="),
        (swap("--radius", "nan"), "radius="),
        (swap("--n-points", "13"), "n_points=13"),
        (swap("--norm", "l1"), "norm="),
        ([*base, "--clip", "1,0"], "clip="),
        ([*base, "--clip", "a,b"], "clip="),
        ([*base, "--clip", "0"], "clip="),
        ([*base, "--clip", "0.5,1"], "clip="),  # inputs outside the box
        (swap("--data", str(tmp_path / "x3.npy")), "data="),
        (swap("--data", str(tmp_path / "nan.npy")), "non-finite"),
        (swap("--data", str(tmp_path / "obj.npy")), "data="),
        (swap("--data", "cifar10"), "data="),
        ([*base, "--labels", str(tmp_path / "x3.npy")], "labels="),
    ]


def test_bad_input_one_line_exit_2_nothing_written(files: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    conv_t, conv_p = _pair("cnn:1x4x4,c2k3,3")
    save_onnx(conv_t, tmp_path / "ct.onnx")
    save_onnx(conv_p, tmp_path / "cp.onnx")
    out_file = tmp_path / "rows.json"
    cases = _bad(files, tmp_path)
    conv = ["certify", "--weights", str(tmp_path / "ct.onnx"), "--pruned", str(tmp_path / "cp.onnx"),
            "--data", str(files["x"]), "--n-points", "2", "--radius", "0.1"]
    # an ONNX conv chain is certified through the graph bound (test_certify_graph); FCN-shaped data is refused
    cases.append((conv, "expected numbers [N, 1, 4, 4] or [N, 16]"))
    cases.append((["certify", "--weights", str(files["t_onnx"]), "--pruned", str(tmp_path / "cp.onnx"),
                   "--data", str(files["x"]), "--n-points", "2", "--radius", "0.1"], "architecture"))
    cases.append((_certify(files, "--out", str(tmp_path / "rows.txt")), "out="))
    one_t, one_p = _pair("fcn:6,8,1")
    save_onnx(one_t, tmp_path / "1t.onnx")
    save_onnx(one_p, tmp_path / "1p.onnx")
    cases.append((["certify", "--weights", str(tmp_path / "1t.onnx"), "--pruned", str(tmp_path / "1p.onnx"),
                   "--data", str(files["x"]), "--n-points", "2", "--radius", "0.1"], "needs a classifier"))
    for args, needle in cases:
        code, out, err = run([*args, "--out", str(out_file)] if "--out" not in args else args, capsys)
        lines = err.strip().splitlines()
        assert code == 2, (args, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert needle in lines[0], (needle, lines[0])
        assert not out_file.exists()
        assert not any(p.name.startswith(".certify-") for p in tmp_path.iterdir())


def _need(name: str) -> None:
    if dataset_status(name)["ready"]:
        return
    msg = f"{name} is not prepared (probprune data prepare {name})"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " — CI must prepare it (make data)")
    pytest.skip(msg)


@pytest.mark.data
def test_mnist_five_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need("mnist")
    from probprune.data import load_dataset

    target, pruned = _pair("fcn:784,16,10", seed=3)
    save_net(target, str(tmp_path / "t.safetensors"))
    save_net(pruned, str(tmp_path / "p.safetensors"))
    code, out, err = run(["certify", "--weights", str(tmp_path / "t.safetensors"), "--pruned",
                          str(tmp_path / "p.safetensors"), "--arch", "fcn:784,16,10", "--bias", "--data", "mnist",
                          "--n-points", "5", "--radius", "0.01", "--clip", "0,1", "--json", *FAST], capsys)
    assert code == 0, err
    doc = json.loads(out)
    labels = load_dataset("mnist").test_labels[:5].tolist()
    assert [r["label"] for r in doc["rows"]] == labels
    assert all(r["lower"] <= r["upper"] < math.inf for r in doc["rows"])
    acc = doc["summary"]["accuracy_target"]
    assert acc == pytest.approx(sum(r["class_target"] == r["label"] for r in doc["rows"]) / 5)
    code, _, err = run(["certify", "--weights", str(tmp_path / "t.safetensors"), "--pruned",
                        str(tmp_path / "p.safetensors"), "--arch", "fcn:784,16,10", "--bias", "--data", "mnist",
                        "--n-points", "10001", "--radius", "0.01"], capsys)
    assert code == 2 and "n_points=10001" in err


def test_max_prune_answers_a_measured_passing_level(files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--solve max-prune: the answer's own certified rate is ≥ the target, the next measured level above fails,
    every curve row equals certified_agreement on the model pruned at that level, and masks are nested."""
    from probprune.runner.certify import GRID

    spec = parse_arch(ARCH, bias=False)  # bias-free: the rate is not monotone here (0.2 fails, 0.3 passes)
    save_onnx(as_net(init_module(spec, torch.Generator().manual_seed(0)), spec), tmp_path / "nb.onnx")
    out_file = tmp_path / "curve.json"
    args = ["certify", "--weights", str(tmp_path / "nb.onnx"), "--data", str(files["x"]), "--n-points", "12",
            "--radius", "0.02", "--clip", "0,1", *FAST, "--solve", "max-prune", "--agreement", "0.75",
            "--tol", "0.05", "--labels", str(files["y"])]
    code, out, err = run([*args, "--json", "--out", str(out_file)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    curve, summary = doc["curve"], doc["summary"]
    fracs = [r["prune_fraction"] for r in curve]
    assert fracs == sorted(fracs) and set(GRID) <= set(fracs)
    best = summary["max_prune_fraction"]
    assert best is not None and best in fracs
    row = curve[fracs.index(best)]
    assert row["certified_agreement"] >= 0.75 and row["meets_target"]
    assert all(r["meets_target"] == (r["certified_agreement"] >= 0.75) for r in curve)
    assert all(r["certified_agreement"] <= r["empirical_agreement"] for r in curve)
    above = [r for r in curve if r["prune_fraction"] > best]
    assert len(curve) > len(GRID)  # the bisection ran
    # it ends with a failing level within tol above the answer, and no measured level above passes
    assert not above[0]["meets_target"] and above[0]["prune_fraction"] - best <= 0.05 + 1e-9
    assert not any(r["meets_target"] for r in above)
    assert any(not r["meets_target"] for r in curve if r["prune_fraction"] < best)  # not monotone: coped with
    target = load_onnx(tmp_path / "nb.onnx")
    x = torch.from_numpy(np.load(files["x"])).double()
    ball = BallSpec(radius=0.02, norm="linf", box=(0.0, 1.0))
    prev = None
    for r in curve[:: max(1, len(curve) // 4)]:
        res = prune(target, PruneSpec(prune_fraction=r["prune_fraction"], scope="global"))
        agr = certified_agreement(target, res.model, ball, centres=x, attack=False)  # type: ignore[arg-type]
        assert r["certified_agreement"] == pytest.approx(agr.certified_rate)
        keep = torch.cat([m.flatten() for m in res.masks.values()])
        if prev is not None:
            assert bool((keep <= prev).all())  # nested: removed stays removed at a higher level
        prev = keep
    assert json.loads(out_file.read_text())["summary"]["max_prune_fraction"] == best
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "largest prune fraction with certified agreement" in out and "prune fraction" in out


def test_max_prune_bad_input_one_line_exit_2(files: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "curve.json"
    base = ["certify", "--weights", str(files["t_onnx"]), "--data", str(files["x"]), "--n-points", "4",
            "--radius", "0.02", *FAST, "--out", str(out_file)]
    cases = [
        ([*base, "--solve", "max-prune", "--agreement", "0"], "agreement=0"),
        ([*base, "--solve", "max-prune", "--agreement", "1.5"], "agreement=1.5"),
        ([*base, "--solve", "max-prune", "--agreement", "nan"], "agreement=nan"),
        ([*base, "--solve", "max-prune", "--pruned", str(files["p_onnx"])], "pruned="),
        ([*base, "--solve", "min-prune"], "solve='min-prune'"),
        ([*base, "--solve", "max-prune", "--method", "taylor"], "method='taylor'"),
        ([*base, "--solve", "max-prune", "--scope", "row"], "scope='row'"),
        ([*base, "--solve", "max-prune", "--tol", "0"], "tol=0"),
        ([*base, "--solve", "max-prune", "--radius", "-1"], "radius=-1"),
        (base, "pruned: missing"),
    ]
    for args, needle in cases:
        code, out, err = run(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2, (args, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert needle in lines[0], (needle, lines[0])
        assert not out_file.exists()
