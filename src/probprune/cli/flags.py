"""The flag tables of every command: how each short flag enters its config section.

One resolver (:func:`probprune.config.resolve`) serves every command: the section's dataclass defaults
(or a resumed run, or ``--config FILE|preset``), then the short flags by the command's table below, then
``--set key=value``, then one validation. A table maps a flag to a dotted field path, or to a path and a
parser of the flag's text; a *group* reads several flags at once (the pruning rule, the schedule, the
architecture of a model file). No maths here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Optional

import typer

from probprune.config import (
    MODELS,
    FlagGroup,
    FlagRule,
    NetSpec,
    ProbPruneError,
    PruneSpec,
    parse_arch,
    parse_law,
    resolve,
    to_dict,
)

__all__ = [
    "BOUND_FLAGS",
    "CERTIFY_FLAGS",
    "CONFIG_HELP",
    "EXPERIMENT_FLAGS",
    "GAP_FLAGS",
    "LEVELS",
    "PRUNE_FLAGS",
    "SCHEDULE_HELP",
    "VERIFY_FLAGS",
    "ConfigOpt",
    "SetOpt",
    "graph_job",
    "model_net",
    "parse_clip",
    "parse_schedule",
    "parse_widths",
    "refuse_c_alpha",
    "schedule_group",
    "verify_net",
    "verify_prunes",
]

CONFIG_HELP = ("TOML file of this command's settings (field = value, tables for sections), or the name of a "
               "packaged preset (verify: default, fixed-level, quick), usable from any folder.")
SCHEDULE_HELP = "Vanishing level c·h^-alpha, given as 'c,alpha' (c > 0, alpha in (0, 1))."

ConfigOpt = Annotated[Optional[str], typer.Option("--config", help=CONFIG_HELP)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override field=value of the resolved config (repeatable; see 'probprune config show').")]

#: The fixed pruning levels (exactly one per rule).
LEVELS: tuple[str, ...] = ("prune_fraction", "threshold", "relative_threshold", "p")
_DEFAULT_SCHEDULE = (1.0, 0.5)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:40]) + f"…({len(text)} characters)"


def _ints(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            return [int(t) for t in text.split(",") if t.strip()]
        except ValueError:  # not an integer, or more digits than int() converts
            raise ProbPruneError(f"{name}={_shown(text)}: expected comma-separated integers") from None
    return parse


def _floats(name: str) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            return [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ProbPruneError(f"{name}={_shown(text)}: expected comma-separated numbers") from None
    return parse


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _law(text: str) -> dict[str, Any]:
    return to_dict(parse_law(text))


def parse_widths(text: str) -> tuple[int, ...]:
    """``--widths 128,256`` → ``(128, 256)`` (hidden widths ≥ 1)."""
    toks = [t.strip() for t in text.split(",") if t.strip()]
    if not toks:
        raise ProbPruneError(f"--widths {text!r}: empty grid, give hidden widths like 128,256,512")
    try:
        ws = tuple(int(t) for t in toks)
    except ValueError:
        raise ProbPruneError(f"--widths {text!r}: widths must be integers") from None
    if any(w < 1 for w in ws):
        raise ProbPruneError(f"--widths {text!r}: widths must be >= 1")
    return ws


def parse_schedule(text: str) -> tuple[float, float]:
    """``--schedule 1,0.5`` → ``(c, alpha)`` of the level c·h^-alpha (ranges are the spec's check)."""
    parts = [t.strip() for t in text.split(",")]
    try:
        c, alpha = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        c = alpha = math.nan
    if math.isnan(c) or math.isnan(alpha):
        raise ProbPruneError(f"--schedule {text!r}: expected 'c,alpha' (level = c·h^-alpha)")
    return c, alpha


def parse_clip(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` → ``(LO, HI)`` (finite, LO < HI), or ``None``.

    >>> parse_clip("0,1")
    (0.0, 1.0)
    """
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ProbPruneError(f"clip={text!r}: must be LO,HI with finite numbers LO < HI (e.g. 0,1)")
    return lo, hi


def refuse_c_alpha(c: float | None, alpha: float | None) -> None:
    """The old ``--c``/``--alpha`` spelling of the schedule is refused with the one spelling to use."""
    if c is not None or alpha is not None:
        raise ProbPruneError(f"--c/--alpha (c={c!r}, alpha={alpha!r}): the schedule is one flag in every "
                             "command now: --schedule c,alpha (level = c·h^-alpha)")


def schedule_group(section: str = "prune") -> FlagGroup:
    """The group that turns ``--schedule c,alpha`` into ``<section>.schedule_c`` / ``schedule_alpha``."""
    def group(data: dict[str, Any], flags: Mapping[str, Any]) -> None:
        text = flags.get("schedule")
        if text is not None:
            c, alpha = parse_schedule(text)
            sec = data.setdefault(section, {})
            sec["schedule_c"], sec["schedule_alpha"] = c, alpha
    return group


def model_net(names: tuple[str, ...], loaded: dict[str, Any]) -> FlagGroup:
    """The group that sets ``net`` from ``--arch/--activation/--bias`` and the command's model files.

    An ONNX file among ``names`` carries its own architecture (flags given must agree); otherwise
    ``--arch`` (or ``net.arch`` in the config file) is needed. ONNX models read on the way go into
    ``loaded`` (option name → model), so that no file is read twice.
    """
    def group(data: dict[str, Any], flags: Mapping[str, Any]) -> None:
        from probprune.runner.prune import model_spec  # torch: only when the command runs

        net = data.get("net") if isinstance(data.get("net"), dict) else {}
        arch = flags.get("arch") if flags.get("arch") is not None else net.get("arch")  # type: ignore[union-attr]
        act = flags.get("activation") if flags.get("activation") is not None else \
            net.get("activation")  # type: ignore[union-attr]
        bias = flags.get("bias") if flags.get("bias") is not None else net.get("bias")  # type: ignore[union-attr]
        spec, models = model_spec(arch, act, bias, *((n, data.get(n)) for n in names))
        data["net"] = spec
        loaded.update(models)
    return group


def graph_job(cls: type, path: str, *, table: Mapping[str, FlagRule], flags: Mapping[str, Any],
              config: str | None, sets: list[str] | None, refused: Mapping[str, str],
              groups: tuple[FlagGroup, ...] = ()) -> Any:
    """A command's job section for an ONNX *graph* model, by the one resolver, as for a chain model.

    The same section (``PruneJob``, ``GapJob``), from the same ``--config FILE|preset``, flags (``table``) and
    ``--set``; only the architecture is not resolved: the graph model at ``path`` carries its own, so the
    section's ``net`` is a stand-in (:class:`~probprune.config.NetSpec` defaults) that the graph path never
    reads. A setting the graph path does not take (a key of ``refused``: ``net``, ``law`` …), given in the
    config file or by ``--set``, is refused in one line naming it; so is a ``weights`` other than ``path``.

    Args:
        cls: the section's dataclass.
        path: the graph model's file (the ``weights`` the chain reader refused).
        table, flags, config, sets, groups: as for :func:`probprune.config.resolve` (``groups`` run first).
        refused: section field → the words naming how it is given (for the message), e.g.
            ``{"law": "--law / law"}``.

    Raises:
        ProbPruneError: a refused setting, another ``weights``, or anything the section's own checks refuse.
    """
    where = f"not taken for an ONNX graph model (weights={path!r} carries its architecture and weights)"
    for item in sets or ():
        key, _, value = item.partition("=")
        head = key.strip().split(".")[0]
        if head in refused:
            raise ProbPruneError(f"{key.strip()}={value.strip()!r} (--set): {refused[head]} is {where}")

    def stand_in(data: dict[str, Any], _: Mapping[str, Any]) -> None:
        for name, how in refused.items():
            if data.get(name) is not None:
                raise ProbPruneError(f"{name}={data[name]!r}: {how} is {where}; leave it out of --config {config!r}"
                                     if config is not None else f"{name}={data[name]!r}: {how} is {where}")
        data["net"] = to_dict(NetSpec())

    job = resolve(cls, table=table, flags=flags, config=config, sets=list(sets or []), groups=(*groups, stand_in))
    if job.weights != path:  # type: ignore[attr-defined]
        raise ProbPruneError(f"weights={job.weights!r}: the ONNX graph model read is {path!r}; give the target "  # type: ignore[attr-defined]
                             "once, with --weights or weights in --config")
    return job


def verify_net(data: dict[str, Any], flags: Mapping[str, Any]) -> None:
    """``--arch`` replaces the architecture and clears the width grid; ``--widths`` sets the grid."""
    mc = data.setdefault("mc", {})
    if flags.get("arch") is not None:
        net = data.get("net") if isinstance(data.get("net"), dict) else {}
        data["net"] = to_dict(parse_arch(flags["arch"], activation=net.get("activation", "relu"),  # type: ignore[union-attr]
                                         bias=net.get("bias", False)))  # type: ignore[union-attr]
        mc["hidden_widths"] = []
    if flags.get("widths") is not None:
        mc["hidden_widths"] = list(parse_widths(flags["widths"]))


def verify_prunes(data: dict[str, Any], flags: Mapping[str, Any]) -> None:
    """The pruning-rule flags of ``verify``: a level or ``--schedule`` makes one rule; ``--method``,
    ``--scope``, ``--rescale`` alone edit (or filter) the rules of the config."""
    given = {k: flags[k] for k in LEVELS if flags.get(k) is not None}
    method, scope, rescale, schedule = (flags.get(k) for k in ("method", "scope", "rescale", "schedule"))
    if not (given or schedule is not None or method is not None or rescale is not None or scope is not None):
        return
    m = method if method is not None else ("random" if "p" in given else "magnitude")
    sc = scope if scope is not None else "layerwise"
    if given or schedule is not None:
        c, a = parse_schedule(schedule) if schedule is not None else (None, None)
        data["prunes"] = [{"method": m, "scope": sc, "rescale": bool(rescale), "schedule_c": c,
                           "schedule_alpha": a, **given}]
        return
    rules = data.get("prunes", [to_dict(PruneSpec())])
    rules = [rules] if isinstance(rules, Mapping) else list(rules)
    full = [{**to_dict(PruneSpec()), **r} if isinstance(r, Mapping) else r for r in rules]
    same = [r for r in full if method is None or r.get("method") == method]
    if same:
        data["prunes"] = [{**r, "scope": sc if scope is not None else r.get("scope"),
                           "rescale": r.get("rescale") if rescale is None else bool(rescale)} for r in same]
    else:
        c, a = _DEFAULT_SCHEDULE
        data["prunes"] = [{"method": m, "scope": sc, "rescale": bool(rescale), "schedule_c": c, "schedule_alpha": a}]


VERIFY_FLAGS: dict[str, FlagRule] = {
    "law": ("law", _law), "delta": "bound.delta", "eps": "bound.eps", "trials": "mc.n_trials",
    "chunk_size": "mc.chunk_size", "seed": "mc.seed", "device": "mc.device", "dtype": "mc.dtype",
    "matmul": "mc.matmul",
}
_PRUNE_RULE: dict[str, FlagRule] = {
    "method": "prune.method", "scope": "prune.scope", "rescale": "prune.rescale",
    **{k: f"prune.{k}" for k in LEVELS},
}
PRUNE_FLAGS: dict[str, FlagRule] = {
    **_PRUNE_RULE, "weights": "weights", "law": ("law", _law), "seed": "seed", "out": "out",
    "save_target": "save_target", "device": "device",
}
GAP_FLAGS: dict[str, FlagRule] = {
    "weights": "weights", "pruned": "pruned", "seed": "seed", "device": "device", "norm_method": "norm_method",
    **{k: f"gap.{k}" for k in ("radius", "n_points", "n_restarts", "n_steps", "step_size")},
}
BOUND_FLAGS: dict[str, FlagRule] = {
    **{k: v for k, v in _PRUNE_RULE.items() if k != "scope"}, "law": ("law", _law), "delta": "delta",
    "eps": "eps", "solve": "solve", "radius": "radius", "theorem": "theorem",
}
CERTIFY_FLAGS: dict[str, FlagRule] = {
    **{k: k for k in ("weights", "pruned", "data", "radius", "n_points", "norm", "arch", "activation", "bias",
                      "labels", "seed", "n_restarts", "n_steps", "out", "halfwidth", "split",
                      "optimise")},
    "clip": ("clip", parse_clip), "radii": ("radii", _floats("radii")),
}
EXPERIMENT_FLAGS: dict[str, FlagRule] = {
    "dataset": "dataset", "seeds": ("seeds", _ints("seeds")), "epochs": ("epochs", lambda e: dict.fromkeys(MODELS, e)),
    "finetune_epochs": "finetune_epochs", "finetune_lr": "finetune_lr", "weight_decay": "weight_decay",
    "models": ("models", _names), "prune_fractions": ("prune_fractions", _floats("prune_fractions")),
    "methods": ("methods", _names), "scopes": ("scopes", _names),
}
