"""One resolver for every command: ``--config FILE|preset`` and ``--set key=value`` beside the short flags.

For each command the same settings given as flags, as a TOML file and as ``--set`` resolve to the same job
(the same JSON document); flags override the file, ``--set`` overrides both; a bad ``--set`` is one line
``error: …`` naming the key and the value, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cliharness import run


def _doc(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run(args, capsys)
    assert code == 0, err
    return json.loads(out)


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(args, capsys)
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _toml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_prune_flags_file_and_set_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = _doc(["prune", "--arch", "fcn:8,32,4", "--law", "uniform:K=2", "--seed", "3", "--method", "random",
                  "--p", "0.4", "--rescale", "--json"], capsys)
    cfg = _toml(tmp_path / "p.toml", 'seed = 3\n[net]\narch = "fcn:8,32,4"\n[law]\nkind = "uniform"\nscale = 2.0\n'
                                     '[prune]\nmethod = "random"\np = 0.4\nrescale = true\n')
    from_file = _doc(["prune", "--config", cfg, "--json"], capsys)
    assert from_file == flags
    via_set = _doc(["prune", "--arch", "fcn:8,32,4", "--law", "uniform:K=2", "--method", "random", "--p", "0.1",
                    "--set", "seed=3", "--set", "prune.p=0.4", "--set", "prune.rescale=true", "--json"], capsys)
    assert via_set == flags
    # a flag overrides the file; --set overrides the flag
    assert _doc(["prune", "--config", cfg, "--seed", "4", "--json"], capsys)["config"]["seed"] == 4
    assert _doc(["prune", "--config", cfg, "--seed", "4", "--set", "seed=5", "--json"], capsys)["config"]["seed"] == 5


def test_bound_flags_file_and_set_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--method", "random", "--solve", "min-width", "--eps", "0.5", "--json"]
    flags = _doc(["bound", "--arch", "fcn:16,64,64,4", "--schedule", "0.5,0.5", *args], capsys)
    cfg = _toml(tmp_path / "b.toml", 'eps = 0.5\nsolve = "min-width"\n[net]\narch = "fcn:16,64,64,4"\n'
                                     '[prune]\nmethod = "random"\nschedule_c = 0.5\nschedule_alpha = 0.5\n')
    assert _doc(["bound", "--config", cfg, "--json"], capsys) == flags
    assert _doc(["bound", "--arch", "fcn:16,64,64,4", "--schedule", "0.9,0.5", "--set", "prune.schedule_c=0.5",
                 *args], capsys) == flags


def test_gap_and_certify_take_config_and_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, p = tmp_path / "t.safetensors", tmp_path / "p.safetensors"
    assert run(["prune", "--arch", "fcn:6,12,3", "--law", "uniform", "--prune-fraction", "0.5", "--out", str(p),
                "--save-target", str(t)], capsys)[0] == 0
    flags = _doc(["gap", "--arch", "fcn:6,12,3", "--weights", str(t), "--pruned", str(p), "--n-points", "16",
                  "--n-restarts", "1", "--n-steps", "2", "--seed", "2", "--json"], capsys)
    cfg = _toml(tmp_path / "g.toml", f'weights = "{t}"\npruned = "{p}"\nseed = 2\n[net]\narch = "fcn:6,12,3"\n'
                                     '[gap]\nn_points = 16\nn_restarts = 1\nn_steps = 2\n')
    assert _doc(["gap", "--config", cfg, "--json"], capsys) == flags
    assert _doc(["gap", "--config", cfg, "--set", "seed=9", "--json"], capsys)["config"]["seed"] == 9
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((3, 6)).astype(np.float32))
    base = ["certify", "--weights", str(t), "--pruned", str(p), "--arch", "fcn:6,12,3", "--data", str(x)]
    flags = _doc([*base, "--radius", "0.1", "--n-points", "3", "--n-restarts", "1", "--n-steps", "2", "--json"],
                 capsys)
    via_set = _doc([*base, "--radius", "0.1", "--set", "n_points=3", "--set", "n_restarts=1", "--set", "n_steps=2",
                    "--json"], capsys)
    flags["summary"].pop("seconds")
    via_set["summary"].pop("seconds")
    assert via_set == flags


def test_experiment_and_verify_dry_runs_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _toml(tmp_path / "e.toml", 'seeds = [0, 1]\nmodels = ["lenet-5"]\n')
    a = run(["experiment", "mnist", "--seeds", "0,1", "--models", "lenet-5", "--runs-dir", str(tmp_path),
             "--dry-run"], capsys)
    b = run(["experiment", "mnist", "--config", cfg, "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    c = run(["experiment", "mnist", "--models", "lenet-5", "--set", "seeds=[0,1]", "--runs-dir", str(tmp_path),
             "--dry-run"], capsys)
    assert a[0] == b[0] == c[0] == 0 and a[1] == b[1] == c[1] and a[1]
    v1 = run(["verify", "--config", "quick", "--trials", "3", "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    v2 = run(["verify", "--config", "quick", "--set", "mc.n_trials=3", "--runs-dir", str(tmp_path), "--dry-run"],
             capsys)
    assert v1[0] == v2[0] == 0 and v1[1] == v2[1]


@pytest.mark.parametrize("args,needle", [
    (["verify", "--set", "mc.trials=-1"], "mc.trials=-1"),
    (["verify", "--set", "mc.n_trials=-1"], "mc.n_trials=-1"),
    (["prune", "--arch", "fcn:4,8,2", "--law", "uniform", "--p", "0.1", "--method", "random", "--set",
      "prune.p=-1"], "p=-1"),
    (["prune", "--arch", "fcn:4,8,2", "--law", "uniform", "--prune-fraction", "0.1", "--set", "nope=1"],
     "nope=1"),
    (["bound", "--arch", "fcn:16,64,64,4", "--relative-threshold", "0.1", "--set", "delta=2"], "delta=2"),
    (["experiment", "mnist", "--set", "seeds=[-1]"], "seeds=-1"),
    (["experiment", "mnist", "--set", "epochs.lenet-5=0", "--dry-run"], "epochs=0"),
])
def test_a_bad_set_is_one_line_naming_key_and_value(args: list[str], needle: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in _error(args, capsys)


def test_a_config_file_of_another_command_is_refused_naming_the_key(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _toml(tmp_path / "v.toml", "[mc]\nn_trials = 5\n")
    line = _error(["bound", "--arch", "fcn:16,64,64,4", "--relative-threshold", "0.1", "--config", cfg], capsys)
    assert "mc" in line and "unknown key" in line


def test_every_header_hash_is_the_one_config_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probprune.config import LawSpec, PruneJob, PruneSpec, config_hash, parse_arch

    job = PruneJob(net=parse_arch("fcn:4,8,2"), prune=PruneSpec(prune_fraction=0.5), law=LawSpec(scale=2.0))
    lines = []
    for out in ("a.safetensors", "b.safetensors"):  # the output path is an execution field: same hash
        code, stdout, _ = run(["prune", "--arch", "fcn:4,8,2", "--law", "uniform:K=2", "--prune-fraction", "0.5",
                               "--out", str(tmp_path / out), "--dry-run"], capsys)
        assert code == 0
        lines.append(stdout.splitlines()[0])
    assert all(f"| config {config_hash(job)} |" in line for line in lines)
    code, stdout, _ = run(["prune", "--arch", "fcn:4,8,2", "--law", "uniform:K=2", "--prune-fraction", "0.6",
                           "--dry-run"], capsys)
    assert code == 0 and config_hash(job) not in stdout
