"""Same command, same seed, same bytes: every artifact of two separate processes is identical.

Compared (issue 13, item 3): checkpoints (``prune --out`` / ``--save-target``, safetensors), the
run folder of a small ``verify`` (``config.json``; the SQLite rows of every table, ordered by key —
the database file's bytes need not match), and ``report`` on it (``report.html``, ``summary.md``,
every figure file). Allowed differences, each named once:

- ``report.html``: the one ``generated: …`` line (:data:`probprune.report.html.GENERATED_LINE`);
- the store: its wall-clock fields (:data:`probprune.store.runs.TIMING_FIELDS`: ``meta.created``,
  ``meta.finished``, ``trials.seconds``), left out of the row comparison.

The two processes get different ``PYTHONHASHSEED`` values, so nothing may depend on set or hash
order. Certificates (``prune --certificate``) are covered by their own tests. The real-data
``experiment`` (checkpoints, rows less ``experiment.seconds``, report) is compared too when MNIST is
prepared (marker ``data``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import torch

from probprune.config import ProbPruneError
from probprune.report import write_report
from probprune.report.html import GENERATED_LINE, environment, render_html
from probprune.store import load_tensors, save_tensors
from probprune.store.checkpoint import canonical_header
from probprune.store.runs import TIMING_FIELDS
from reportrows import report, trial

_ROOT = Path(__file__).resolve().parents[1]
_QUICK = _ROOT / "configs" / "quick.toml"


def _header(path: Path) -> tuple[bytes, dict[str, Any]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8:8 + n], json.loads(raw[8:8 + n])


# ---------------------------------------------------------------- checkpoints (in one process)


def test_save_tensors_gives_the_same_bytes_on_every_call(tmp_path: Path) -> None:
    """The safetensors writer orders the metadata by a per-call random hash: ours is canonical."""
    w = {"0.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "2.weight": torch.ones(2, 3),
         "1.bias": torch.zeros(3, dtype=torch.float64)}
    meta = {"format": "probprune", "arch": "fcn:4,3,2", "note": "x", "a": "1", "zz": "2"}
    digests = set()
    for i in range(12):
        # tensors and metadata handed over in a different order each time
        names = sorted(w, reverse=bool(i % 2))
        keys = list(meta)[i % len(meta):] + list(meta)[:i % len(meta)]
        path = tmp_path / f"w{i}.safetensors"
        save_tensors(path, {k: w[k] for k in names}, {k: meta[k] for k in keys})
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    head, doc = _header(tmp_path / "w0.safetensors")
    assert list(doc["__metadata__"]) == sorted(meta)
    starts = [doc[k]["data_offsets"][0] for k in doc if k != "__metadata__"]
    assert starts == sorted(starts)  # tensor entries in the order of their data
    assert (8 + len(head)) % 8 == 0  # data stays 8-aligned
    tensors, got_meta = load_tensors(tmp_path / "w0.safetensors")
    assert got_meta == meta
    assert set(tensors) == set(w) and all(torch.equal(tensors[k], w[k]) for k in w)


def test_canonical_header_is_one_form_of_any_equivalent_header() -> None:
    a = {"b.w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
         "__metadata__": {"z": "1", "a": "2"},
         "a.w": {"shape": [1, 2], "data_offsets": [0, 8], "dtype": "F32"}}
    b = {"__metadata__": {"a": "2", "z": "1"}, "a.w": dict(reversed(list(a["a.w"].items()))), "b.w": a["b.w"]}
    ca = canonical_header(a)
    assert ca == canonical_header(b)
    assert len(ca) % 8 == 0 and ca.rstrip(b" ") == (
        b'{"__metadata__":{"a":"2","z":"1"},"a.w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},'
        b'"b.w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}')
    with pytest.raises(ProbPruneError, match="data_offsets"):
        canonical_header({"w": {"dtype": "F32", "shape": [1]}})


# ---------------------------------------------------------------- the report's one timestamp


def test_source_date_epoch_fixes_the_one_timestamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = report(tmp_path / "run", trials=[trial(width=8, method="random", gap_lower=1.0, gap_upper=2.0)])
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    now = render_html(data, [], environment())
    assert len(GENERATED_LINE.findall(now)) == 1  # the one timestamp, when nothing fixes it
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    page = render_html(data, [], environment())
    assert GENERATED_LINE.findall(page) == ['<p class="muted" id="generated">generated: 2023-11-14T22:13:20Z</p>']
    assert GENERATED_LINE.sub("", page) == GENERATED_LINE.sub("", now)  # nothing else moved
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ProbPruneError, match="SOURCE_DATE_EPOCH='yesterday'"):
        write_report(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any file is written


# ---------------------------------------------------------------- two processes, every artifact


def _cli_pair(folders: dict[Path, str], args: list[str]) -> None:
    """Run ``probprune ARGS`` in each folder, as separate processes side by side (folder -> PYTHONHASHSEED)."""
    procs = []
    for cwd, hash_seed in folders.items():
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        env.pop("SOURCE_DATE_EPOCH", None)
        cmd = [sys.executable, "-m", "probprune", *[a.replace("{cwd}", str(cwd)) for a in args]]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"probprune {' '.join(args)} exit {p.returncode}: {err[-2000:]}"


def _make_everything(folders: dict[Path, str]) -> None:
    for f in folders:
        f.mkdir()
    _cli_pair(folders, ["prune", "--arch", "fcn:8,16,16,4", "--law", "uniform:K=2.449", "--seed", "3",
                        "--method", "random", "--p", "0.5", "--out", "pruned.safetensors",
                        "--save-target", "target.safetensors", "--json"])
    _cli_pair(folders, ["verify", "--config", str(_QUICK), "--widths", "8,16", "--trials", "4",
                        "--chunk-size", "2", "--set", "gap.n_points=32", "--set", "gap.n_restarts=1",
                        "--set", "gap.n_steps=2", "--seed", "7", "--runs-dir", "runs", "--json"])
    (run,) = (next(iter(folders)) / "runs").iterdir()
    # an absolute path, different for the two folders: the report must not depend on where the run lies
    _cli_pair(folders, ["report", f"{{cwd}}/runs/{run.name}", "--json"])


def _rows(db: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows, ordered by key, without the documented wall-clock fields."""
    out: dict[str, list[dict[str, Any]]] = {}
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for t in tables:
            cur = con.execute(f'SELECT * FROM "{t}"')
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
            if t == "meta":
                rows = [r for r in rows if r["key"] not in TIMING_FIELDS["meta"]]
            else:
                rows = [{k: v for k, v in r.items() if k not in TIMING_FIELDS.get(t, ())} for r in rows]
            out[t] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    return out


