"""What a report reads from a run folder, in one normalised shape.

The report layer (figures, HTML, summary) never recomputes results: it reads what the
run's store holds — per-trial rows, per-grid-point summaries, fitted slopes (Monte Carlo
runs, ``store.runs``) and per-setting rows of the real-data experiment
(``store.experiments``) — and plots them. This module gathers those into one
:class:`ReportData`, with the key names the report uses, whatever spelling the writers
chose (the ``_ALIASES`` table maps them).

Terms (``DESIGN.md``): ``prune_fraction`` = share of weights **removed**; ``sparsity`` = the
same share as measured; gap = ``sup_{‖x‖≤r} ‖f(x) − F(x)‖₂`` (output units).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from probprune.config import ProbPruneError
from probprune.store.runs import VERDICT_VALUES

__all__ = [
    "POINT_KEYS",
    "TIMING_FIELDS",
    "VERDICTS",
    "ReportData",
    "experiment_expected",
    "load_report_data",
    "normalise_experiment",
    "normalise_point",
    "normalise_slope",
    "normalise_trial",
    "series_label",
]

# canonical report key -> other spellings a writer may use (first found wins)
_ALIASES: dict[str, tuple[str, ...]] = {
    "width": ("width", "h", "hidden_width"),
    "method": ("method",),
    "scope": ("scope",),
    "level_name": ("level_name", "level"),
    "level_value": ("level_value", "level_val"),
    "rescale": ("rescale",),
    "n_trials": ("n_trials", "n", "n_done"),
    "gap_lower_median": ("gap_lower_median", "gap_median", "lower_median", "median_gap_lower"),
    "gap_lower_quantile": ("gap_lower_quantile", "gap_lower_q", "gap_quantile", "lower_quantile",
                           "q_gap_lower", "gap_lower_q1md"),
    "gap_upper_median": ("gap_upper_median", "upper_median", "certified_median", "median_gap_upper"),
    "rel_gap_lower_median": ("rel_gap_lower_median", "rel_gap_median"),
    "eps": ("eps", "eps_delta", "epsilon"),
    "coverage": ("coverage", "cover", "p_hat"),
    "cp_low": ("cp_low", "coverage_low", "ci_low", "cover_low"),
    "cp_high": ("cp_high", "coverage_high", "ci_high", "cover_high"),
    "passed": ("passed", "pass", "ok"),
    "verdict": ("verdict",),
    "n_trials_to_confirm": ("n_trials_to_confirm",),
    "tightness": ("tightness", "tightness_ratio", "ratio"),
    "theory_exponent": ("theory_exponent",),  # λ of gap ∝ h^{−λ} (positive; the theory's slope is −λ)
    "sparsity": ("sparsity", "sparsity_median", "measured_sparsity"),
    "delta": ("delta",),
    "confidence": ("confidence",),
}

POINT_KEYS: tuple[str, ...] = tuple(_ALIASES)

#: The store's wall-clock fields, by table: ``meta`` keys (``created``, ``finished``: UTC times) and
#: columns (``seconds``: time spent on a trial / chunk / setting). They are the only stored values that
#: differ between two runs of the same config and seed — every other row and column is a function of
#: the config — so a comparison of two runs leaves exactly these out, and the report does not show them.
TIMING_FIELDS: Mapping[str, tuple[str, ...]] = {
    "meta": ("created", "finished"),
    "trials": ("seconds",),
    "experiment": ("seconds",),
}


def _pick(row: Mapping[str, Any], key: str) -> Any:
    for name in _ALIASES.get(key, (key,)):
        if name in row:
            return row[name]
    return None


def _num(v: Any) -> float | None:
    """A finite float, or ``None`` for missing / non-finite values."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


#: The three verdicts of a grid point (the tuple ``store.runs.VERDICT_VALUES``): the Clopper–Pearson interval
#: of the coverage lies above 1 − δ (*confirmed*), contains it (*consistent*), lies below it (*refuted*).
VERDICTS: tuple[str, ...] = VERDICT_VALUES


def _three_way(v: Any, passed: bool | None, low: float | None, high: float | None,
               delta: float | None) -> str | None:
    """A point's verdict: the stored one; for rows written without one, ``refuted`` where they say failed,
    else the one their interval implies (``None`` without an interval)."""
    if isinstance(v, str) and v.strip().lower() in VERDICTS:
        return v.strip().lower()
    if passed is False:
        return "refuted"
    if passed is True and low is not None and high is not None and delta is not None:
        return "confirmed" if low > 1.0 - delta else "consistent"
    return None


