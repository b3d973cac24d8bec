"""IDX files, dataset folders, preparation refusals, LeNets, training with fixed masks (no real data needed)."""

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probprune.bounds import certified_gap_bound
from probprune.config import ProbPruneError, PruneSpec, TrainSpec, parse_arch
from probprune.data import (
    IDX_FILES,
    MD5,
    accuracy,
    as_net,
    data_dir,
    dataset_dir,
    decode_idx,
    encode_idx,
    init_module,
    inputs_for,
    lenet_spec,
    load_dataset,
    read_idx,
    train,
    write_idx,
)
from probprune.masks import prune
from probprune.nets import from_module, to_module
from probprune.runner.dataprep import _NumpyOnly, mnist_from_pickle, prepare_dataset

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


# ------------------------------------------------------------------ IDX encoding


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_idx_round_trip(dtype: type, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    back = decode_idx(encode_idx(arr))
    assert back.dtype == np.dtype(dtype) and back.shape == tuple(shape)
    np.testing.assert_array_equal(back, arr)
    # gzip-compressed bytes decode the same
    np.testing.assert_array_equal(decode_idx(gzip.compress(encode_idx(arr))), arr)


def test_idx_header_is_the_standard_one() -> None:
    # the MNIST label file header: magic 0x00000801, count
    data = encode_idx(np.array([7, 2, 1], dtype=np.uint8))
    assert data[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 3]) and data[8:] == bytes([7, 2, 1])
    img = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert img[:16] == bytes.fromhex("00000803" "00000002" "0000001c" "0000001c") and len(img) == 16 + 2 * 784


