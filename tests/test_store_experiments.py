"""Experiment run folders: one row per setting, no duplicates, config guard, read-back."""

from pathlib import Path

import pytest

from probprune.config import ProbPruneError
from probprune.records import ExperimentRow
from probprune.store.experiments import ExperimentStore, is_experiment_dir, read_experiment, read_experiment_config


def _row(**kw: object) -> ExperimentRow:
    base: dict[str, object] = {"dataset": "mnist", "model": "lenet-5", "method": "magnitude", "scope": "global",
                               "prune_fraction": 0.9, "finetuned": True, "seed": 0, "test_accuracy": 0.98,
                               "gap_upper": 3.0, "gap_lower": 1.0, "mean_test_gap": 0.2, "radius": 9.5}
    base.update(kw)
    return ExperimentRow(**base)  # type: ignore[arg-type]


def test_write_read_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "abc"
    with ExperimentStore(run, {"dataset": "mnist", "seeds": [0]}) as st:
        st.add(_row())
        st.add(_row(seed=1, finetuned=False, test_accuracy=0.5))
        st.add(_row(test_accuracy=0.1))  # same key: ignored, the first value stays
        assert st.done() == {ExperimentStore.key(_row()), ExperimentStore.key(_row(seed=1, finetuned=False))}
    rows = read_experiment(run)
    assert len(rows) == 2
    # ordered by key: finetuned False (seed 1) before finetuned True (seed 0)
    assert rows[0]["finetuned"] is False and rows[0]["seed"] == 1 and rows[0]["test_accuracy"] == 0.5
    assert rows[1]["finetuned"] is True and rows[1]["test_accuracy"] == 0.98
    assert rows[1]["gap_upper"] == 3.0 and rows[1]["dense_accuracy"] is None
    assert is_experiment_dir(run) and read_experiment_config(run)["kind"] == "experiment"
    with ExperimentStore(run, {"dataset": "mnist", "seeds": [0]}) as st:  # same config: reopens
        assert len(st.done()) == 2


def test_refusals(tmp_path: Path) -> None:
    run = tmp_path / "r"
    ExperimentStore(run, {"dataset": "mnist"}).close()
    with pytest.raises(ProbPruneError, match="different experiment config"):
        ExperimentStore(run, {"dataset": "fashion-mnist"})
    with ExperimentStore(run, {"dataset": "mnist"}) as st, pytest.raises(ProbPruneError, match="seed"):
        st.add(_row(seed=None))
    with pytest.raises(ProbPruneError, match="no results.sqlite"):
        read_experiment(tmp_path / "empty")
    assert not is_experiment_dir(tmp_path / "empty")
    with pytest.raises(ProbPruneError, match="not an experiment run"):
        read_experiment_config(tmp_path / "empty")


def test_a_folder_of_an_older_hash_rule_is_refused_on_open_and_resume(tmp_path: Path) -> None:
    import json

    run = tmp_path / "old"
    with ExperimentStore(run, {"dataset": "mnist"}) as st:
        st.add(_row())
    cfg_file = run / "config.json"
    doc = json.loads(cfg_file.read_text())
    assert doc["hash_rule"] == 2
    del doc["hash_rule"]  # as written before issue 14 (hash rule 1: every field hashed)
    cfg_file.write_text(json.dumps(doc))
    msg = rf"run folder '{run}' was made by an older probprune \(hash rule 1; this one uses 2\); re-run it"
    for call in (lambda: read_experiment(run), lambda: read_experiment_config(run),
                 lambda: ExperimentStore(run, {"dataset": "mnist"})):
        with pytest.raises(ProbPruneError, match=msg):
            call()


def test_a_folder_of_an_older_results_rule_is_read_but_not_resumed(tmp_path: Path) -> None:
    import json

    run = tmp_path / "old"
    with ExperimentStore(run, {"dataset": "mnist"}) as st:
        st.add(_row())
    cfg_file = run / "config.json"
    doc = json.loads(cfg_file.read_text())
    assert doc["results_rule"] == 2
    del doc["results_rule"]  # as written before session 6 (results rule 1: the earlier gap search)
    cfg_file.write_text(json.dumps(doc))
    assert len(read_experiment(run)) == 1  # its rows stay readable as what that version computed
    with pytest.raises(ProbPruneError, match=r"results rule 1 .* will not append to it"):
        ExperimentStore(run, {"dataset": "mnist"})


def test_with_a_hash_the_stored_hash_decides_sameness(tmp_path: Path) -> None:
    run = tmp_path / "h"
    ExperimentStore(run, {"dataset": "mnist"}, hash="abc").close()
    # the same hash with a config that gained a field (at its default, so outside the hash): reopens
    ExperimentStore(run, {"dataset": "mnist", "new_knob": 1.0}, hash="abc").close()
    with pytest.raises(ProbPruneError, match="different experiment config"):
        ExperimentStore(run, {"dataset": "mnist"}, hash="abd")


def test_markdown_tables_one_per_model_with_mean_and_std() -> None:
    from probprune.cli.experiment import markdown_tables
    from probprune.runner.experiment import summarize

    rows = []
    for seed, acc in ((0, 0.90), (1, 0.92)):
        for ft, bump in ((False, 0.0), (True, 0.05)):
            rows.append({"dataset": "mnist", "model": "lenet-300-100", "method": "magnitude", "scope": "global",
                         "prune_fraction": 0.9, "finetuned": ft, "seed": seed, "test_accuracy": acc + bump,
                         "dense_accuracy": 0.98, "gap_upper": 10.0, "gap_lower": 2.0, "mean_test_gap": 0.5,
                         "n_kept": 26620, "n_weights": 266200})
    text = markdown_tables(summarize(rows))
    lines = text.splitlines()
    assert lines[0] == "#### lenet-300-100 (2 seeds)"
    row = next(ln for ln in lines if ln.startswith("| magnitude"))
    assert row.startswith("| magnitude | global | 0.9 | 26620 | 91.00 ± 1.41 | 96.00 ± 1.41 | 2 / 10 | 0.5 |")