def _passed(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("pass", "passed", "true", "ok", "yes"):
            return True
        if s in ("fail", "failed", "false", "no"):
            return False
        return None
    return bool(v)


def _level(row: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """(level name, value): ``level`` may be a name, a ``{name: value}`` dict or a pair."""
    name = row.get("level_name")
    value = _num(row.get("level_value"))
    lv = row.get("level")
    if isinstance(lv, Mapping) and lv:
        name = str(lv.get("name", next(iter(lv)))) if "name" in lv else str(next(iter(lv)))
        value = _num(lv.get("value", lv.get(name)))
    elif isinstance(lv, (list, tuple)) and len(lv) == 2:
        name, value = str(lv[0]), _num(lv[1])
    elif isinstance(lv, str) and name is None:
        name = lv
    elif _num(lv) is not None and value is None:
        value = _num(lv)
    return (None if name is None else str(name)), value


def series_label(method: str, scope: str | None, rescale: bool | None) -> str:
    """Legend label of a pruning rule, e.g. ``random (rescaled), global``.

    >>> series_label("random", "layerwise", True)
    'random (rescaled)'
    """
    s = str(method) + (" (rescaled)" if rescale else "")
    return s if scope in (None, "layerwise") else f"{s}, {scope}"


def normalise_point(row: Mapping[str, Any]) -> dict[str, Any]:
    """One grid-point summary with the report's key names (numbers as floats, missing → None)."""
    name, value = _level(row)
    out: dict[str, Any] = {
        "width": int(_pick(row, "width")) if _pick(row, "width") is not None else None,
        "method": str(_pick(row, "method") or "?"),
        "scope": str(_pick(row, "scope") or "layerwise"),
        "level_name": name,
        "level_value": value,
        "rescale": bool(_pick(row, "rescale") or False),
    }
    n = _pick(row, "n_trials")
    out["n_trials"] = int(n) if _num(n) is not None else None
    for k in ("gap_lower_median", "gap_lower_quantile", "gap_upper_median", "rel_gap_lower_median", "eps",
              "coverage", "cp_low", "cp_high", "tightness", "theory_exponent", "sparsity", "delta", "confidence"):
        out[k] = _num(_pick(row, k))
    out["passed"] = _passed(_pick(row, "passed"))
    out["verdict"] = _three_way(_pick(row, "verdict"), out["passed"], out["cp_low"], out["cp_high"], out["delta"])
    if out["passed"] is None and out["verdict"] is not None:
        out["passed"] = out["verdict"] != "refuted"  # passed = not refuted (weaker than confirmed)
    m = _num(_pick(row, "n_trials_to_confirm"))
    out["n_trials_to_confirm"] = int(m) if m is not None else None
    out["label"] = series_label(out["method"], out["scope"], out["rescale"])
    return out


def normalise_trial(row: Mapping[str, Any]) -> dict[str, Any]:
    """One trial row with the report's key names."""
    name, value = _level(row)
    out: dict[str, Any] = dict(row)
    out.update({
        "width": int(_pick(row, "width")) if _pick(row, "width") is not None else None,
        "method": str(_pick(row, "method") or "?"),
        "scope": str(_pick(row, "scope") or "layerwise"),
        "level_name": name,
        "level_value": value,
        "rescale": bool(_pick(row, "rescale") or False),
        "gap_lower": _num(row.get("gap_lower")),
        "gap_upper": _num(row.get("gap_upper")),
        "eps": _num(_pick(row, "eps")),
        "sparsity": _num(row.get("sparsity")),
    })
    out["label"] = series_label(out["method"], out["scope"], out["rescale"])
    return out


def normalise_slope(row: Mapping[str, Any]) -> dict[str, Any]:
    """One fitted slope (d log gap / d log h) with the theory's exponent λ (gap ∝ h^{−λ}, slope −λ)."""
    return {
        "method": str(row.get("method", "?")),
        "scope": str(row.get("scope") or "layerwise"),
        "rescale": bool(row.get("rescale") or False),
        "quantity": str(row.get("quantity", "gap_lower")),
        "slope": _num(row.get("slope", row.get("fitted_slope"))),
        "rel_slope": _num(row.get("rel_slope")),
        "theory_exponent": _num(_pick(row, "theory_exponent")),
        "label": series_label(str(row.get("method", "?")), row.get("scope"), bool(row.get("rescale") or False)),
    }


def normalise_experiment(row: Mapping[str, Any]) -> dict[str, Any]:
    """One real-data setting (dataset, model, method, scope, prune_fraction, finetuned, seed, accuracy …)."""
    acc = _num(row.get("test_accuracy", row.get("accuracy")))
    return {
        "dataset": str(row.get("dataset", "?")),
        "model": str(row.get("model", "?")),
        "method": str(row.get("method", "?")),
        "scope": str(row.get("scope") or "layerwise"),
        "prune_fraction": _num(row.get("prune_fraction")),
        "finetuned": bool(row.get("finetuned") or False),
        "seed": row.get("seed"),
        "test_accuracy": acc,
        "dense_accuracy": _num(row.get("dense_accuracy")),
        "gap_upper": _num(row.get("gap_upper")),
        "gap_lower": _num(row.get("gap_lower")),
        "mean_test_gap": _num(row.get("mean_test_gap")),
        "max_test_gap": _num(row.get("max_test_gap")),
        "radius": _num(row.get("radius")),
        "sparsity": _num(row.get("sparsity")),
    }


def experiment_expected(config: Mapping[str, Any]) -> int | None:
    """Settings an experiment config asks for: models × seeds × prune_fractions × methods × scopes × (1 or 2).

    The second factor 2 is the fine-tuned copy of every setting (``finetune_epochs > 0``); the product
    mirrors ``runner.experiment.ExperimentSpec.n_settings`` (the store cannot import the runner).
    ``None`` when the stored config lacks one of the lists.

    >>> experiment_expected({"models": ["a", "b"], "seeds": [0], "prune_fractions": [0, .5, .9],
    ...                      "methods": ["random", "magnitude"], "scopes": ["layerwise", "global"],
    ...                      "finetune_epochs": 0.1})
    48
    """
    n = 1
    for key in ("models", "seeds", "prune_fractions", "methods", "scopes"):
        v = config.get(key)
        if not isinstance(v, (list, tuple)):
            return None
        n *= len(v)
    ft = _num(config.get("finetune_epochs"))
    if ft is None:
        return None
    return n * (2 if ft > 0 else 1)


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows about one run folder (read, never recomputed).

    Attributes:
        run_dir: the run folder.
        config: the stored config as plain JSON data (``config.json``).
        config_hash: the run's hash (folder name) or ``None``.
        status: ``complete`` or ``partial`` (trials / settings still missing).
        n_done, n_expected: what is stored / what the config asks for (``None`` if unknown): trials of a
            Monte Carlo run, settings of a real-data experiment (see :attr:`kind`).
        delta: failure probability δ of the probabilistic bound (``None`` if none).
        points, trials, slopes: Monte Carlo results (normalised, see ``normalise_*``).
        experiment: real-data rows (normalised).
        versions: library versions / devices recorded in the results.
        meta: the run's stored metadata (created, version, device …).
    """

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    status: Literal["complete", "partial"] = "complete"
    n_done: int = 0
    n_expected: int | None = None
    delta: float | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    slopes: list[dict[str, Any]] = field(default_factory=list)
    experiment: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["verify", "experiment"]:
        """Which run this is: a Monte Carlo check (``verify``) or a real-data experiment (``experiment``)."""
        if self.config.get("kind") == "experiment" or (self.experiment and not (self.points or self.trials)):
            return "experiment"
        return "verify"

    @property
    def unit(self) -> str:
        """What :attr:`n_done` counts: ``trials`` or ``settings``."""
        return "settings" if self.kind == "experiment" else "trials"

    @property
    def empty(self) -> bool:
        """No trial, grid point or experiment row to show."""
        return not (self.trials or self.experiment or any(p.get("n_trials") for p in self.points))

    @classmethod
    def from_rows(cls, run_dir: str | Path, *, config: Mapping[str, Any] | None = None,
                  points: Sequence[Mapping[str, Any]] = (), trials: Sequence[Mapping[str, Any]] = (),
                  slopes: Sequence[Mapping[str, Any]] = (), experiment: Sequence[Mapping[str, Any]] = (),
                  status: str = "complete", n_done: int | None = None, n_expected: int | None = None,
                  delta: float | None = None, config_hash: str | None = None,
                  meta: Mapping[str, str] | None = None) -> ReportData:
        """Build from raw rows (any supported spelling), normalising each one."""
        cfg = dict(config or {})
        tr = [normalise_trial(t) for t in trials]
        if delta is None:
            bound = cfg.get("bound")
            delta = _num(bound.get("delta", 0.05)) if isinstance(bound, Mapping) else None
            if delta is None and (points or trials) and "bound" not in cfg:
                delta = 0.05  # the config's default δ (BoundSpec) when the stored config omits it
        if status not in ("complete", "partial"):
            raise ProbPruneError(f"status={status!r}: must be complete or partial")
        versions: dict[str, list[str]] = {}
        for key in ("version", "device", "dtype"):
            vals = sorted({str(t[key]) for t in trials if t.get(key) is not None})
            if vals:
                versions[key] = vals
        return cls(run_dir=Path(run_dir), config=cfg, config_hash=config_hash,
                   status=status,  # type: ignore[arg-type]
                   n_done=len(tr) if n_done is None else int(n_done), n_expected=n_expected, delta=delta,
                   points=[normalise_point(p) for p in points], trials=tr,
                   slopes=[normalise_slope(s) for s in slopes],
                   experiment=[normalise_experiment(e) for e in experiment], versions=versions,
                   meta=dict(meta or {}))


def _call(module: str, name: str, *args: Any) -> Any:
    """Call ``probprune.store.<module>.<name>(*args)``; ``None`` when that reader does not exist."""
    try:
        mod = importlib.import_module(f"probprune.store.{module}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("probprune"):
            return None
        raise
    fn = getattr(mod, name, None)
    return None if fn is None else fn(*args)


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


def _plain_config(cfg: Any, run_dir: Path) -> dict[str, Any]:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if cfg is not None and hasattr(cfg, "__dataclass_fields__"):
        from probprune.config import to_dict

        return to_dict(cfg)
    path = run_dir / "config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ProbPruneError(f"run_dir={str(run_dir)!r}: config.json is not readable JSON ({e})") from None
        return dict(data) if isinstance(data, Mapping) else {}
    return {}


def load_report_data(run_dir: str | Path) -> ReportData:
    """Read one run folder through the store's readers (Monte Carlo and/or real-data results).

    Raises:
        ProbPruneError: ``run_dir`` is not a folder.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise ProbPruneError(f"run_dir={str(run_dir)!r}: not a directory")
    info = None
    points: list[Any] = []
    trials: list[Any] = []
    slopes: list[Any] = []
    is_experiment = bool(_call("experiments", "is_experiment_dir", d))
    if (d / "results.sqlite").is_file() and not is_experiment:
        info = _call("runs", "open_run", d)
        grid = {int(g["grid_index"]): dict(g) for g in (_call("runs", "read_grid", d) or [])}
        by_prune = {int(g["prune_index"]): g for g in grid.values() if g.get("prune_index") is not None}
        # trial rows name their grid point only by index: take the rule (scope, rescale, level) from the grid
        trials = [{**{k: v for k, v in grid.get(int(t.get("grid_index", -1)), {}).items()
                      if k in ("scope", "rescale", "level_name", "level_value", "prune_index")}, **dict(t)}
                  for t in (_call("runs", "read_trials", d) or [])]
        points = list(_call("runs", "read_points", d) or [])
        slopes = [{**{k: v for k, v in by_prune.get(int(s["prune_index"]), {}).items() if k in ("scope", "rescale")},
                   **dict(s)} if s.get("prune_index") is not None else dict(s)
                  for s in (_call("runs", "read_slopes", d) or [])]
    experiment = list(_call("experiments", "read_experiment", d) or []) if is_experiment else []
    cfg = _plain_config(_get(info, "config"), d)
    status = str(_get(info, "status") or "complete")
    n_done = _get(info, "n_done")
    n_expected = _get(info, "n_expected")
    if is_experiment:
        # an experiment stores one row per setting: count those against the settings its config asks for
        n_done, n_expected = len(experiment), experiment_expected(cfg)
        status = "partial" if n_expected is not None and n_done < n_expected else "complete"
    delta = None
    bound = cfg.get("bound")
    if isinstance(bound, Mapping):
        delta = _num(bound.get("delta"))
    h = _get(info, "hash", "config_hash")
    meta = _get(info, "meta")
    return ReportData.from_rows(
        d, config=cfg, points=[dict(p) for p in points], trials=[dict(t) for t in trials],
        slopes=[dict(s) for s in slopes], experiment=[dict(e) for e in experiment],
        status="partial" if status == "partial" else "complete",
        n_done=None if n_done is None else int(n_done), n_expected=None if n_expected is None else int(n_expected),
        delta=delta, config_hash=str(h) if h is not None else (d.name if (d / "config.json").is_file() else None),
        meta={str(k): str(v) for k, v in meta.items()} if isinstance(meta, Mapping) else None)
