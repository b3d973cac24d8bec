"""`probprune certify` as a run: per-input boxes (--halfwidth), run folders that resume, Ray, the report."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import probprune.runner.certify as rc
from cliharness import run
from probprune.bounds.differential import certified_agreement, differential_bound, gap_search
from probprune.config import BallSpec, CertifyJob, ProbPruneError, PruneSpec, canonical_json, config_hash, parse_arch
from probprune.data import as_net, init_module
from probprune.masks import prune
from probprune.nets import Net
from probprune.nets.onnx import save_onnx
from probprune.report.certify import build_certify_report
from probprune.store.certify import CertifyStore, is_certify_dir, read_certify

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "fcn:6,24,24,4"
FAST = ["--n-restarts", "2", "--n-steps", "10"]


def _pair(seed: int = 0, frac: float = 0.5) -> tuple[Net, Net]:
    spec = parse_arch(ARCH, bias=True)
    target = as_net(init_module(spec, torch.Generator().manual_seed(seed)), spec)
    return target, prune(target, PruneSpec(prune_fraction=frac, scope="global")).model


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    target, pruned = _pair()
    paths = {"t": tmp_path / "t.onnx", "p": tmp_path / "p.onnx", "x": tmp_path / "x.npy", "y": tmp_path / "y.npy",
             "h": tmp_path / "h.npy"}
    save_onnx(target, paths["t"])
    save_onnx(pruned, paths["p"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(10, 6)).astype(np.float32)
    np.save(paths["x"], x)
    np.save(paths["y"], rng.integers(0, 4, size=10).astype(np.int64))
    np.save(paths["h"], rng.uniform(0.0, 0.06, size=(10, 6)))
    return paths


def _job(files: dict[str, Path], **kw: Any) -> CertifyJob:
    base: dict[str, Any] = dict(weights=str(files["t"]), pruned=str(files["p"]), data=str(files["x"]), n_points=10,
                                norm="linf", radius=0.05, labels=str(files["y"]), n_restarts=2, n_steps=10,
                                batch_size=3)
    base.update(kw)
    return CertifyJob(**base)


# ------------------------------------------------------------------------------------------ --halfwidth boxes


def test_random_boxes_are_sound() -> None:
    """Per-input boxes c ± h (∩ clip): certified gap ≥ found gap ≥ gaps at sampled box points; witness in the box;
    certified agreement never contradicted by a sampled point."""
    target, pruned = _pair(1, 0.6)
    g = torch.Generator().manual_seed(3)
    c = torch.rand(7, 6, generator=g, dtype=torch.float64)
    h = torch.rand(7, 6, generator=g, dtype=torch.float64) * 0.3
    h[0] = 0.0  # a single point
    h[1, :3] = 0.0  # some fixed coordinates
    for clip in (None, (0.0, 1.0)):
        ball = BallSpec(radius=float(h.max()), norm="linf", box=clip, centre=tuple(c[0].tolist()))
        up = differential_bound(target, pruned, ball, centres=c, halfwidth=h, batch_size=3).value
        low = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=c, halfwidth=h,
                         n_restarts=3, n_steps=20)
        assert bool((low.x - c).abs().le(h).all())
        if clip is not None:
            assert bool(((low.x >= 0) & (low.x <= 1)).all())
        assert bool((up >= low.value).all())
        lo, hi = c - h, c + h
        if clip is not None:
            lo, hi = lo.clamp_min(0.0), hi.clamp_max(1.0)
        u = torch.rand(400, 7, 6, generator=g, dtype=torch.float64)
        pts = lo + (hi - lo) * u
        t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)
        flat = pts.reshape(-1, 6)
        with torch.no_grad():
            ft, fp = t64(flat).reshape(400, 7, -1), p64(flat).reshape(400, 7, -1)  # type: ignore[union-attr]
            gaps = (fp - ft).norm(dim=-1)
            assert bool((gaps <= up).all())
            agr = certified_agreement(target, pruned, ball, centres=c, halfwidth=h, attack=False)
            same = (ft.argmax(-1) == agr.target_class) & (fp.argmax(-1) == agr.target_class)
        for i, v in enumerate(agr.verdicts):
            if v == "certified":
                assert bool(same[:, i].all())
        assert float(up[0]) >= float(low.value[0]) and float(low.value[0]) == pytest.approx(
            float((p64(c[:1]) - t64(c[:1])).norm()), rel=1e-12)  # type: ignore[operator]


def test_equal_halfwidths_equal_the_scalar_radius() -> None:
    target, pruned = _pair(2)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for clip in (None, (0.0, 1.0)):
        a = rc.certify(target, pruned, x, radius=0.04, norm="linf", clip=clip, n_restarts=2, n_steps=10,
                       batch_size=2)
        b = rc.certify(target, pruned, x, halfwidth=torch.full((6,), 0.04, dtype=torch.float64), norm="linf",
                       clip=clip, n_restarts=2, n_steps=10, batch_size=2)
        for ra, rb in zip(a.rows, b.rows):
            for k in ra:
                if k in ("upper_layerwise", "layerwise_radius", "upper", "ratio"):
                    assert rb[k] == pytest.approx(ra[k], rel=1e-12)  # ‖h‖₂ vs r·√d: last bits
                else:
                    assert rb[k] == ra[k], k


@pytest.mark.parametrize("arr,msg", [
    (np.full((10, 5), 0.01), "expected numbers [N, 6] or [6]"),
    (np.full((4, 6), 0.01), "4 rows, n_points=10"),
    (np.full(6, -0.01), "finite and >= 0"),
    (np.array([0.01, np.nan, 0, 0, 0, 0]), "finite and >= 0"),
    (np.zeros((10, 6)), "every half-width is 0"),
    (np.array(["a"] * 6), "expected numbers"),
])
def test_bad_halfwidth_arrays_one_line_exit_2(files: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], arr: np.ndarray, msg: str) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, arr)
    out = tmp_path / "rows.json"
    code, o, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                        str(files["x"]), "--n-points", "10", "--halfwidth", str(bad), "--out", str(out),
                        "--run-dir", str(tmp_path / "run"), *FAST], capsys)
    assert code == 2 and "error" not in o
    assert err.startswith(f"error: halfwidth={str(bad)!r}: ") and msg in err and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,msg", [
    (["--radius", "0.1"], "radius=0.1: give either radius or halfwidth"),
    (["--norm", "l2"], "norm='l2': halfwidth boxes are l-infinity balls"),
])
def test_halfwidth_with_radius_or_l2_refused(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                             extra: list[str], msg: str) -> None:
    code, _, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                        str(files["x"]), "--n-points", "10", "--halfwidth", str(files["h"]), *extra, *FAST], capsys)
    assert code == 2 and msg in err and err.count("\n") == 1, err


def test_cli_halfwidth_rows_are_the_api_rows(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                          str(files["x"]), "--n-points", "10", "--halfwidth", str(files["h"]), "--clip", "0,1",
                          "--json", *FAST], capsys)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    h = torch.from_numpy(np.load(files["h"]))
    x = torch.from_numpy(np.load(files["x"])).double()
    target, pruned = rc.load_pair(_job(files))
    ball = BallSpec(radius=float(h.max()), norm="linf", box=(0.0, 1.0), centre=tuple(x[0].tolist()))
    diff = differential_bound(target, pruned, ball, centres=x, halfwidth=h)
    for i, r in enumerate(rows):
        assert r["upper_differential"] == pytest.approx(float(diff.value[i]), rel=1e-12)
        assert 0 <= r["lower"] <= r["upper"]


# ------------------------------------------------------------------------------------------ run folders


class _Killed(Exception):
    pass


def test_killed_run_resumes_without_recomputing(files: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(files)
    whole = rc.run_certify(job, run_dir=tmp_path / "whole")
    assert whole.summary["n_new"] == 10 and whole.run_dir == tmp_path / "whole"

    def kill_after_two(done: int, total: int) -> None:
        if done >= 6:  # two chunks of 3 stored
            raise _Killed

    with pytest.raises(_Killed):
        rc.run_certify(job, progress=kill_after_two, run_dir=tmp_path / "killed")
    assert len(read_certify(tmp_path / "killed").rows) == 6
    computed: list[int] = []
    real = rc._chunk_rows

    def counting(*a: Any, **kw: Any) -> Any:
        rows = real(*a, **kw)
        computed.extend(r.index for r in rows)
        return rows

    monkeypatch.setattr(rc, "_chunk_rows", counting)
    resumed = rc.run_certify(job, run_dir=tmp_path / "killed")
    assert sorted(computed) == [6, 7, 8, 9] and resumed.summary["n_new"] == 4
    assert resumed.rows == whole.rows
    assert [q.to_dict() for q in read_certify(tmp_path / "killed").radii] == \
        [q.to_dict() for q in read_certify(tmp_path / "whole").radii]
    computed.clear()
    again = rc.run_certify(job, run_dir=tmp_path / "killed")  # a finished run: nothing is recomputed
    assert computed == [] and again.rows == whole.rows
    # the in-memory run (no folder) gives the same rows too
    assert rc.run_certify(job).rows == whole.rows
    assert not any(p.name.endswith(("-wal", "-shm")) for p in (tmp_path / "killed").iterdir())


def test_folder_of_another_config_or_changed_files_is_refused(files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run"
    rc.run_certify(_job(files, n_points=3), run_dir=folder)
    assert is_certify_dir(folder)
    stored = json.loads((folder / "config.json").read_text())
    assert stored["kind"] == "certify" and set(stored["files"]) == {"weights", "pruned", "data", "labels"}
    before = (folder / "results.sqlite").read_bytes()
    with pytest.raises(ProbPruneError, match="holds another certify config"):
        rc.run_certify(_job(files, n_points=3, radius=0.07), run_dir=folder)
    target, _ = _pair(5)
    save_onnx(target, files["p"])  # the pruned model changed on disk
    with pytest.raises(ProbPruneError, match="pruned changed since the run was made"):
        rc.run_certify(_job(files, n_points=3), run_dir=folder)
    assert (folder / "results.sqlite").read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run(["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data",
                        str(files["x"]), "--n-points", "3", "--radius", "0.05", "--run-dir", str(other), *FAST],
                       capsys)
    assert code == 2 and "a folder with other files and no config.json" in err and err.count("\n") == 1


def test_a_folder_of_an_older_results_rule_is_read_but_not_resumed(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    rc.run_certify(_job(files, n_points=3), run_dir=folder)
    cfg = folder / "config.json"
    doc = json.loads(cfg.read_text())
    assert doc["results_rule"] == 2
    del doc["results_rule"]  # as an earlier estimator rule would have left it
    cfg.write_text(json.dumps(doc))
    assert len(read_certify(folder).rows) == 3  # still readable
    with pytest.raises(ProbPruneError, match=r"results rule 1 .* will not append to it"):
        rc.run_certify(_job(files, n_points=3), run_dir=folder)


def test_a_locked_folder_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    job = _job(files, n_points=3)
    folder = tmp_path / "run"
    doc = {"config": json.loads(canonical_json(job)), "hash": config_hash(job), "files": rc.job_files(job)}
    with CertifyStore(folder, doc, 3):
        with pytest.raises(ProbPruneError, match="in use by another probprune process"):
            rc.run_certify(job, run_dir=folder)


def test_tampered_store_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    rc.run_certify(_job(files, n_points=3), run_dir=folder)
    with sqlite3.connect(folder / "results.sqlite") as con:
        con.execute("UPDATE inputs SET upper = upper / 2 WHERE \"index\" = 1")
    with pytest.raises(ProbPruneError, match="upper .* is not the smaller certified bound"):
        read_certify(folder)


def test_cli_runs_dir_report_and_resume(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["certify", "--weights", str(files["t"]), "--pruned", str(files["p"]), "--data", str(files["x"]),
            "--n-points", "10", "--radius", "0.05", "--clip", "0,1", "--labels", str(files["y"]),
            "--runs-dir", str(tmp_path / "runs"), "--radii", "0.01,0.05,0.2", "--json", *FAST]
    code, out, err = run(args, capsys)
    assert code == 0, err
    doc = json.loads(out)
    folder = Path(doc["run_dir"])
    assert folder.parent == tmp_path / "runs" and folder.name == json.loads(
        (folder / "config.json").read_text())["hash"]
    assert Path(doc["report"]).is_file() and (folder / "summary.md").is_file()
    curve = doc["summary"]["curve"]
    assert [c["radius"] for c in curve] == [0.01, 0.05, 0.2]
    # a smaller ball never certifies less: the certified ball of radius r contains the smaller ones' claims
    rates = [c["certified_agreement"] for c in curve]
    assert rates == sorted(rates, reverse=True)
    assert curve[1]["certified_agreement"] == doc["summary"]["certified_agreement"]
    code, out2, err = run(args, capsys)
    assert code == 0, err
    doc2 = json.loads(out2)
    assert doc2["summary"]["n_new"] == 0 and doc2["rows"] == doc["rows"]
    code, out3, err = run(["report", str(folder), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out3)
    assert rep["kind"] == "certify" and rep["n_done"] == rep["n_expected"] == 10 and rep["status"] == "complete"


def test_report_shows_the_store(files: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "run"
    res = rc.run_certify(_job(files), run_dir=folder)
    page = build_certify_report(folder).read_text()
    assert page.count("<img ") == 2
    assert "complete: 10 of 10 inputs stored" in page
    assert f"{100 * res.summary['certified_agreement']:.1f} %" in page
    run_ = read_certify(folder)
    from probprune.report.certify import gap_scatter

    fig = gap_scatter(run_.rows, tmp_path / "figs")
    pos = [r for r in run_.rows if r.lower > 0]
    assert sorted(fig.data["x"]) == sorted(r.lower for r in pos)
    assert all(y >= x for x, y in zip(fig.data["x"], fig.data["y"]))  # on or above the diagonal


def test_max_prune_run_folder_resumes_and_reports(files: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(files, pruned=str(files["t"]), radius=0.01, n_points=4)
    solve = rc.MaxPruneSolve(agreement=0.5, tol=0.05)
    first = rc.run_max_prune(job, solve, run_dir=tmp_path / "mp")
    measured: list[float] = []
    real = rc._level_row

    def counting(lj: Any, frac: float, s: Any) -> Any:
        measured.append(frac)
        return real(lj, frac, s)

    monkeypatch.setattr(rc, "_level_row", counting)
    again = rc.run_max_prune(job, solve, run_dir=tmp_path / "mp")
    assert measured == [] and [{k: v for k, v in r.items() if k != "seconds"} for r in again.curve] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in first.curve]
    assert again.summary["max_prune_fraction"] == first.summary["max_prune_fraction"]
    page = build_certify_report(tmp_path / "mp").read_text()
    assert page.count("<img ") == 1 and f"{len(first.curve)} prune levels measured" in page


def _graph_job(tmp_path: Path, files: dict[str, Path]) -> CertifyJob:
    """A residual graph (linear → relu → linear, + skip → relu → linear) on the inputs of ``files``, as ONNX."""
    from probprune.nets.graph import Graph, Node, activation
    from probprune.nets.onnx_graph import save_onnx_graph

    g = torch.Generator().manual_seed(4)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5

    relu = {"act": activation("relu")}
    target = Graph([Node("a", "linear", ("input",), params={"weight": t(8, 6), "bias": t(8)}),
                    Node("ra", "act", ("a",), relu),
                    Node("b", "linear", ("ra",), params={"weight": t(8, 8), "bias": t(8)}),
                    Node("s", "add", ("b", "ra")), Node("rs", "act", ("s",), relu),
                    Node("out", "linear", ("rs",), params={"weight": t(4, 8)})], (6,))
    params = target.parameters()
    pruned = target.with_parameters({k: params[k] * (params[k].abs() > 0.3) for k in target.prunable()})
    save_onnx_graph(target, tmp_path / "gt.onnx", dtype=torch.float64)
    save_onnx_graph(pruned, tmp_path / "gp.onnx", dtype=torch.float64)
    return _job(files, weights=str(tmp_path / "gt.onnx"), pruned=str(tmp_path / "gp.onnx"), n_points=6, radii=(0.1,))


def test_ray_gives_the_local_rows(files: dict[str, Path], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    import os

    from probprune.runner.ray_executor import RayExecutor

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    job = _job(files)
    local = rc.run_certify(job, run_dir=tmp_path / "local")
    gjob = _graph_job(tmp_path, files)  # a residual graph model: the same units, one Ray start for both
    glocal = rc.run_certify(gjob, run_dir=tmp_path / "glocal")
    ex = RayExecutor(num_cpus=2)
    try:
        remote = rc.run_certify(job, run_dir=tmp_path / "ray", executor=ex)
        gremote = rc.run_certify(gjob, run_dir=tmp_path / "gray", executor=ex)
    finally:
        ex.shutdown()
    assert gremote.rows == glocal.rows and gremote.summary["model"] == "graph"
    assert [q.to_dict() for q in read_certify(tmp_path / "gray").radii] == \
        [q.to_dict() for q in read_certify(tmp_path / "glocal").radii]
    assert not ray.is_initialized()
    assert remote.rows == local.rows
    assert [q.to_dict() for q in read_certify(tmp_path / "ray").radii] == \
        [q.to_dict() for q in read_certify(tmp_path / "local").radii]
    assert math.isfinite(remote.summary["median_upper"])
