"""Files probprune writes get the permissions the process umask allows (not mkstemp's forced 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from probprune.report import write_report
from probprune.store import atomic_write_bytes, atomic_write_text, save_tensors
from reportrows import experiment, report

UMASKS = ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664))


@pytest.fixture(params=UMASKS, ids=lambda u: f"umask{u[0]:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under the given umask (restored afterwards); yields the mode files must get."""
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    atomic_write_text(tmp_path / "a.txt", "hello\n")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    assert _mode(tmp_path / "a.txt") == umask
    assert _mode(tmp_path / "sub" / "b.bin") == umask
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


def test_overwrite_takes_the_umask_mode_too(tmp_path: Path, umask: int) -> None:
    p = tmp_path / "c.json"
    p.write_text("old")
    os.chmod(p, 0o600)
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == umask


def test_checkpoints_follow_the_umask(tmp_path: Path, umask: int) -> None:
    save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(2, 3)}, {"arch": "x"})
    assert _mode(tmp_path / "w.safetensors") == umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_reports_and_figures_follow_the_umask(tmp_path: Path, umask: int) -> None:
    rows = [experiment(dataset="mnist", model="lenet300", method="magnitude", scope="layerwise",
                       prune_fraction=pf, finetuned=False, seed=0, test_accuracy=0.9 - 0.1 * pf)
            for pf in (0.0, 0.5)]
    path = write_report(report(tmp_path, experiment=rows, config={"kind": "experiment"}))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert path in written and (tmp_path / "summary.md") in written
    assert any(p.suffix == ".png" for p in written) and any(p.suffix == ".svg" for p in written)
    assert {p.name: _mode(p) for p in written} == {p.name: umask for p in written}


def test_data_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    import numpy as np

    from probprune.data import write_idx

    path = tmp_path / "x-idx1-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))
    assert stat.S_IMODE(path.stat().st_mode) == umask
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_onnx_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    pytest.importorskip("onnx")
    from probprune.config import NetSpec
    from probprune.nets import Net
    from probprune.nets.onnx import save_onnx

    net = Net.from_weights(NetSpec(widths=(3, 4, 2)), [torch.ones(4, 3), torch.ones(2, 4)])
    path = tmp_path / "m.onnx"
    save_onnx(net, path)
    assert stat.S_IMODE(path.stat().st_mode) == umask
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
