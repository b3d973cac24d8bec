"""config: pinned hashes, TOML presets, overrides, bad keys and types (the run-folder contract)."""

from pathlib import Path

import pytest

from probprune.config import (
    MCSpec,
    ProbPruneError,
    PruneSpec,
    RunConfig,
    canonical_json,
    config_hash,
    from_dict,
    load_toml,
    with_overrides,
)
from probprune.runner.verify import DEFAULT_CONFIG

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_pinned_hashes() -> None:
    # A changed hash orphans every stored run: new fields must default to a no-op.
    assert canonical_json(RunConfig()) == "{}"
    assert config_hash(RunConfig()) == "44136fa355b3678a"
    assert config_hash(RunConfig(mc=MCSpec(n_trials=5))) == "1bd80baf2f28380a"
    assert config_hash(RunConfig(prunes=(PruneSpec(method="random", p=0.1, rescale=True),))) == "7cc0ab3346f3b8b6"
    # changed once, deliberately (issue 13): mc.chunk_size is an execution setting and no longer enters the
    # hash; the default job was "924e138acb4010b4" before, and runs stored under that hash are refused
    assert config_hash(DEFAULT_CONFIG) == "0428b3f2f155e282"


def test_new_mc_fields_default_to_no_op() -> None:
    assert config_hash(RunConfig(mc=MCSpec(confidence=0.95, eps_scale=1.0))) == config_hash(RunConfig())
    assert config_hash(RunConfig(mc=MCSpec(eps_scale=0.1))) != config_hash(RunConfig())


def test_default_toml_is_the_embedded_default() -> None:
    assert load_toml(str(CONFIGS / "default.toml")) == DEFAULT_CONFIG


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_preset_loads_and_expands(path: Path) -> None:
    from probprune.montecarlo import expand_grid

    cfg = load_toml(str(path))
    assert expand_grid(cfg)
    assert from_dict(__import__("json").loads(canonical_json(cfg))) == cfg  # round trip through config.json


def test_overrides() -> None:
    cfg = with_overrides(DEFAULT_CONFIG, ["mc.n_trials=7", "mc.hidden_widths=[64,128]", "prunes.1.schedule_c=2.0",
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
            with_overrides(DEFAULT_CONFIG, [item])


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
