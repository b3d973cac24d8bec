"""Frozen, validated configuration values, their canonical JSON form and hash.

Every spec validates itself in ``__post_init__`` and raises :class:`ProbPruneError`
(a ``ValueError``) naming the field and the bad value. This module imports the
standard library only, so every other layer can depend on it.

Terms (see ``DESIGN.md``): ``prune_fraction`` is the share of weights **removed**
(in [0, 1]); ``density = 1 - sparsity`` is the share kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "EXECUTION_FIELDS",
    "EXPERIMENT_EPOCHS",
    "EXPERIMENT_PRUNE_FRACTIONS",
    "FORWARDS",
    "HASH_RULE",
    "MAX_SEED",
    "MIN_DELTA",
    "MODELS",
    "RESULTS_RULE",
    "SECTIONS",
    "BallSpec",
    "BoundJob",
    "BoundSpec",
    "CertifyJob",
    "ConvSpec",
    "ExecutionPolicy",
    "ExperimentSpec",
    "GapJob",
    "GapSpec",
    "LawSpec",
    "MCSpec",
    "NetSpec",
    "ProbPruneError",
    "PruneJob",
    "PruneSpec",
    "RunConfig",
    "TrainSpec",
    "canonical_json",
    "check_seed",
    "config_file",
    "config_hash",
    "default_config",
    "from_dict",
    "hash_kind",
    "json_safe",
    "layer_scale",
    "load_toml",
    "package_version",
    "parse_arch",
    "parse_law",
    "presets",
    "read_toml",
    "resolve",
    "to_dict",
    "with_overrides",
]

SQRT6 = math.sqrt(6.0)
#: The real-data experiment's grid of prune fractions (share of weights removed).
EXPERIMENT_PRUNE_FRACTIONS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: Dense training epochs per model of the real-data experiment (Adam, cosine decay).
EXPERIMENT_EPOCHS: dict[str, float] = {"lenet-300-100": 6.0, "lenet-5": 8.0}

#: Largest seed: SQLite's INTEGER (signed 64-bit) stores every seed a run records.
MAX_SEED = 2 ** 63 - 1
#: Smallest failure probability δ: δ split over the bound's events stays a positive normal float.
MIN_DELTA = 1e-300


class ProbPruneError(ValueError):
    """The one error type of probprune: its message names the field and the bad value."""


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by a string: ``"inf"``, ``"-inf"`` or ``"nan"``.

    Strict JSON has no Infinity or NaN; a bound that is infinite (no finite certificate) is
    reported as the string ``"inf"`` so that every ``--json`` document parses everywhere.

    >>> json_safe({"upper": float("inf"), "xs": [1.0, float("nan")]})
    {'upper': 'inf', 'xs': [1.0, 'nan']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def package_version(name: str, missing: str = "0+unknown") -> str:
    """The installed version of the distribution ``name`` (e.g. ``probprune``), or ``missing``.

    The one version lookup: runs, certificates, reports and ``probprune --version`` record the
    same string (``missing`` when the distribution is not installed, e.g. a bare source tree).

    >>> package_version("no-such-distribution-probprune-test")
    '0+unknown'
    """
    import importlib.metadata  # here, not at the top: it costs ~50 ms of every `--help` (issue 17)

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return missing


ActivationName = Literal["relu", "leaky_relu", "tanh", "sigmoid", "identity"]
ACTIVATIONS: tuple[str, ...] = get_args(ActivationName)
LawKind = Literal["uniform", "gaussian"]
Method = Literal["magnitude", "random"]
Scope = Literal["layerwise", "global"]
PaddingMode = Literal["zeros", "circular"]
Dtype = Literal["float32", "float64"]
Matmul = Literal["fp32", "tf32"]
Forward = Literal["auto", "batched", "members"]
#: The forms of an ensemble forward (:class:`ExecutionPolicy`).
FORWARDS: tuple[str, ...] = get_args(Forward)


def _fail(name: str, value: Any, why: str) -> ProbPruneError:
    return ProbPruneError(f"{name}={value!r}: {why}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, value, f"must be one of {', '.join(choices)}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, "must be an integer")
    if value < minimum:
        raise _fail(name, value, f"must be >= {minimum}")


def check_seed(name: str, value: Any) -> None:
    """A seed is an integer in [0, :data:`MAX_SEED`] (it is stored as an SQLite INTEGER).

    >>> check_seed("seed", 2 ** 63 - 1)  # the largest; 2 ** 63 raises ProbPruneError
    """
    _check_int(name, value, 0)
    if value > MAX_SEED:
        raise _fail(name, value, f"must be <= {MAX_SEED} (a signed 64-bit integer)")


def _check_real(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, "must be a number")
    if not math.isfinite(value):
        raise _fail(name, value, "must be finite")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise _fail(name, value, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise _fail(name, value, f"must be {'<' if hi_open else '<='} {hi}")


# --------------------------------------------------------------------------- nets


@dataclass(frozen=True)
class ConvSpec:
    """One convolutional layer of a CNN: ``c_out`` channels, ``kernel``×``kernel``.

    Args:
        out_channels: output channels c_out (>= 1).
        kernel: square kernel size k (>= 1).
        stride: stride s (>= 1).
        padding: zero/circular padding on each side; ``None`` means ``kernel // 2``.
        padding_mode: ``zeros`` or ``circular``.
        pool: side of a non-overlapping max-pool after the activation (1 = none).
    """

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int | None = None
    padding_mode: PaddingMode = "zeros"
    pool: int = 1

    def __post_init__(self) -> None:
        _check_int("conv.out_channels", self.out_channels, 1)
        _check_int("conv.kernel", self.kernel, 1)
        _check_int("conv.stride", self.stride, 1)
        if self.padding is not None:
            _check_int("conv.padding", self.padding, 0)
            if self.padding == self.kernel // 2:  # one spelling per geometry (stable hashes, equality)
                object.__setattr__(self, "padding", None)
        _check_choice("conv.padding_mode", self.padding_mode, get_args(PaddingMode))
        _check_int("conv.pool", self.pool, 1)

    @property
    def pad(self) -> int:
        """Padding actually used on each side."""
        return self.kernel // 2 if self.padding is None else self.padding


@dataclass(frozen=True)
class NetSpec:
    """Architecture of a target network (FCN or CNN), with no weights.

    FCN: ``widths = (h_0, h_1, ..., h_l)`` including input and output widths
    (paper: ``W_i ∈ R^{h_i × h_{i-1}}``). CNN: ``input_shape = (C, H, W)``, ``convs``
    then a linear head whose widths (after the flatten, output last) are ``widths``.

    Args:
        kind: ``fcn`` or ``cnn``.
        widths: FCN: all widths, >= 2 entries; CNN: head widths, >= 1 entry.
        input_shape: CNN input (C, H, W); ``None`` for an FCN.
        convs: CNN conv layers; empty for an FCN.
        activation: hidden activation (the last layer has none).
        negative_slope: slope of ``leaky_relu`` for negative inputs.
        bias: whether layers carry biases (the paper's nets are bias-free).
    """

    kind: Literal["fcn", "cnn"] = "fcn"
    widths: tuple[int, ...] = (16, 128, 128, 4)
    input_shape: tuple[int, int, int] | None = None
    convs: tuple[ConvSpec, ...] = ()
    activation: ActivationName = "relu"
    negative_slope: float = 0.01
    bias: bool = False

    def __post_init__(self) -> None:
        _check_choice("net.kind", self.kind, ("fcn", "cnn"))
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "convs", tuple(
            c if isinstance(c, ConvSpec) else ConvSpec(**c) for c in self.convs
        ))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for w in self.widths:
            _check_int("net.widths", w, 1)
        _check_choice("net.activation", self.activation, ACTIVATIONS)
        _check_real("net.negative_slope", self.negative_slope, 0.0, 1.0)
        if not isinstance(self.bias, bool):
            raise _fail("net.bias", self.bias, "must be true or false")
        if self.kind == "fcn":
            if len(self.widths) < 2:
                raise _fail("net.widths", self.widths, "an FCN needs at least input and output widths")
            if self.convs or self.input_shape is not None:
                raise _fail("net.convs", self.convs, "an FCN has no conv layers or input_shape")
        else:
            if self.input_shape is None or len(self.input_shape) != 3:
                raise _fail("net.input_shape", self.input_shape, "a CNN needs (C, H, W)")
            for s in self.input_shape:
                _check_int("net.input_shape", s, 1)
            if not self.convs:
                raise _fail("net.convs", self.convs, "a CNN needs at least one conv layer")
            if len(self.widths) < 1:
                raise _fail("net.widths", self.widths, "a CNN needs at least the output width")
            c, h, w = self.input_shape
            for i, conv in enumerate(self.convs):
                h = (h + 2 * conv.pad - conv.kernel) // conv.stride + 1
                w = (w + 2 * conv.pad - conv.kernel) // conv.stride + 1
                if h < 1 or w < 1:
                    raise _fail(f"net.convs[{i}]", conv, "the feature map becomes empty")
                if conv.pool > 1:
                    h, w = h // conv.pool, w // conv.pool
                    if h < 1 or w < 1:
                        raise _fail(f"net.convs[{i}].pool", conv.pool, "the feature map becomes empty")

    @property
    def input_dim(self) -> int:
        """Flattened input dimension d_0."""
        if self.kind == "fcn":
            return self.widths[0]
        c, h, w = self.input_shape  # type: ignore[misc]
        return c * h * w

    @property
    def output_dim(self) -> int:
        """Output width h_l."""
        return self.widths[-1]

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Shape of the input to every weight layer (per sample), in order."""
        if self.kind == "fcn":
            return [(w,) for w in self.widths[:-1]]
        shapes: list[tuple[int, ...]] = []
        c, h, w = self.input_shape  # type: ignore[misc]
        for conv in self.convs:
            shapes.append((c, h, w))
            h = (h + 2 * conv.pad - conv.kernel) // conv.stride + 1
            w = (w + 2 * conv.pad - conv.kernel) // conv.stride + 1
            if conv.pool > 1:
                h, w = h // conv.pool, w // conv.pool
            c = conv.out_channels
        flat = c * h * w
        dims = (flat, *self.widths[:-1])
        shapes.extend((d,) for d in dims)
        return shapes

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Weight shape of every layer: ``(out, in)`` or ``(c_out, c_in, k, k)``."""
        if self.kind == "fcn":
            return [(o, i) for i, o in zip(self.widths[:-1], self.widths[1:])]
        shapes: list[tuple[int, ...]] = []
        feats = self.feature_shapes()
        for conv, f in zip(self.convs, feats):
            shapes.append((conv.out_channels, f[0], conv.kernel, conv.kernel))
        head_in = feats[len(self.convs)][0]
        dims = (head_in, *self.widths)
        shapes.extend((o, i) for i, o in zip(dims[:-1], dims[1:]))
        return shapes

    @property
    def n_layers(self) -> int:
        """Number of weight layers l."""
        return len(self.weight_shapes())

    def layer_names(self) -> list[str]:
        """Parameter names of the weights, as in ``to_module(net).state_dict()``."""
        names: list[str] = []
        idx = 0
        n = self.n_layers
        for i in range(n):
            names.append(f"{idx}.weight")
            idx += 1  # the weight layer
            if i < n - 1:
                idx += 1  # activation
            if self.kind == "cnn" and i < len(self.convs):
                if self.convs[i].pool > 1:
                    idx += 1
                if i == len(self.convs) - 1:
                    idx += 1  # flatten
        return names

    def to_arch(self) -> str:
        """The ``--arch`` string of this spec (inverse of :func:`parse_arch`)."""
        if self.kind == "fcn":
            return "fcn:" + ",".join(str(w) for w in self.widths)
        c, h, w = self.input_shape  # type: ignore[misc]
        toks = [f"{c}x{h}x{w}"]
        for conv in self.convs:
            t = f"c{conv.out_channels}k{conv.kernel}"
            if conv.stride != 1:
                t += f"s{conv.stride}"
            if conv.padding is not None:
                t += f"p{conv.padding}"
            if conv.padding_mode == "circular":
                t += "r"
            if conv.pool > 1:
                t += f"m{conv.pool}"
            toks.append(t)
        toks.extend(str(x) for x in self.widths)
        return "cnn:" + ",".join(toks)


_CONV_RE = re.compile(r"^c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?(r)?(?:m(\d+))?$")


def parse_arch(text: str, activation: str = "relu", bias: bool = False) -> NetSpec:
    """Parse an ``--arch`` string.

    ``fcn:784,300,100,10`` — widths from input to output.
    ``cnn:1x28x28,c6k5m2,c16k5p0m2,120,84,10`` — input C×H×W, conv tokens
    ``c<out>k<kernel>[s<stride>][p<padding>][r][m<pool>]`` (``r`` = circular padding,
    ``m`` = max-pool side, padding defaults to kernel//2), then linear head widths.

    >>> parse_arch("fcn:16,64,4").widths
    (16, 64, 4)
    """
    if not isinstance(text, str) or ":" not in text:
        raise _fail("arch", text, "expected 'fcn:w0,w1,...' or 'cnn:CxHxW,c<out>k<k>...,widths'")
    kind, _, body = text.partition(":")
    toks = [t.strip() for t in body.split(",") if t.strip()]
    try:
        if kind == "fcn":
            return NetSpec(kind="fcn", widths=tuple(int(t) for t in toks),
                           activation=activation, bias=bias)  # type: ignore[arg-type]
        if kind == "cnn":
            if not toks:
                raise _fail("arch", text, "missing input shape")
            shape = tuple(int(s) for s in toks[0].lower().split("x"))
            convs: list[ConvSpec] = []
            rest = toks[1:]
            while rest and rest[0].startswith("c"):
                m = _CONV_RE.match(rest[0])
                if not m:
                    raise _fail("arch", rest[0], "bad conv token, expected c<out>k<k>[s<s>][p<p>][r][m<pool>]")
                out, k, s, p, r, pool = m.groups()
                convs.append(ConvSpec(int(out), int(k), int(s or 1), None if p is None else int(p),
                                      "circular" if r else "zeros", int(pool or 1)))
                rest = rest[1:]
            return NetSpec(kind="cnn", input_shape=shape, convs=tuple(convs),  # type: ignore[arg-type]
                           widths=tuple(int(t) for t in rest), activation=activation, bias=bias)  # type: ignore[arg-type]
    except ValueError as e:
        if isinstance(e, ProbPruneError):
            raise
        raise _fail("arch", text, f"not a valid architecture ({e})") from None
    raise _fail("arch", text, "kind must be 'fcn' or 'cnn'")


# --------------------------------------------------------------------------- laws


def layer_scale(weight_shape: tuple[int, ...] | list[int], scale: float) -> float:
    """The paper's a_i = K / sqrt(max(fan_out, fan_in)) for a weight shape.

    Linear ``(out, in)``: fans are out and in; conv ``(c_out, c_in, k, k)``: c_out·k·k, c_in·k·k.

    >>> layer_scale((4, 16), 2.0)
    0.5
    >>> round(layer_scale((8, 3, 3, 3), 3.0), 6)   # conv: fan_out = 72, fan_in = 27 → 3/√72
    0.353553
    """
    shape = tuple(int(s) for s in weight_shape)
    rf = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_out, fan_in = shape[0] * rf, shape[1] * rf
    return scale / math.sqrt(max(fan_out, fan_in))


@dataclass(frozen=True)
class LawSpec:
    """Weight law of a sampled target network.

    ``uniform`` (the paper's): entries of layer i i.i.d. ``U[-a_i, a_i]`` with
    ``a_i = scale / sqrt(max(fan_out, fan_in))`` (paper symbol K = ``scale``; for a conv
    layer fan_in = c_in·k·k and fan_out = c_out·k·k). ``gaussian``: ``N(0, a_i²/3)``,
    the same variance.

    >>> round(LawSpec().scale, 3)
    2.449
    """

    kind: LawKind = "uniform"
    scale: float = SQRT6

    def __post_init__(self) -> None:
        _check_choice("law.kind", self.kind, get_args(LawKind))
        _check_real("law.scale", self.scale, 0.0, lo_open=True)

    def to_text(self) -> str:
        """The ``--law`` string (inverse of :func:`parse_law`)."""
        return f"{self.kind}:K={self.scale!r}"


def parse_law(text: str) -> LawSpec:
    """Parse ``uniform:K=2.449`` / ``gaussian`` / ``uniform:K=sqrt6``.

    >>> parse_law("gaussian:K=1").scale
    1.0
    """
    kind, _, rest = text.partition(":")
    scale = SQRT6
    if rest:
        key, _, val = rest.partition("=")
        if key.strip() not in ("K", "scale"):
            raise _fail("law", text, "expected '<kind>:K=<scale>'")
        v = val.strip()
        try:
            scale = SQRT6 if v in ("sqrt6", "√6") else float(v)
        except ValueError:
            raise _fail("law.scale", v, "must be a number") from None
    return LawSpec(kind=kind.strip(), scale=scale)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class PruneSpec:
    """How to prune. Exactly one level is given.

    Args:
        method: ``magnitude`` (remove small |w|) or ``random``.
        scope: ``layerwise`` (each layer alone) or ``global`` (one ranking over all layers).
        prune_fraction: share of weights **removed**, in [0, 1] (exact count per scope).
        threshold: magnitude rule ``|w| <= threshold`` (absolute, >= 0).
        relative_threshold: ρ, magnitude rule ``|w| <= ρ·a_i`` (a_i from the law).
        p: random rule, each weight removed independently with probability p ∈ [0, 1].
        rescale: random rule, survivors multiplied by 1/(1-p).
        schedule_c, schedule_alpha: vanishing schedule — the level (ρ or p, or
            prune_fraction) is ``min(1, c·h^{-α})`` with h the smallest hidden width;
            used by sweeps when the level field is ``None``.
    """

    method: Method = "magnitude"
    scope: Scope = "layerwise"
    prune_fraction: float | None = None
    threshold: float | None = None
    relative_threshold: float | None = None
    p: float | None = None
    rescale: bool = False
    schedule_c: float | None = None
    schedule_alpha: float | None = None

    def __post_init__(self) -> None:
        _check_choice("prune.method", self.method, get_args(Method))
        _check_choice("prune.scope", self.scope, get_args(Scope))
        if self.prune_fraction is not None:
            _check_real("prune_fraction", self.prune_fraction, 0.0, 1.0)
        if self.threshold is not None:
            _check_real("threshold", self.threshold, 0.0)
        if self.relative_threshold is not None:
            _check_real("relative_threshold", self.relative_threshold, 0.0)
        if self.p is not None:
            _check_real("p", self.p, 0.0, 1.0)
        if self.schedule_c is not None:
            _check_real("schedule_c", self.schedule_c, 0.0, lo_open=True)
        if self.schedule_alpha is not None:
            _check_real("schedule_alpha", self.schedule_alpha, 0.0, 1.0, lo_open=True, hi_open=True)
        given = [n for n in ("prune_fraction", "threshold", "relative_threshold", "p")
                 if getattr(self, n) is not None]
        if len(given) > 1:
            raise _fail(given[1], getattr(self, given[1]),
                        f"give only one pruning level, {given[0]} is already set")
        if self.method == "magnitude" and self.p is not None:
            raise _fail("p", self.p, "p belongs to random pruning; use prune_fraction, threshold or relative_threshold")
        if self.method == "random" and (self.threshold is not None or self.relative_threshold is not None):
            name = "threshold" if self.threshold is not None else "relative_threshold"
            raise _fail(name, getattr(self, name), "thresholds belong to magnitude pruning; use p or prune_fraction")
        if self.rescale and self.method != "random":
            raise _fail("rescale", self.rescale, "rescale applies to random pruning only")
        if (self.schedule_c is None) != (self.schedule_alpha is None):
            raise _fail("schedule_alpha", self.schedule_alpha, "schedule_c and schedule_alpha go together")
        if given and self.schedule_c is not None:
            raise _fail("schedule_c", self.schedule_c, f"a schedule and a fixed {given[0]} exclude each other")

    @property
    def level_name(self) -> str | None:
        """Name of the fixed level given, or ``None``."""
        for n in ("prune_fraction", "threshold", "relative_threshold", "p"):
            if getattr(self, n) is not None:
                return n
        return None

    def schedule_field(self) -> str:
        """Which level a schedule c·h^{-α} sets: ρ (magnitude) or p (random)."""
        return "relative_threshold" if self.method == "magnitude" else "p"

    def at_width(self, h: int) -> PruneSpec:
        """Resolve a schedule at hidden width ``h`` (a fixed level is returned unchanged)."""
        if self.schedule_c is None or self.schedule_alpha is None:
            return self
        level = min(1.0, self.schedule_c * float(h) ** (-self.schedule_alpha))
        return dataclasses.replace(self, schedule_c=None, schedule_alpha=None,
                                   **{self.schedule_field(): level})


# --------------------------------------------------------------------------- gap / bound / MC


@dataclass(frozen=True)
class GapSpec:
    """Budget of the empirical sup-gap estimator (lower bound) over the ball of radius r.

    Args:
        radius: r > 0 (1 in the paper).
        n_points: random points evaluated first (sphere and ball); their best start the ascent.
        n_restarts: trajectories of the projected ascent's last phase (``probprune.search``; the first phase
            screens 12 times as many starts); 16 by default, enough to find 1.44 on mnist-net_256x2 (issue 16).
        n_steps: ascent budget per restart: ``4·n_restarts·n_steps`` evaluations per member.
        step_size: initial step as a fraction of r (decays by cosine schedule).
    """

    radius: float = 1.0
    n_points: int = 2048
    n_restarts: int = 16
    n_steps: int = 50
    step_size: float = 0.1

    def __post_init__(self) -> None:
        _check_real("gap.radius", self.radius, 0.0, lo_open=True)
        _check_int("gap.n_points", self.n_points, 1)
        _check_int("gap.n_restarts", self.n_restarts, 0)
        _check_int("gap.n_steps", self.n_steps, 0)
        _check_real("gap.step_size", self.step_size, 0.0, lo_open=True)


BallNorm = Literal["l2", "linf"]


@dataclass(frozen=True)
class BallSpec:
    """An input ball ``{x : ‖x − centre‖ ≤ radius} ∩ box`` (local certificates; DESIGN.md "ball").

    Args:
        radius: r > 0, finite.
        centre: the centre as a flat tuple of floats (length = input dim); ``None`` = 0 (the paper's ball).
        norm: ``l2`` (default) or ``linf``.
        box: ``(lo, hi)`` bounds every input coordinate lies in (e.g. ``(0, 1)`` for pixels), or ``None``;
            the centre must lie in it.

    >>> BallSpec(radius=0.03, centre=(0.5, 0.2), norm="linf", box=(0.0, 1.0)).norm
    'linf'
    """

    radius: float
    centre: tuple[float, ...] | None = None
    norm: BallNorm = "l2"
    box: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) \
                or not math.isfinite(self.radius) or self.radius <= 0:
            raise _fail("ball.radius", self.radius, "must be a finite number > 0")
        if self.norm not in ("l2", "linf"):
            raise _fail("ball.norm", self.norm, "must be one of l2, linf")
        if self.centre is not None:
            if not isinstance(self.centre, tuple) or not self.centre or any(
                    isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)
                    for c in self.centre):
                raise _fail("ball.centre", self.centre, "must be a non-empty tuple of finite numbers (or None)")
        if self.box is not None:
            if not isinstance(self.box, tuple) or len(self.box) != 2 or any(
                    isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)
                    for c in self.box) or not self.box[0] < self.box[1]:
                raise _fail("ball.box", self.box, "must be a tuple (lo, hi) of finite numbers with lo < hi")
            lo, hi = self.box
            inside = (0.0 <= hi and lo <= 0.0) if self.centre is None else all(lo <= c <= hi for c in self.centre)
            if not inside:
                raise _fail("ball.box", self.box, "does not contain the centre")


@dataclass(frozen=True)
class BoundSpec:
    """Probabilistic-bound settings: failure probability δ, optional tolerance ε."""

    delta: float = 0.05
    eps: float | None = None

    def __post_init__(self) -> None:
        _check_real("delta", self.delta, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.delta < MIN_DELTA:
            raise _fail("delta", self.delta, f"must be >= {MIN_DELTA:g} (smaller values underflow)")
        if self.eps is not None:
            _check_real("eps", self.eps, 0.0, lo_open=True)


@dataclass(frozen=True)
class MCSpec:
    """Monte Carlo settings.

    Args:
        n_trials: trials R per grid point (>= 1).
        hidden_widths: grid of hidden widths h (replaces every hidden width of the FCN); empty = the arch as given.
        chunk_size: trials per batched ensemble.
        seed: master seed (seeds derive from config hash, grid point, trial).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32`` or ``float64``.
        matmul: ``fp32`` (default: full float32 products) or ``tf32`` — on CUDA, float32 matrix
            products and convolutions of the sup-gap search run on TF32 tensor cores (10-bit
            mantissa: faster, but the empirical gap carries a rounding error of about 1e-3·‖F‖;
            see benchmarks/RESULTS.md). No effect on CPU; needs ``dtype = float32``. The
            certified bound always runs in float64.
        confidence: confidence of the Clopper–Pearson interval on the coverage P(gap ≤ ε).
        eps_scale: multiplies the ε checked (1 = as proved; a test hook: 0.1 makes a deliberately wrong bound).
    """

    n_trials: int = 100
    hidden_widths: tuple[int, ...] = ()
    chunk_size: int = 16
    seed: int = 0
    device: str = "cpu"
    dtype: Dtype = "float32"
    matmul: Matmul = "fp32"
    confidence: float = 0.95
    eps_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_int("mc.n_trials", self.n_trials, 1)
        object.__setattr__(self, "hidden_widths", tuple(self.hidden_widths))
        for h in self.hidden_widths:
            _check_int("mc.hidden_widths", h, 1)
        _check_int("mc.chunk_size", self.chunk_size, 1)
        check_seed("mc.seed", self.seed)
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise _fail("mc.device", self.device, "must be cpu, cuda or cuda:N")
        _check_choice("mc.dtype", self.dtype, get_args(Dtype))
        _check_choice("mc.matmul", self.matmul, get_args(Matmul))
        if self.matmul == "tf32" and self.dtype != "float32":
            raise _fail("mc.matmul", self.matmul, f"TF32 products need mc.dtype = float32 (got {self.dtype})")
        _check_real("mc.confidence", self.confidence, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_real("mc.eps_scale", self.eps_scale, 0.0, lo_open=True)


@dataclass(frozen=True)
class ExecutionPolicy:
    """How the core executes (never what it computes): handed down by the runner, explicitly.

    The core (``nets``, ``sampling``, ``gap``, ``montecarlo``) reads these values from its
    arguments only — never from the environment or from global torch state — and never changes
    global torch state; the runner (:mod:`probprune.runner.execution`) applies ``threads`` and
    ``matmul`` for the duration of a run and restores the previous settings.

    Args:
        forward: how :meth:`probprune.nets.Net.forward` runs an FCN ensemble outside autograd:
            ``auto`` (member by member in row blocks where that is faster, else one batched product
            per layer), ``batched`` or ``members`` (forced; the two agree to rounding).
        threads: torch threads of the run (``None``: the process's current setting): intra-op
            threads of batched products, and the number of single-threaded workers that run an
            ensemble's members (or row blocks) in parallel on a CPU — each block is computed by one
            thread, so results do not depend on this value.
        matmul: CUDA float32 products of the run: ``fp32`` (TF32 off), ``tf32`` or ``None`` (leave
            the process's flags). A verify run's policy carries :class:`MCSpec`'s hashed ``matmul``
            (TF32 changes the numbers, so there it is not an execution-only setting).
    """

    forward: Forward = "auto"
    threads: int | None = None
    matmul: Matmul | None = None

    def __post_init__(self) -> None:
        _check_choice("execution.forward", self.forward, FORWARDS)
        if self.threads is not None:
            _check_int("execution.threads", self.threads, 1)
        if self.matmul is not None:
            _check_choice("execution.matmul", self.matmul, get_args(Matmul))


@dataclass(frozen=True)
class RunConfig:
    """A whole run: what to sample, how to prune, how to measure, how many trials.

    ``prunes`` lists the pruning rules compared at each width (grid = widths × prunes).
    """

    KIND: ClassVar[str] = "verify"
    net: NetSpec = field(default_factory=NetSpec)
    law: LawSpec = field(default_factory=LawSpec)
    prunes: tuple[PruneSpec, ...] = (PruneSpec(),)
    gap: GapSpec = field(default_factory=GapSpec)
    bound: BoundSpec = field(default_factory=BoundSpec)
    mc: MCSpec = field(default_factory=MCSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prunes", tuple(self.prunes))
        if not self.prunes:
            raise _fail("prunes", self.prunes, "the grid needs at least one pruning rule")


# --------------------------------------------------------------------------- command jobs

#: The offline data sets and the LeNets of the real-data experiment (``probprune.data`` loads and builds them).
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
MODELS: tuple[str, ...] = ("lenet-300-100", "lenet-5")

NormMethod = Literal["auto", "svd", "gram-cholesky", "frobenius-holder"]
Solve = Literal["none", "max-prune", "min-width"]
Theorem = Literal["auto", "operator", "net"]
CertifyNorm = Literal["linf", "l2"]


def _check_device_name(name: str, value: Any) -> None:
    # the spelling only; whether this machine has the device is the runner's check (it needs torch)
    if not isinstance(value, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
        raise _fail(name, value, "must be cpu, cuda, cuda:N or mps")


def _check_opt_str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(name, value, "must be a file name (text)")


@dataclass(frozen=True)
class PruneJob:
    """What ``probprune prune`` does (section kind ``prune``): target from ``weights`` or sampled from ``law``.

    Args:
        net: the architecture; prune: the rule (exactly one fixed level).
        weights: target model file (``.safetensors``/``.onnx``), or ``None`` to sample from ``law`` with ``seed``.
        law: weight law of a sampled target (needed by ``relative_threshold``: τ_i = ρ·a_i).
        seed: sampling and random masks.
        out, save_target: where to write the pruned model / the sampled target (or ``None``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        extras: free-form notes carried along (not validated).
    """

    KIND: ClassVar[str] = "prune"

    net: NetSpec
    prune: PruneSpec
    weights: str | None = None
    law: LawSpec | None = None
    seed: int = 0
    out: str | None = None
    save_target: str | None = None
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        _check_device_name("device", self.device)
        for name in ("weights", "out", "save_target"):
            _check_opt_str(name, getattr(self, name))
        if self.weights is None and self.law is None:
            raise ProbPruneError("weights: give --weights FILE or --law to sample a target")
        if self.law is None and self.save_target is not None:
            raise ProbPruneError("save_target: only a sampled target (--law) can be saved")
        if self.prune.level_name is None:
            raise ProbPruneError("prune: give one level: --prune-fraction, --threshold, --relative-threshold or --p")
        if self.prune.relative_threshold is not None and self.law is None:
            raise ProbPruneError(
                f"relative_threshold={self.prune.relative_threshold!r}: needs --law (τ_i = ρ·a_i)")


@dataclass(frozen=True)
class GapJob:
    """What ``probprune gap`` does (kind ``gap``): load ``weights`` (target F) and ``pruned`` (f), pin their gap.

    Args:
        net: the architecture of both files; weights, pruned: model files.
        gap: the estimator's budget and the radius; seed: the estimator's sampling.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; norm_method: operator-norm bound method.
    """

    KIND: ClassVar[str] = "gap"

    net: NetSpec
    weights: str
    pruned: str
    gap: GapSpec = field(default_factory=GapSpec)
    seed: int = 0
    device: str = "cpu"
    norm_method: NormMethod = "auto"

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        _check_device_name("device", self.device)
        _check_choice("norm_method", self.norm_method, get_args(NormMethod))


@dataclass(frozen=True)
class BoundJob:
    """What ``probprune bound`` computes (kind ``bound``).

    Args:
        net, law, prune: the setting (``prune`` carries the level, or a schedule c·h^{−α}).
        delta: δ ∈ (0, 1); eps: ε* > 0 (needed by the solvers) — validated as a :class:`BoundSpec`.
        solve: ``none`` (print ε(δ)), ``max-prune`` or ``min-width``.
        radius: input ball radius r.
        theorem: ``auto``, ``operator`` or ``net``.
    """

    KIND: ClassVar[str] = "bound"

    net: NetSpec
    law: LawSpec
    prune: PruneSpec
    delta: float = 0.05
    eps: float | None = None
    solve: Solve = "none"
    radius: float = 1.0
    theorem: Theorem = "auto"

    def __post_init__(self) -> None:
        _check_choice("solve", self.solve, get_args(Solve))
        BoundSpec(delta=self.delta, eps=self.eps)
        _check_real("radius", self.radius, 0.0, lo_open=True)
        _check_choice("theorem", self.theorem, get_args(Theorem))
        if self.solve != "none" and self.eps is None:
            raise ProbPruneError(f"eps=None: --solve {self.solve} needs --eps")
        fixed = self.prune.level_name is not None or self.prune.schedule_c is not None
        if self.solve == "none" and not fixed:
            raise ProbPruneError("prune: give one level: --relative-threshold, --threshold, --p or --prune-fraction")
        if self.solve == "min-width" and not fixed:
            raise ProbPruneError("prune: --solve min-width needs a fixed level or a schedule (--schedule c,alpha)")
        if self.solve == "max-prune" and self.prune.schedule_c is not None:
            raise ProbPruneError("schedule: --solve max-prune finds a fixed level; drop --schedule")
        if self.solve == "max-prune" and self.prune.level_name is not None:
            raise ProbPruneError("--solve max-prune finds the level itself; give no level")


def _suffix(name: str, path: Any, suffixes: tuple[str, ...], what: str) -> None:
    if not isinstance(path, str) or not path.lower().endswith(suffixes):
        raise _fail(name, path, f"must end in {what}")


@dataclass(frozen=True)
class CertifyJob:
    """What ``probprune certify`` computes (kind ``certify``).

    Args:
        weights, pruned: model files of F and f (``.onnx`` or ``.safetensors``).
        data: ``mnist``, ``fashion-mnist`` or an ``.npy`` file of inputs ``[N, d]``.
        n_points: N, the number of inputs (the first N).
        norm: ``linf`` or ``l2``.
        radius: r > 0, finite; or ``None`` with ``halfwidth`` (exactly one of the two).
        arch: architecture for ``.safetensors`` models (an ONNX model carries its own; if given it must match).
        activation, bias: of a ``.safetensors`` architecture (ignored for ONNX, whose own are used).
        clip: ``(lo, hi)`` box the inputs live in, or ``None``.
        labels: ``.npy`` of labels ``[N']`` (N' ≥ N) for an ``.npy`` data file, or ``None``.
        seed: randomness of the searches.
        n_restarts, n_steps: gap search budget; the agreement attack gets half of each (at least 1).
        batch_size: inputs per chunk (one progress step each).
        out: ``.csv`` or ``.json`` file for the rows, or ``None``.
        halfwidth: ``.npy`` of ℓ∞ half-widths ``[N', d]`` (N' ≥ N) or ``[d]``: input i's ball is the box
            ``x_i ± h_i`` (∩ ``clip``), as VNN-COMP states its properties; ``linf`` only, instead of ``radius``.
        radii: extra radii for the report's "certified agreement vs radius" curve (empty: the fractions
            :data:`probprune.runner.certify.RADIUS_FRACTIONS` of ``radius``).
        split: leaves per ball of the branch and bound (:mod:`probprune.bounds.differential_split`) that tightens
            the gap bound and the agreement margins; 0 or 1: none.
        optimise: Adam steps of per-row slope optimisation of the agreement margins of the inputs the plain
            relaxation leaves uncertified (never looser; 0: none); chains: the gap bound stays the plain (or
            split) one, graphs: its output and chord rows are optimised too.
    """

    KIND: ClassVar[str] = "certify"

    weights: str
    pruned: str
    data: str
    radius: float | None = None
    n_points: int = 100
    norm: CertifyNorm = "linf"
    arch: str | None = None
    activation: str = "relu"
    bias: bool = False
    clip: tuple[float, float] | None = None
    labels: str | None = None
    seed: int = 0
    n_restarts: int = 8
    n_steps: int = 100
    batch_size: int = 25
    out: str | None = None
    halfwidth: str | None = None
    radii: tuple[float, ...] = ()
    split: int = 0
    optimise: int = 0

    def __post_init__(self) -> None:
        if self.halfwidth is None and (isinstance(self.radius, bool) or not isinstance(self.radius, (int, float))
                                       or not math.isfinite(self.radius) or self.radius <= 0):
            raise _fail("radius", self.radius, "must be a finite number > 0 (or give halfwidth)")
        _check_choice("norm", self.norm, get_args(CertifyNorm))
        if self.halfwidth is not None:
            if self.radius is not None:
                raise _fail("radius", self.radius, "give either radius or halfwidth (per-input boxes), not both")
            _suffix("halfwidth", self.halfwidth, (".npy",), ".npy (an array of half-widths [N, d] or [d])")
            if self.norm != "linf":
                raise _fail("norm", self.norm, "halfwidth boxes are l-infinity balls; use norm linf")
        radii = tuple(self.radii) if isinstance(self.radii, (list, tuple)) else self.radii
        if not isinstance(radii, tuple) or any(isinstance(r, bool) or not isinstance(r, (int, float))
                                                or not math.isfinite(r) or r <= 0 for r in radii):
            raise _fail("radii", self.radii, "must be finite numbers > 0")
        object.__setattr__(self, "radii", tuple(sorted({float(r) for r in radii})))
        if self.clip is not None:
            clip = tuple(self.clip) if isinstance(self.clip, (list, tuple)) else self.clip
            if not isinstance(clip, tuple) or len(clip) != 2 or any(
                    isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in clip) \
                    or not clip[0] < clip[1]:
                raise _fail("clip", self.clip, "must be LO,HI with finite LO < HI")
            object.__setattr__(self, "clip", (float(clip[0]), float(clip[1])))
        for name, lo in (("n_points", 1), ("n_restarts", 0), ("n_steps", 0), ("batch_size", 1), ("split", 0),
                         ("optimise", 0)):
            _check_int(name, getattr(self, name), lo)
        check_seed("seed", self.seed)
        _check_choice("activation", self.activation, ACTIVATIONS)
        if not isinstance(self.bias, bool):
            raise _fail("bias", self.bias, "must be true or false")
        for name in ("weights", "pruned"):
            _suffix(name, getattr(self, name), (".onnx", ".safetensors"), ".onnx or .safetensors")
        if not isinstance(self.data, str):
            raise _fail("data", self.data, "must be mnist, fashion-mnist or an .npy file of inputs [N, d]")
        if self.data not in DATASETS:
            _suffix("data", self.data, (".npy",), "mnist, fashion-mnist or an .npy file of inputs [N, d]")
        elif self.labels is not None:
            raise _fail("labels", self.labels, "only for an .npy data file (a dataset has its own)")
        if self.labels is not None:
            _suffix("labels", self.labels, (".npy",), ".npy (a file of integer labels [N])")
        if self.out is not None:
            _suffix("out", self.out, (".csv", ".json"), ".csv or .json")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of every field (the resolved config)."""
        return to_dict(self)


# --------------------------------------------------------------------------- real-data experiment

@dataclass(frozen=True)
class TrainSpec:
    """Training (or fine-tuning) schedule: Adam, cosine learning-rate decay to 0, cross-entropy.

    Args:
        epochs: passes over the training set (fractions allowed: ``0.25`` = a quarter epoch).
        batch_size: samples per step.
        lr: peak learning rate.
        weight_decay: Adam's L2 weight decay.
    """

    epochs: float = 1.0
    batch_size: int = 100
    lr: float = 2e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) \
                or not math.isfinite(self.epochs) or self.epochs <= 0:
            raise ProbPruneError(f"epochs={self.epochs!r}: must be a number > 0")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ProbPruneError(f"batch_size={self.batch_size!r}: must be an integer >= 1")
        for name, v in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ProbPruneError(f"{name}={v!r}: must be a finite number >= 0")


def _tuple_of(name: str, values: Any, allowed: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise _fail(name, values, "must be a list")
    vals = tuple(values)
    if not vals:
        raise ProbPruneError(f"{name}: empty")
    if len(set(vals)) != len(vals):
        raise ProbPruneError(f"{name}={list(vals)!r}: contains duplicates")
    if allowed is not None:
        for v in vals:
            if v not in allowed:
                raise ProbPruneError(f"{name}: {v!r} is not one of {', '.join(map(str, allowed))}")
    return vals


def _check_experiment_lists(spec: ExperimentSpec) -> None:
    object.__setattr__(spec, "models", _tuple_of("models", spec.models, MODELS))
    object.__setattr__(spec, "methods", _tuple_of("methods", spec.methods, ("random", "magnitude")))
    object.__setattr__(spec, "scopes", _tuple_of("scopes", spec.scopes, ("layerwise", "global")))
    for f in _tuple_of("prune_fractions", spec.prune_fractions):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0.0 <= f < 1.0:
            raise ProbPruneError(f"prune_fractions: {f!r} must be in [0, 1) (share of weights removed)")
    fr = _tuple_of("prune_fractions", [float(f) for f in spec.prune_fractions])
    object.__setattr__(spec, "prune_fractions", tuple(sorted(fr)))
    seeds = _tuple_of("seeds", spec.seeds)
    for s in seeds:
        check_seed("seeds", s)
    object.__setattr__(spec, "seeds", seeds)


@dataclass(frozen=True)
class ExperimentSpec:
    """What ``probprune experiment`` runs (section kind ``experiment``; its non-default fields are hashed).

    Args:
        dataset: ``mnist`` or ``fashion-mnist``.
        models: ``lenet-300-100``, ``lenet-5``.
        prune_fractions: shares of weights removed, each in [0, 1).
        methods, scopes: pruning rules (``random``/``magnitude``, ``layerwise``/``global``).
        seeds: one dense target per model and seed.
        epochs: dense training epochs per model (default :data:`EXPERIMENT_EPOCHS`).
        finetune_epochs: fine-tuning length (fractions of an epoch allowed); 0 = no fine-tuned rows.
        batch_size, lr, finetune_lr: Adam with cosine decay.
        weight_decay: Adam's L2 weight decay of the dense training (small weights then matter
            less, so magnitude pruning costs less accuracy); fine-tuning uses none.
        gap_points, gap_restarts, gap_steps: budget of the empirical sup-gap estimator.
        test_limit: evaluate on the first ``test_limit`` test images only (``None``: all 10 000).

    >>> ExperimentSpec.quick().test_limit
    2000
    """

    KIND: ClassVar[str] = "experiment"

    dataset: str = "mnist"
    models: tuple[str, ...] = MODELS
    prune_fractions: tuple[float, ...] = EXPERIMENT_PRUNE_FRACTIONS
    methods: tuple[str, ...] = ("random", "magnitude")
    scopes: tuple[str, ...] = ("layerwise", "global")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: dict[str, float] = field(default_factory=lambda: dict(EXPERIMENT_EPOCHS))
    finetune_epochs: float = 1.0
    batch_size: int = 100
    lr: float = 2e-3
    weight_decay: float = 1e-4
    finetune_lr: float = 2e-3
    gap_points: int = 512
    gap_restarts: int = 4
    gap_steps: int = 20
    test_limit: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ProbPruneError(f"dataset={self.dataset!r}: must be one of {', '.join(DATASETS)}")
        _check_experiment_lists(self)
        if not isinstance(self.epochs, Mapping):
            raise _fail("epochs", self.epochs, "must be a table of epochs per model")
        eps = dict(EXPERIMENT_EPOCHS)
        for k, v in dict(self.epochs).items():
            if str(k) not in MODELS:
                raise ProbPruneError(f"epochs: unknown model {k!r}")
            TrainSpec(epochs=v)  # validates
            eps[str(k)] = float(v)
        object.__setattr__(self, "epochs", {m: eps[m] for m in MODELS})
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, (int, float)) \
                or not math.isfinite(self.finetune_epochs) or self.finetune_epochs < 0:
            raise ProbPruneError(f"finetune_epochs={self.finetune_epochs!r}: must be a number >= 0")
        try:
            TrainSpec(epochs=1.0, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay)
        except ProbPruneError as e:
            raise ProbPruneError(f"dense training (lr={self.lr!r}, weight_decay={self.weight_decay!r}): {e}") from None
        try:
            TrainSpec(epochs=1.0, batch_size=self.batch_size, lr=self.finetune_lr)
        except ProbPruneError as e:
            raise ProbPruneError(f"finetune_lr={self.finetune_lr!r}: {e}") from None
        GapSpec(radius=1.0, n_points=self.gap_points, n_restarts=self.gap_restarts, n_steps=self.gap_steps)
        if self.test_limit is not None and (isinstance(self.test_limit, bool) or not isinstance(self.test_limit, int)
                                            or self.test_limit < 1):
            raise ProbPruneError(f"test_limit={self.test_limit!r}: must be an integer >= 1 or None")

    @staticmethod
    def quick(dataset: str = "mnist", seeds: tuple[int, ...] = (0,)) -> ExperimentSpec:
        """A small preset (one epoch, three fractions, small gap budget) for smoke runs and CI."""
        return ExperimentSpec(dataset=dataset, prune_fractions=(0.0, 0.5, 0.9), seeds=tuple(seeds),
                              epochs={"lenet-300-100": 1.0, "lenet-5": 1.0}, finetune_epochs=0.1,
                              gap_points=128, gap_restarts=2, gap_steps=10, test_limit=2000)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form of every field (stored as the run's ``config.json``)."""
        return to_dict(self)

    @property
    def hash(self) -> str:
        """The run's folder name: :func:`config_hash` (a field added later at its default never renames it)."""
        return config_hash(self)

    def n_settings(self) -> int:
        """Rows this spec produces."""
        ft = 2 if self.finetune_epochs > 0 else 1
        return (len(self.models) * len(self.seeds) * len(self.prune_fractions) * len(self.methods)
                * len(self.scopes) * ft)


# --------------------------------------------------------------------------- (de)serialisation

def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def to_dict(spec: Any, *, non_default_only: bool = False) -> dict[str, Any]:
    """Plain-JSON dict of a spec; ``non_default_only`` drops fields equal to their default.

    Dropping defaults makes the canonical form (and hash) of old configs stable when a
    new field with a no-op default is added.
    """
    out: dict[str, Any] = {}
    for f in fields(spec):
        v = getattr(spec, f.name)
        if non_default_only:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if default is not dataclasses.MISSING and v == default:
                continue
            if dataclasses.is_dataclass(v):
                out[f.name] = to_dict(v, non_default_only=True)
                continue
            if isinstance(v, tuple) and v and dataclasses.is_dataclass(v[0]):
                out[f.name] = [to_dict(x, non_default_only=True) for x in v]
                continue
        out[f.name] = _plain(v)
    return out


#: The rule :func:`config_hash` follows. 1 (before issue 14): the SHA-256 of a run config's non-default JSON
#: alone, so two commands' configs at their defaults shared a hash; 2: the hashed text also names the section
#: kind and this rule. Folders made under an older rule are refused on open, never silently re-labelled.
HASH_RULE = 2

#: The rule the estimators follow: bumped whenever the same config (same hash, same seeds) produces other
#: numbers, so that a stored run is never resumed by code that computes its rows differently (a mixed table
#: would pass for one run). 1: before session 6; 2: the gap search of :mod:`probprune.search` (screened starts,
#: momentum, power-method trials; ``GapSpec.n_restarts`` default 16). Stored in a run's ``meta`` table and an
#: experiment's ``config.json``; a folder of another rule can still be read (its rows are what that version
#: computed), but resuming it is refused.
RESULTS_RULE = 2

#: Fields that only change how a job is executed, never a number it produces (trials are seeded from
#: (hash, grid point, trial, stream), so chunks of any size draw the same trials), by section kind as
#: dotted paths inside that section: they stay out of the config hash, hence out of the run folder's
#: name and every seed (``config.json`` still records them). A path may name a whole sub-section.
EXECUTION_FIELDS: dict[str, tuple[str, ...]] = {
    "verify": ("mc.chunk_size",),
    # where a job writes its results is not a setting of the results
    "prune": ("out", "save_target"),
    "certify": ("out",),
}


def hash_kind(spec: Any) -> str:
    """The section kind a top-level spec hashes under (its class's ``KIND``: ``verify``, ``experiment`` …).

    >>> hash_kind(RunConfig())
    'verify'
    """
    kind = getattr(type(spec), "KIND", None)
    if not isinstance(kind, str) or not dataclasses.is_dataclass(spec):
        raise _fail("config", type(spec).__name__, "is not a config section (a spec with a KIND)")
    return kind


def canonical_json(spec: Any) -> str:
    """Canonical JSON of the non-default fields of a spec (sorted keys, no spaces).

    A field added later with a no-op default is left out while at its default, so the text (and the
    hash) of every existing config stays the same.

    >>> canonical_json(RunConfig())
    '{}'
    """
    return json.dumps(to_dict(spec, non_default_only=True), sort_keys=True, separators=(",", ":"))


def _drop_path(data: dict[str, Any], path: str) -> None:
    head, dot, rest = path.partition(".")
    if head not in data:
        return
    if not dot:
        del data[head]
        return
    sub = data[head]
    if isinstance(sub, dict):
        _drop_path(sub, rest)
        if not sub:
            del data[head]


def config_hash(spec: Any, kind: str | None = None) -> str:
    """The one config hash: 16 hex digits of the SHA-256 of ``{"config", "kind", "rule"}`` as canonical JSON.

    ``config`` is the spec's non-default form (:func:`canonical_json`) without the kind's
    :data:`EXECUTION_FIELDS`; ``kind`` is :func:`hash_kind` (a plain mapping, hashed as it is, needs an
    explicit ``kind``); ``rule`` is :data:`HASH_RULE`. A run and its hash are the same whatever chunk
    size executes it, and configs of different commands never share a hash.

    >>> config_hash(RunConfig()) == config_hash(RunConfig(mc=MCSpec(chunk_size=3)))
    True
    """
    if isinstance(spec, Mapping):
        if kind is None:
            raise _fail("kind", kind, "a plain mapping is hashed under an explicit kind")
        data: dict[str, Any] = json.loads(json.dumps(dict(spec)))
    else:
        kind = hash_kind(spec) if kind is None else kind
        data = to_dict(spec, non_default_only=True)
    for path in EXECUTION_FIELDS.get(kind, ()):
        _drop_path(data, path)
    text = json.dumps({"config": data, "kind": kind, "rule": HASH_RULE}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _nested(tp: Any) -> tuple[str, type] | None:
    """``("one", C)`` for a field typed ``C`` or ``C | None`` (C a spec), ``("many", C)`` for ``tuple[C, ...]``."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return "one", tp
    args = [a for a in get_args(tp) if a is not type(None) and a is not Ellipsis]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
        return ("many" if get_origin(tp) is tuple else "one"), args[0]
    return None


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """A spec of type ``cls`` from plain data: nested specs built by their field types, lists made tuples."""
    if not isinstance(data, Mapping):
        raise _fail(where, data, "must be a table")
    if cls is NetSpec and "arch" in data:  # an --arch string, with the other net fields on top of it
        sec = dict(data)
        base = parse_arch(sec.pop("arch"))
        data = {**to_dict(base), **sec}
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}" if where else unknown[0], data[unknown[0]],
                    f"unknown key (known: {', '.join(names)})")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        sub = f"{where}.{k}" if where else k
        nested = _nested(hints.get(k))
        if nested is not None and v is not None:
            how, inner = nested
            if how == "many":
                if isinstance(v, Mapping):
                    v = [v]
                if not isinstance(v, (list, tuple)):
                    raise _fail(sub, v, "must be a list of tables")
                v = tuple(x if isinstance(x, inner) else _build(inner, x, f"{sub}[{i}]") for i, x in enumerate(v))
            elif not isinstance(v, inner):
                v = _build(inner, v, sub)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise _fail(where or cls.__name__, dict(data), str(e)) from None


def from_dict(data: Mapping[str, Any], cls: type = RunConfig) -> Any:
    """Build a config section (default :class:`RunConfig`) from plain data (TOML or a stored ``config.json``).

    Nested specs are built from their tables, lists become tuples, ``net.arch`` is parsed; unknown keys
    and wrong types raise :class:`ProbPruneError` naming the key. The spec then validates itself once.

    >>> from_dict({"mc": {"n_trials": 5}}).mc.n_trials
    5
    """
    if not isinstance(data, Mapping):
        raise _fail("config", data, "must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown and cls is RunConfig:
        raise _fail(unknown[0], data[unknown[0]], "unknown config section")
    if cls is RunConfig and isinstance(data.get("prunes"), list):
        data = {**data, "prunes": [p for p in data["prunes"]]}
    if cls is RunConfig and "prunes" in data and not isinstance(data["prunes"], (list, tuple, Mapping)):
        raise _fail("prunes", data["prunes"], "must be a list of tables")
    return _build(cls, data, "")


#: Every command's settings section by kind (the kind enters the hash: sections never share a folder).
SECTIONS: dict[str, type] = {cls.KIND: cls for cls in (RunConfig, PruneJob, GapJob, BoundJob, CertifyJob,  # type: ignore[attr-defined]
                                                        ExperimentSpec)}


#: A config is a small text file; anything larger (or a device such as /dev/zero) is refused unread.
_MAX_CONFIG_BYTES = 1 << 20


def read_toml(path: str) -> dict[str, Any]:
    """The tables of a TOML config file, unbuilt (a refusal names the file and what is wrong with it)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_CONFIG_BYTES:
                raise _fail("config", path, f"not a regular file of at most {_MAX_CONFIG_BYTES} bytes")
            data = tomllib.load(fh)
    except ProbPruneError:  # the refusal above, as it is (not wrapped as invalid TOML below)
        raise
    except FileNotFoundError:
        raise _fail("config", path, "file not found") from None
    except IsADirectoryError:
        raise _fail("config", path, "is a directory, not a TOML file") from None
    except OSError as e:
        raise _fail("config", path, f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise _fail("config", path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # TOMLDecodeError, or an integer with too many digits
        raise _fail("config", path, f"not valid TOML ({e})") from None
    return data


def load_toml(path: str, cls: type = RunConfig) -> Any:
    """Read a TOML config file into a section (default :class:`RunConfig`: tables ``net``, ``law``,
    ``[[prunes]]``, ``gap``, ``bound``, ``mc``; another section's file holds that section's fields)."""
    return from_dict(read_toml(path), cls)


def presets() -> dict[str, Path]:
    """The config presets shipped inside the package (``probprune/configs/*.toml``), by name."""
    from importlib.resources import files  # lazily, like importlib.metadata above

    folder = Path(str(files("probprune") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def config_file(config: str) -> Path:
    """The TOML file of ``--config``: an existing file as given, else a preset name (``quick`` or
    ``quick.toml``) resolved to the packaged ``probprune/configs/quick.toml`` — so ``--config quick``
    works from any folder.

    Raises:
        ProbPruneError: a bare name that is neither a file here nor a preset (the message lists the presets).
    """
    path = Path(config)
    if path.exists() or path.parent != Path("."):
        return path  # a path: load_toml reads it or says it is not found
    name = path.name[:-len(".toml")] if path.name.endswith(".toml") else path.name
    found = presets()
    if name in found:
        return found[name]
    raise ProbPruneError(f"--config {config!r}: file not found, and not a preset name (presets: "
                         f"{', '.join(found) or 'none installed'})")


def default_config() -> RunConfig:
    """The config of ``probprune verify`` with no options: the packaged preset ``default``
    (``probprune/configs/default.toml``, the paper's FCN setting, about 3 minutes on 2 CPU cores)."""
    return load_toml(str(presets()["default"]))


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except ValueError:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        shown = text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"
        raise _fail("--set", shown, "a number with too many digits") from None


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at dotted ``path`` inside plain data, making the tables on the way."""
    *heads, last = path.split(".")
    node = data
    for h in heads:
        if not isinstance(node.get(h), dict):
            node[h] = {}
        node = node[h]
    node[last] = value


def with_overrides(spec: Any, overrides: Sequence[str]) -> Any:
    """Apply ``section.field=value`` overrides to any config section (values parsed as JSON when they can be).

    ``prunes.N.field=value`` edits the N-th pruning rule; ``net.arch=…`` replaces the architecture.
    The result is rebuilt, so it validates itself once.

    >>> with_overrides(RunConfig(), ["mc.n_trials=5"]).mc.n_trials
    5
    """
    data = to_dict(spec)
    for item in overrides:
        key, eq, val = item.partition("=")
        if not eq:
            raise _fail("--set", item, "expected section.field=value")
        parts = key.strip().split(".")
        value = _coerce(val.strip())
        net = data.get("net")
        if parts[-1] == "arch" and isinstance(net, dict) and parts[:-1] == ["net"]:
            data["net"] = to_dict(parse_arch(str(value), net["activation"], net["bias"]))
            continue
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(p)]
                except (ValueError, IndexError):
                    raise _fail("--set", item, f"no entry {p!r}") from None
            elif isinstance(node, dict) and p in node and isinstance(node[p], (dict, list)):
                node = node[p]
            else:
                raise _fail("--set", item, f"unknown section {'.'.join(parts[:i + 1])!r}")
        last = parts[-1]
        if not isinstance(node, dict) or last not in node:
            raise _fail("--set", item, f"unknown field {key!r}")
        node[last] = value
    return from_dict(data, type(spec))


#: How one command-line flag enters a config section: a dotted field path (the value goes there as it is),
#: or ``(path, parse)`` where ``parse`` turns the flag's text into the field's plain value.
FlagRule = str | tuple[str, Callable[[Any], Any]]
#: A rule that reads several flags at once (e.g. verify's pruning-rule flags) and edits the plain data.
FlagGroup = Callable[[dict[str, Any], Mapping[str, Any]], None]


def resolve(
    cls: type,
    *,
    table: Mapping[str, FlagRule],
    flags: Mapping[str, Any],
    config: str | None = None,
    base: Any = None,
    sets: Sequence[str] = (),
    groups: Sequence[FlagGroup] = (),
) -> Any:
    """The one resolver of every command: settings, then flags, then ``--set``, validated once.

    Order: the dataclass defaults, or ``base`` (a resumed run, a preset), or the ``--config`` file or preset
    (its tables are this section's fields); then every flag given (not ``None``), by ``table``; then the
    ``groups``; then each ``--set key=value``. The section is built once from the result, so every value,
    whichever way it came, passes the same ``__post_init__`` (an error names the field and the value).

    >>> resolve(MCSpec, table={"trials": "n_trials"}, flags={"trials": 7}, sets=["seed=3"]).seed
    3
    """
    if config is not None and base is not None:
        raise _fail("--config", config, "give a config file or a run to resume, not both")
    data: dict[str, Any] = read_toml(str(config_file(config))) if config is not None else \
        ({} if base is None else to_dict(base))
    for name, value in flags.items():
        if value is None or name not in table:
            continue
        rule = table[name]
        path, parse = (rule, None) if isinstance(rule, str) else rule
        _put(data, path, value if parse is None else parse(value))
    for group in groups:
        group(data, flags)
    spec = from_dict(data, cls)
    return with_overrides(spec, list(sets)) if sets else spec