def test_write_and_read_files(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a" / "x-idx3-ubyte", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a" / "x-idx3-ubyte"), arr)
    (tmp_path / "x.gz").write_bytes(gzip.compress(encode_idx(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x-idx3-ubyte"]  # no temporary left


@pytest.mark.parametrize("cut, what", [(0, "truncated IDX file"), (3, "truncated IDX file"),
                                       (10, "truncated IDX header"), (30, "truncated IDX data")])
def test_truncated_files_name_the_file(tmp_path: Path, cut: int, what: str) -> None:
    data = encode_idx(np.zeros((2, 4, 4), dtype=np.uint8))
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(data[:cut])
    with pytest.raises(ProbPruneError, match=what) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_corrupt_files(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(ProbPruneError, match="not an IDX file"):
        read_idx(p)
    p.write_bytes(encode_idx(np.zeros(3, dtype=np.uint8)) + b"\x01")
    with pytest.raises(ProbPruneError, match="trailing data"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))  # unknown type code
    with pytest.raises(ProbPruneError, match="not an IDX file"):
        read_idx(p)
    p.write_bytes(gzip.compress(encode_idx(np.zeros(3, dtype=np.uint8)))[:-6])
    with pytest.raises(ProbPruneError, match="corrupt gzip"):
        read_idx(p)
    with pytest.raises(ProbPruneError, match="file not found"):
        read_idx(tmp_path / "nope")


def test_unwritable_target_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ProbPruneError, match="cannot write"):
        write_idx(blocker / "x-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    assert blocker.read_text() == "not a folder"


def test_encode_rejects_unsupported_dtype() -> None:
    with pytest.raises(ProbPruneError, match="dtype"):
        encode_idx(np.zeros(2, dtype=np.complex64))


# ------------------------------------------------------------------ dataset folders


def _fake_dataset(folder: Path, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    write_idx(folder / IDX_FILES["train_images"], rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / IDX_FILES["train_labels"], rng.integers(0, 10, n_train, dtype=np.uint8))
    write_idx(folder / IDX_FILES["test_images"], rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(folder / IDX_FILES["test_labels"], rng.integers(0, 10, n_test, dtype=np.uint8))


def test_data_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROBPRUNE_DATA", str(tmp_path / "d"))
    assert data_dir() == tmp_path / "d"
    assert dataset_dir("mnist") == tmp_path / "d" / "mnist"
    monkeypatch.delenv("PROBPRUNE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "probprune" / "data"
    with pytest.raises(ProbPruneError, match="dataset='cifar'"):
        dataset_dir("cifar")


def test_missing_dataset_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ProbPruneError, match="probprune data prepare fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_md5_mismatch_refused_on_load(tmp_path: Path) -> None:
    _fake_dataset(tmp_path / "mnist")
    with pytest.raises(ProbPruneError, match="train-images-idx3-ubyte: md5 .* canonical"):
        load_dataset("mnist", tmp_path)
    ds = load_dataset("mnist", tmp_path, verify=False)  # structure alone is fine
    assert ds.train_images.shape == (6, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_labels.dtype == torch.int64


def test_mismatched_counts_refused(tmp_path: Path) -> None:
    _fake_dataset(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX_FILES["test_labels"], np.zeros(3, dtype=np.uint8))
    with pytest.raises(ProbPruneError, match="test images .* labels"):
        load_dataset("mnist", tmp_path, verify=False)


# ------------------------------------------------------------------ preparation refusals


def test_prepare_from_dir_refuses_wrong_md5_and_writes_nothing(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    _fake_dataset(src)
    with pytest.raises(ProbPruneError, match="train-images-idx3-ubyte has md5 .* refusing"):
        prepare_dataset("mnist", src, root=root)
    assert not (root / "mnist").exists() or not any((root / "mnist").iterdir())


def test_prepare_from_dir_missing_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _fake_dataset(src)
    (src / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(ProbPruneError, match="t10k-labels-idx1-ubyte: missing"):
        prepare_dataset("fashion-mnist", src, root=tmp_path / "root")
    with pytest.raises(ProbPruneError, match="not a directory"):
        prepare_dataset("mnist", tmp_path / "nowhere", root=tmp_path / "root")


def test_prepare_from_dir_truncated_file_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _fake_dataset(src)
    p = src / IDX_FILES["train_images"]
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ProbPruneError, match="train-images-idx3-ubyte: truncated IDX data"):
        prepare_dataset("mnist", src, root=tmp_path / "root")


def test_prepare_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ProbPruneError, match="dataset='svhn'"):
        prepare_dataset("svhn", root=tmp_path)


def test_mnist_pickle_must_match_pinned_hash() -> None:
    # a pickle that would run code if unpickled: it is refused before unpickling (hash check)
    evil = gzip.compress(pickle.dumps(os.getcwd))
    with pytest.raises(ProbPruneError, match="refusing to unpickle"):
        mnist_from_pickle(evil)


def test_unpickler_admits_numpy_arrays_only() -> None:
    arr = np.arange(4, dtype=np.float32)
    back = _NumpyOnly(io.BytesIO(pickle.dumps((arr, np.arange(2)), protocol=3))).load()
    np.testing.assert_array_equal(back[0], arr)
    with pytest.raises(ProbPruneError, match="refuses to load posix.getcwd|refuses to load os.getcwd"):
        _NumpyOnly(io.BytesIO(pickle.dumps(os.getcwd))).load()


def test_canonical_md5_table() -> None:
    assert set(MD5) == {"mnist", "fashion-mnist"}
    for table in MD5.values():
        assert sorted(table) == sorted(IDX_FILES.values())
        assert all(len(v) == 32 for v in table.values())


# ------------------------------------------------------------------ models and training


def test_lenet_specs() -> None:
    fc, cnn = lenet_spec("lenet-300-100"), lenet_spec("lenet-5")
    assert fc.widths == (784, 300, 100, 10) and fc.bias and fc.activation == "relu"
    n_fc = sum(int(np.prod(s)) for s in fc.weight_shapes())
    assert n_fc == 266_200  # + 410 biases = 266 610 ≈ Han et al.'s 267K
    assert cnn.weight_shapes() == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
    with pytest.raises(ProbPruneError, match="model='vgg'"):
        lenet_spec("vgg")


def test_lenet5_is_a_net_and_certified_bound_applies() -> None:
    spec = lenet_spec("lenet-5")
    module = init_module(spec, torch.Generator().manual_seed(0))
    net = from_module(module, input_shape=(1, 28, 28))
    assert net.spec == spec
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(net(x), module(x))
    pruned = prune(net, PruneSpec(prune_fraction=0.7, scope="global")).model
    r = float(x.flatten(1).norm(dim=-1).max())
    gaps = (pruned(x) - net(x)).norm(dim=-1)
    assert float(certified_gap_bound(net, pruned, radius=r).value) >= float(gaps.max())


def test_init_is_seeded_and_in_torch_default_range() -> None:
    spec = parse_arch("fcn:8,6,3", bias=True)
    a = init_module(spec, torch.Generator().manual_seed(5))
    b = init_module(spec, torch.Generator().manual_seed(5))
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    w0 = a.state_dict()["0.weight"]
    assert float(w0.abs().max()) <= 1 / np.sqrt(8)


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


def test_train_learns_is_deterministic_and_leaves_input_alone() -> None:
    x, y = _toy()
    spec = parse_arch("fcn:8,32,3", bias=True)
    m0 = init_module(spec, torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in m0.state_dict().items()}
    ts = TrainSpec(epochs=20, batch_size=50, lr=1e-2)
    m1 = train(m0, x, y, ts, torch.Generator().manual_seed(2))
    m2 = train(m0, x, y, ts, torch.Generator().manual_seed(2))
    for k, v in m0.state_dict().items():
        assert torch.equal(v, before[k])
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert accuracy(m0, x, y) < 0.8 < accuracy(m1, x, y)


def test_finetune_keeps_removed_weights_zero() -> None:
    x, y = _toy()
    spec = parse_arch("fcn:8,32,3", bias=True)
    net = as_net(init_module(spec, torch.Generator().manual_seed(1)), spec)
    res = prune(net, PruneSpec(prune_fraction=0.6, scope="layerwise"))
    tuned = train(to_module(res.model), x, y, TrainSpec(epochs=5, batch_size=40, lr=1e-2),
                  torch.Generator().manual_seed(0), masks=res.masks)
    tuned_net = as_net(tuned, spec)
    for name, w in zip(tuned_net.names, tuned_net.weights):
        assert bool((w[~res.masks[name]] == 0).all()), name
    changed = [not torch.equal(a, b) for a, b in zip(tuned_net.weights, res.model.weights)]
    assert all(changed)  # the kept weights did train


def test_train_bad_input() -> None:
    x, y = _toy()
    m = init_module(parse_arch("fcn:8,4,3", bias=True), torch.Generator().manual_seed(0))
    with pytest.raises(ProbPruneError, match="masks: 'nope'"):
        train(m, x, y, TrainSpec(), torch.Generator(), masks={"nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ProbPruneError, match="masks: '0.weight' has shape"):
        train(m, x, y, TrainSpec(), torch.Generator(), masks={"0.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ProbPruneError, match="inputs and"):
        train(m, x, y[:3], TrainSpec(), torch.Generator())
    for bad in ({"epochs": 0}, {"epochs": float("nan")}, {"batch_size": 0}, {"lr": -1.0}):
        with pytest.raises(ProbPruneError):
            TrainSpec(**bad)  # type: ignore[arg-type]


def test_inputs_scaling() -> None:
    imgs = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    fc = inputs_for(imgs, parse_arch("fcn:4,2"))
    torch.testing.assert_close(fc, torch.tensor([[0.0, 1.0, 0.2, 0.4]]))
    assert inputs_for(imgs, parse_arch("cnn:1x2x2,c2k1,3")).shape == (1, 1, 2, 2)
