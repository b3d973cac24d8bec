"""Real MNIST / Fashion-MNIST (prepared by ``probprune data prepare``, as ``.ci/run`` does).

Skipped only when the data is missing **and** ``CI`` is not ``"true"``; under CI a missing
dataset is a failure.
"""

import os
from pathlib import Path

import pytest
import torch

from probprune.bounds import certified_gap_bound
from probprune.config import ExperimentSpec, GapSpec, ProbPruneError, PruneSpec, TrainSpec
from probprune.data import (
    accuracy,
    as_net,
    dataset_status,
    init_module,
    inputs_for,
    lenet_spec,
    load_dataset,
    predict,
    train,
)
from probprune.gap import mean_gap, sup_gap
from probprune.masks import prune
from probprune.runner.dataprep import prepare_dataset
from probprune.runner.experiment import run_experiment, summarize
from probprune.store.experiments import read_experiment

pytestmark = pytest.mark.data


def _need(name: str) -> None:
    if dataset_status(name)["ready"]:
        return
    msg = f"{name} is not prepared (probprune data prepare {name})"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " — CI must prepare it (make data)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def mnist_fc() -> dict[str, object]:
    """One epoch of LeNet-300-100 on MNIST (Adam, lr 3e-3, batch 100, cosine decay; seed 0)."""
    _need("mnist")
    ds = load_dataset("mnist")
    spec = lenet_spec("lenet-300-100")
    g = torch.Generator().manual_seed(0)
    module = train(init_module(spec, g), inputs_for(ds.train_images, spec), ds.train_labels,
                   TrainSpec(epochs=1, lr=3e-3), g)
    return {"ds": ds, "spec": spec, "net": as_net(module, spec), "x": inputs_for(ds.test_images, spec)}


def test_one_epoch_lenet_300_100_reaches_95_percent(mnist_fc: dict[str, object]) -> None:
    ds, net, x = mnist_fc["ds"], mnist_fc["net"], mnist_fc["x"]
    acc = accuracy(net, x, ds.test_labels)  # type: ignore[arg-type, attr-defined]
    assert acc >= 0.95, acc


def test_magnitude_half_keeps_accuracy_and_bound_covers_test_gap(mnist_fc: dict[str, object]) -> None:
    ds, target, x = mnist_fc["ds"], mnist_fc["net"], mnist_fc["x"]
    y = ds.test_labels  # type: ignore[attr-defined]
    dense = accuracy(target, x, y)  # type: ignore[arg-type]
    pruned = prune(target, PruneSpec(prune_fraction=0.5)).model  # type: ignore[arg-type]
    assert pruned.n_params() == target.n_params()  # type: ignore[attr-defined]
    acc = accuracy(pruned, x, y)  # type: ignore[arg-type]
    assert abs(acc - dense) <= 0.02, (dense, acc)
    # the certified bound over the ball of radius max ||x|| covers every test input's gap
    xx = x.double()  # type: ignore[attr-defined]
    radius = float(xx.flatten(1).norm(dim=-1).max())
    t64, p64 = target.to(dtype=torch.float64), pruned.to(dtype=torch.float64)  # type: ignore[attr-defined]
    gaps = (predict(p64, xx) - predict(t64, xx)).norm(dim=-1)
    upper = float(certified_gap_bound(t64, p64, radius=radius).value)
    assert upper >= float(gaps.max()) > 0
    # the library's mean test gap agrees with this one, and the empirical sup stays below the bound
    torch.testing.assert_close(float(mean_gap(t64, p64, xx)), float(gaps.mean()), rtol=1e-9, atol=0)
    lower = float(sup_gap(t64, p64, GapSpec(radius=radius, n_points=256, n_restarts=2, n_steps=10),
                          torch.Generator().manual_seed(0)).value)
    assert lower <= upper


def test_fashion_mnist_loads() -> None:
    _need("fashion-mnist")
    ds = load_dataset("fashion-mnist")
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert sorted(ds.test_labels.unique().tolist()) == list(range(10))
    assert int(ds.train_labels.bincount().min()) == 6000  # balanced classes


def test_prepare_from_dir_copies_a_verified_dataset(tmp_path: Path) -> None:
    _need("mnist")
    src = Path(str(dataset_status("mnist")["path"]))
    res = prepare_dataset("mnist", src, root=tmp_path)
    assert res.source == str(src) and not res.already
    again = prepare_dataset("mnist", root=tmp_path)
    assert again.already
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ProbPruneError, match="cannot write"):  # e.g. no space / not a folder: one clear error
        prepare_dataset("mnist", src, root=blocker)
    assert load_dataset("mnist", tmp_path).train_images.shape == (60000, 28, 28)


@pytest.mark.slow
def test_experiment_end_to_end_and_resume(tmp_path: Path) -> None:
    _need("mnist")
    spec = ExperimentSpec(models=("lenet-300-100",), prune_fractions=(0.0, 0.9), seeds=(0,), scopes=("global",),
                          epochs={"lenet-300-100": 0.1}, finetune_epochs=0.05, gap_points=64, gap_restarts=2,
                          gap_steps=5, test_limit=1000)
    out = run_experiment(spec, tmp_path)
    assert out.computed == spec.n_settings() == 8 and len(out.rows) == 8
    rows = read_experiment(out.run_dir)
    assert rows == out.rows
    for r in rows:
        assert 0 <= r["gap_lower"] <= r["gap_upper"], r
        assert r["max_test_gap"] <= r["gap_lower"] + 1e-9 and r["mean_test_gap"] <= r["max_test_gap"]
        if r["prune_fraction"] == 0 and not r["finetuned"]:
            assert r["gap_upper"] == 0 and r["test_accuracy"] == r["dense_accuracy"]
        if r["prune_fraction"] == 0.9:
            assert r["n_kept"] == round(0.1 * r["n_weights"])  # fine-tuning kept the mask
    assert (out.run_dir / "checkpoints" / "lenet-300-100-seed0.safetensors").is_file()
    assert (out.run_dir / "checkpoints" / "lenet-300-100-seed0.json").is_file()
    again = run_experiment(spec, tmp_path)
    assert again.computed == 0 and again.rows == rows
    summ = summarize(rows)
    assert len(summ) == 8 and all(s["n_seeds"] == 1 for s in summ)  # one seed: one row per setting
    with pytest.raises(ProbPruneError, match="dataset"):
        ExperimentSpec(dataset="cifar")
