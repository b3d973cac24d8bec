"""config: pinned hashes, TOML presets, overrides, bad keys and types (the run-folder contract)."""

from pathlib import Path

import pytest

from probprune.config import (
    HASH_RULE,
    ExperimentSpec,
    MCSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    canonical_json,
    config_hash,
    default_config,
    from_dict,
    load_toml,
    with_overrides,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_pinned_hashes() -> None:
    # A changed hash orphans every stored run: new fields must default to a no-op.
    assert canonical_json(RunConfig()) == "{}"
    # changed once, deliberately (issue 14, hash rule 2): the hashed text names the section kind and the rule,
    # so configs of different commands never share a folder. Rule 1 gave, in order: 44136fa355b3678a,
    # 1bd80baf2f28380a, 7cc0ab3346f3b8b6 and (the default job) 0428b3f2f155e282; such runs are refused.
    assert HASH_RULE == 2
    assert config_hash(RunConfig()) == "3b76612531ce75aa"
    assert config_hash(RunConfig(mc=MCSpec(n_trials=5))) == "ed0102ab72ceae70"
    assert config_hash(RunConfig(prunes=(PruneSpec(method="random", p=0.1, rescale=True),))) == "9ad07477bc091587"
    assert config_hash(default_config()) == "d532fd7e38716ac9"


def test_experiment_hash_covers_non_default_fields_only() -> None:
    # rule 1 hashed every field of an experiment (any new field renamed every folder); rule 2: non-defaults
    assert canonical_json(ExperimentSpec()) == "{}"
    assert ExperimentSpec().hash == config_hash(ExperimentSpec()) == "6396dd1986cf2526"
    assert ExperimentSpec.quick().hash == "f1d3323685c269f2"
    assert ExperimentSpec(seeds=(0, 1, 2), test_limit=None).hash == ExperimentSpec().hash
    assert ExperimentSpec(seeds=(0,)).hash != ExperimentSpec().hash
    # the same (empty) non-default form under two kinds: two hashes
    assert config_hash(ExperimentSpec()) != config_hash(RunConfig())


def test_a_new_field_at_its_default_changes_no_hash() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Later(ExperimentSpec):  # the experiment spec as a later release might grow it
        new_knob: float = 1.0

    assert Later().hash == ExperimentSpec().hash
    assert Later(seeds=(0,)).hash == ExperimentSpec(seeds=(0,)).hash
    assert Later(new_knob=2.0).hash != ExperimentSpec().hash


def test_every_section_round_trips_and_hashes_under_its_kind() -> None:
    from probprune.config import (
        SECTIONS,
        BoundJob,
        CertifyJob,
        GapJob,
        LawSpec,
        PruneJob,
        hash_kind,
        parse_arch,
        to_dict,
    )

    net = parse_arch("fcn:4,8,2")
    examples = [RunConfig(), ExperimentSpec.quick(), PruneJob(net=net, prune=PruneSpec(p=0.2, method="random"),
                                                              law=LawSpec(scale=2.0), out="x.onnx"),
                GapJob(net=net, weights="t.onnx", pruned="p.onnx"),
                BoundJob(net=net, law=LawSpec(), prune=PruneSpec(relative_threshold=0.1), delta=0.1),
                CertifyJob(weights="t.onnx", pruned="p.onnx", data="mnist", radius=0.1, clip=(0.0, 1.0))]
    assert sorted(SECTIONS) == sorted(hash_kind(x) for x in examples)
    hashes = set()
    for x in examples:
        assert SECTIONS[hash_kind(x)] is type(x)
        assert from_dict(to_dict(x), type(x)) == x
        assert from_dict(__import__("json").loads(canonical_json(x)), type(x)) == x
        hashes.add(config_hash(x))
    assert len(hashes) == len(examples)


def test_jobs_validate_once_naming_field_and_value() -> None:
    from probprune.config import BoundJob, CertifyJob, GapJob, LawSpec, parse_arch

    net = parse_arch("fcn:4,8,2")
    for make, needle in [
        (lambda: BoundJob(net=net, law=LawSpec(), prune=PruneSpec(relative_threshold=0.1), delta=0.0), "delta=0.0"),
        (lambda: BoundJob(net=net, law=LawSpec(), prune=PruneSpec(relative_threshold=0.1), eps=-1.0), "eps=-1.0"),
        (lambda: GapJob(net=net, weights="t.onnx", pruned="p.onnx", norm_method="nope"), "norm_method='nope'"),
        (lambda: GapJob(net=net, weights="t.onnx", pruned="p.onnx", device="tpu"), "device='tpu'"),
        (lambda: CertifyJob(weights="t.onnx", pruned="p.onnx", data="mnist", radius=0.1, norm="l1"), "norm='l1'"),
        (lambda: CertifyJob(weights="t.pt", pruned="p.onnx", data="mnist", radius=0.1), "weights='t.pt'"),
    ]:
        with pytest.raises(ProbPruneError, match=needle):
            make()


def test_new_mc_fields_default_to_no_op() -> None:
    assert config_hash(RunConfig(mc=MCSpec(confidence=0.95, eps_scale=1.0))) == config_hash(RunConfig())
    assert config_hash(RunConfig(mc=MCSpec(eps_scale=0.1))) != config_hash(RunConfig())


def test_default_config_is_the_papers_fcn_setting() -> None:
    cfg = default_config()  # the packaged preset probprune/configs/default.toml
    assert load_toml(str(CONFIGS / "default.toml")) == cfg
    assert cfg.net.widths == (16, 128, 128, 4) and cfg.law.kind == "uniform" and abs(cfg.law.scale - 6 ** 0.5) < 1e-15
    assert [(r.method, r.schedule_c, r.schedule_alpha) for r in cfg.prunes] == [("magnitude", 1.0, 0.5),
                                                                               ("random", 1.0, 0.5)]
    assert (cfg.gap.n_points, cfg.gap.n_restarts, cfg.gap.n_steps, cfg.bound.delta) == (512, 4, 10, 0.05)
    assert (cfg.mc.n_trials, cfg.mc.hidden_widths, cfg.mc.chunk_size) == (20, (128, 256, 512, 1024, 2048), 10)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_loads_and_expands(path: Path) -> None:
    from probprune.montecarlo import expand_grid

    cfg = load_toml(str(path))
    assert expand_grid(cfg)
    assert from_dict(__import__("json").loads(canonical_json(cfg))) == cfg  # round trip through config.json


def test_overrides() -> None:
    cfg = with_overrides(default_config(), ["mc.n_trials=7", "mc.hidden_widths=[64,128]", "prunes.1.schedule_c=2.0",
                                          "bound.delta=0.1", "net.arch=fcn:8,32,32,2"])
    assert cfg.mc.n_trials == 7 and cfg.mc.hidden_widths == (64, 128)
    assert cfg.prunes[1].schedule_c == 2.0 and cfg.prunes[0].schedule_c == 1.0
    assert cfg.bound.delta == 0.1 and cfg.net.widths == (8, 32, 32, 2)


@pytest.mark.parametrize("text,needle", [
    ("[mc]\nn_trails = 5\n", "n_trails"),
    ('[mc]\nn_trials = "5"\n', "n_trials"),
    ("[mc]\nn_trials = 0\n", "n_trials"),
    ("[mc]\nhidden_widths = [0]\n", "hidden_widths"),
    ("[mc]\neps_scale = 0\n", "eps_scale"),
    ("[mc]\nconfidence = 1.0\n", "confidence"),
    ("[mc]\ndevice = \"tpu\"\n", "device"),
    ("[bound]\ndelta = 0\n", "delta"),
    ("[gap]\nradius = -1\n", "radius"),
    ("[extra]\nx = 1\n", "extra"),
    ("prunes = []\n", "prunes"),
    ("[[prunes]]\nmethod = \"random\"\nrelative_threshold = 0.1\n", "relative_threshold"),
    ("[net]\narch = \"fcn:16\"\n", "widths"),
])
def test_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ProbPruneError, match=needle):
        load_toml(str(f))