def _assert_same_artifacts(a: Path, b: Path, expected: set[str]) -> list[str]:
    """Every file under ``a`` equals its twin under ``b`` (up to the one timestamp and the timing fields)."""
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    # SQLite's write-ahead files may or may not be left behind (the store's business): not artifacts
    files_a = [f for f in files_a if not f.endswith(("-wal", "-shm"))]
    files_b = [f for f in files_b if not f.endswith(("-wal", "-shm"))]
    assert files_a == files_b
    assert expected <= set(files_a), sorted(expected - set(files_a))
    for rel in files_a:
        fa, fb = a / rel, b / rel
        if rel.endswith("results.sqlite"):
            assert _rows(fa) == _rows(fb), f"{rel}: stored rows differ"
        elif rel.endswith("report.html"):
            ta, tb = fa.read_text(encoding="utf-8"), fb.read_text(encoding="utf-8")
            assert len(GENERATED_LINE.findall(ta)) == 1 and len(GENERATED_LINE.findall(tb)) == 1
            ta, tb = GENERATED_LINE.sub("", ta), GENERATED_LINE.sub("", tb)
            assert str(a) not in ta and str(a.parent) not in ta, "report.html names an absolute path"
            assert ta == tb, f"{rel}: differs beyond the generated: line"
        else:
            assert fa.read_bytes() == fb.read_bytes(), f"{rel}: bytes differ"
    return files_a


@pytest.mark.slow
def test_two_processes_with_the_same_seed_write_the_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _make_everything({a: "1", b: "2"})
    (run,) = (p.name for p in (a / "runs").iterdir())
    expected = {"pruned.safetensors", "target.safetensors", f"runs/{run}/config.json",
                f"runs/{run}/results.sqlite", f"runs/{run}/report.html", f"runs/{run}/summary.md"}
    files = _assert_same_artifacts(a, b, expected)
    figures = [f for f in files if f.startswith(f"runs/{run}/figures/")]
    assert len(figures) >= 6 and {f.rsplit(".", 1)[1] for f in figures} == {"png", "svg"}


@pytest.mark.slow
@pytest.mark.data
def test_two_experiment_processes_write_the_same_bytes(tmp_path: Path) -> None:
    """The real-data experiment: trained checkpoint, rows (less ``seconds``), report and figure."""
    from probprune.data import dataset_status

    if not dataset_status("mnist")["ready"]:
        if os.environ.get("CI") == "true":
            pytest.fail("mnist is not prepared — CI must prepare it (make data)")
        pytest.skip("mnist is not prepared (probprune data prepare mnist)")
    a, b = tmp_path / "a", tmp_path / "b"
    folders = {a: "3", b: "4"}
    for f in folders:
        f.mkdir()
    _cli_pair(folders, ["experiment", "mnist", "--quick", "--models", "lenet-300-100", "--methods", "random",
                        "--scopes", "layerwise", "--seeds", "0", "--epochs", "0.01", "--finetune-epochs", "0",
                        "--prune-fractions", "0.5", "--runs-dir", "runs", "--json"])
    (run,) = (p.name for p in (a / "runs").iterdir())
    _cli_pair(folders, ["report", f"{{cwd}}/runs/{run}", "--json"])
    expected = {f"runs/{run}/checkpoints/lenet-300-100-seed0.safetensors", f"runs/{run}/config.json",
                f"runs/{run}/results.sqlite", f"runs/{run}/report.html", f"runs/{run}/summary.md",
                f"runs/{run}/figures/accuracy_vs_sparsity.png", f"runs/{run}/figures/accuracy_vs_sparsity.svg"}
    _assert_same_artifacts(a, b, expected)
    # the experiment store closes in rollback-journal mode: nothing but the database is left behind
    assert not [p for p in (*a.rglob("*-wal"), *a.rglob("*-shm"))]
