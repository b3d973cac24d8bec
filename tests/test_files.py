"""probprune.files: the one atomic write (umask, fsync, rename, no temporary left) every layer uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import probprune.data
import probprune.nets.onnx
import probprune.store
import probprune.store.checkpoint
from probprune import files
from probprune.config import ProbPruneError


def test_every_layer_writes_through_the_one_implementation() -> None:
    assert probprune.store.atomic_write_bytes is files.atomic_write_bytes
    assert probprune.store.atomic_write_text is files.atomic_write_text
    for module in (probprune.data, probprune.nets.onnx, probprune.store.checkpoint):
        assert module.atomic_write_bytes is files.atomic_write_bytes, module.__name__  # type: ignore[attr-defined]


def test_write_makes_folders_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "x.bin"
    files.atomic_write_bytes(p, b"one")
    files.atomic_write_text(p, "twö")
    assert p.read_bytes() == "twö".encode()
    assert sorted(q.name for q in p.parent.iterdir()) == ["x.bin"]


def test_temporary_files_follow_the_umask_and_sit_beside_the_target(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        fd, name = files.temp_beside(tmp_path / "t.json")
        os.close(fd)
    finally:
        os.umask(old)
    tmp = Path(name)
    assert tmp.parent == tmp_path and tmp.name.startswith(".t.json.") and tmp.name.endswith(".tmp")
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()  # os.replace of a file onto a folder fails after the data was written
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, b"new")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["d"]
    assert (target / "keep").read_text() == "x"


def test_an_interrupt_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(tmp_path / "y.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_callers_still_turn_os_errors_into_one_named_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ProbPruneError, match=r"x-idx1-ubyte: cannot write"):
        probprune.data.write_idx(blocker / "x-idx1-ubyte", np.zeros(2, dtype=np.uint8))