def test_bad_overrides() -> None:
    for item, needle in [("mc.nope=1", "nope"), ("nope.x=1", "nope"), ("mc.n_trials", "section.field=value"),
                         ("prunes.5.p=0.1", "5"), ("mc.n_trials=-1", "n_trials")]:
        with pytest.raises(ProbPruneError, match=needle):
            with_overrides(default_config(), [item])


def test_oversized_config_refused_once(tmp_path: Path) -> None:
    """A file too large to be a config is refused as such, not re-wrapped as invalid TOML."""
    f = tmp_path / "big.toml"
    f.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ProbPruneError) as info:
        load_toml(str(f))
    assert str(info.value) == f"config={str(f)!r}: not a regular file of at most {1 << 20} bytes"


def test_package_version_is_the_one_version_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import probprune
    from probprune.config import package_version
    from probprune.report.html import environment
    from probprune.runner.certificate import _versions
    from probprune.runner.verify import library_version

    assert package_version("probprune") == probprune.__version__
    assert package_version("no-such-distribution-probprune-test") == "0+unknown"
    assert package_version("no-such-distribution-probprune-test", "not installed") == "not installed"

    def fake(name: str) -> str:
        if name == "probprune":
            return "9.9.9"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    # runs, certificates and reports all record what the one lookup returns
    assert library_version() == _versions()["probprune"] == environment()["probprune"] == "9.9.9"
    assert environment()["numpy"] == "not installed"
