"""Local certificates (format ``probprune-certificate/4``, ``model: chain`` or ``graph``): balls around real inputs.

A local certificate states, for each ball ``B = {x : ‖x − c‖ ≤ r} ∩ box`` (norm ℓ2 or ℓ∞, the box optional) of
one pruned network f against its target F — chain networks (``model: chain``: architecture, activation, bias) or
ONNX models read as graphs (``model: graph``: a ``graph`` section with the input/output shapes, node count, ops and
the parameter digests; the bounds are their graph forms
:func:`~probprune.bounds.differential_graph.graph_certified_agreement` /
:func:`~probprune.bounds.graph.certified_graph_gap` / :func:`~probprune.bounds.differential_graph.graph_gap_search`,
which cover both graphs evaluated in float64):

* ``upper``: a certified upper bound on ``sup_{x ∈ B} ‖f(x) − F(x)‖₂`` — the smaller of the differential bound
  (:func:`~probprune.bounds.differential.differential_bound` on that ball, ``method: differential``) and the layerwise
  bound (:func:`~probprune.bounds.certified.certified_gap_bound`) over the ℓ2 ball around 0 of radius
  ``layerwise_radius`` (:func:`~probprune.runner.certify.layerwise_radius`) that contains B (``method: layerwise``);
  both values are stated;
* ``lower``: ``‖f(x*) − F(x*)‖₂`` (float64) at the witness x* ∈ B found by
  :func:`~probprune.bounds.differential.gap_search`;
* ``certified_agree``: whether :func:`~probprune.bounds.differential.certified_agreement` (no attack) certifies that F
  and f have F's top-1 class at c as their unique top-1 class everywhere in B (``null``: one output, no classifier).

The centre is inline (a list of numbers, flattened) or a row of an ``.npy`` file named by its SHA-256, path and row
index. Made by ``probprune certify … --certificate cert.json`` (:func:`certify_certificate`) or from Python
(:func:`make_local_certificate`, ``pp.make_local_certificate``: a pair of nets or of graphs);
:func:`check_local_certificate` (``probprune certificate check cert.json --weights F --pruned f``,
``pp.check_local_certificate``) recomputes every number of every ball from the two files with the same public
functions, one ball at a time (as the maker did), re-checks each witness, and the digests. The layerwise bound's
operator norms are computed once per pair (:func:`~probprune.bounds.certified.pair_norms`,
:func:`~probprune.bounds.graph.graph_pair_norms`) by maker and checker alike. A format-3 checker refuses the document.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from probprune.bounds.certified import PairNorms, certified_gap_bound, pair_norms
from probprune.bounds.differential import certified_agreement, differential_bound, gap_search
from probprune.bounds.differential_graph import graph_certified_agreement, graph_differential_bound, graph_gap_search
from probprune.bounds.graph import GraphPairNorms, certified_graph_gap, check_graph_pair, graph_pair_norms
from probprune.config import BallSpec, CertifyJob, NetSpec, ProbPruneError, parse_arch
from probprune.nets import Net, check_pair
from probprune.nets.graph import Graph
from probprune.nets.onnx import load_onnx
from probprune.runner.certificate import RTOL, CertificateRejected, CheckOutcome
from probprune.runner.certificate import _Checker as Checker
from probprune.runner.certificate import _versions as versions
from probprune.runner.certificate_graph import graph_params_sha256, read_graph_model
from probprune.runner.certify import CertifyOutcome, layerwise_radius, load_inputs, load_pair, read_inputs
from probprune.runner.prune import load_net
from probprune.store import file_sha256

__all__ = [
    "LOCAL_FORMAT",
    "LocalPair",
    "certify_certificate",
    "check_local_certificate",
    "graph_section",
    "local_ball",
    "local_pair",
    "make_local_certificate",
    "net_params_sha256",
]

LOCAL_FORMAT = "probprune-certificate/4"
"""The format of local certificates (``probprune/certificate4-local.schema.json``)."""


def net_params_sha256(net: Net) -> str:
    """SHA-256 of a network's tensors: name, shape, dtype and bytes, in ``state_dict`` order."""
    h = hashlib.sha256()
    for name, t in net.to(device="cpu").state_dict().items():
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _inside(x: Tensor, c: Tensor, radius: float, norm: str, box: Sequence[float] | None) -> bool:
    """``x ∈ {‖x − c‖ ≤ r} ∩ box``, as float64 computes it."""
    v = x - c
    dist = float(v.abs().max()) if norm == "linf" else float(v.norm())
    ok = dist <= radius
    if box is not None:
        ok = ok and bool(((x >= box[0]) & (x <= box[1])).all())
    return ok


def _into_ball(x: Tensor, c: Tensor, radius: float, norm: str, box: Sequence[float] | None) -> Tensor:
    """Pull a search point into the closed ball ∩ box a few ulps at a time (it is inside up to rounding)."""
    w = x.clone()
    for _ in range(64):
        if _inside(w, c, radius, norm, box):
            return w
        w = c + (w - c) * (1.0 - 2.0 ** -50)
        if box is not None:
            w = w.clamp(box[0], box[1])
    raise ProbPruneError("witness: the search's best point is not inside the ball")


@dataclass(frozen=True, eq=False)
class LocalPair:
    """F and f — two chain nets or two graphs of one structure — with the pair's operator norms (computed once):
    what every ball of a local certificate is derived from, by maker and checker alike."""

    target: Net | Graph
    pruned: Net | Graph
    norms: PairNorms | GraphPairNorms

    @property
    def is_graph(self) -> bool:
        """Whether the models are graphs."""
        return isinstance(self.target, Graph)

    @property
    def dim(self) -> int:
        """The flat input size d."""
        if isinstance(self.target, Graph):
            return math.prod(self.target.input_shape)
        return int(self.target.spec.widths[0])

    def gap_at(self, x: Tensor) -> float:
        """``‖f(x) − F(x)‖₂`` at one flat input, both models in float64 on the CPU."""
        with torch.no_grad():
            if isinstance(self.target, Graph):
                shape = (1, *self.target.input_shape)
                t64, p64 = self.target.to(torch.float64, "cpu"), cast(Graph, self.pruned).to(torch.float64, "cpu")
                out_p, out_t = cast(Tensor, p64(x.reshape(shape))), cast(Tensor, t64(x.reshape(shape)))
            else:
                t, p = self.target.to(dtype=torch.float64), cast(Net, self.pruned).to(dtype=torch.float64)
                out_p, out_t = cast(Tensor, p(x.reshape(1, -1))), cast(Tensor, t(x.reshape(1, -1)))
            return float((out_p - out_t).reshape(-1).norm())

    def layerwise(self, radius: float) -> float:
        """The layerwise bound over the ℓ2 ball of ``radius`` around 0 (the pair's norms reused)."""
        if isinstance(self.target, Graph):
            return float(certified_graph_gap(self.target, cast(Graph, self.pruned), radius=radius,
                                             norms=cast(GraphPairNorms, self.norms)).value)
        return float(certified_gap_bound(self.target, cast(Net, self.pruned), radius=radius,
                                         norms=cast(PairNorms, self.norms)).value)

    def differential(self, ball: BallSpec) -> tuple[float | None, bool | None]:
        """The differential bound over the ball and the certified-agreement verdict (``None``: not taken)."""
        if isinstance(self.target, Graph):
            g, gp = self.target, cast(Graph, self.pruned)
            try:  # one propagation gives the margins and the bound
                agr = graph_certified_agreement(g, gp, ball, attack=False)
                return float(cast(Any, agr.bound).value[0]), agr.verdicts[0] == "certified"
            except ProbPruneError:  # not a classifier: the bound alone
                pass
            try:
                return float(graph_differential_bound(g, gp, ball).value[0]), None
            except ProbPruneError:
                return None, None
        t, p = self.target, cast(Net, self.pruned)
        try:
            ud: float | None = float(differential_bound(t, p, ball).value[0])
        except ProbPruneError:  # an activation or architecture the differential bound does not take
            ud = None
        try:
            agree: bool | None = certified_agreement(t, p, ball, attack=False).verdicts[0] == "certified"
        except ProbPruneError:  # not a classifier (one output), or not a net the agreement propagation takes
            agree = None
        return ud, agree

    def search(self, ball: BallSpec, gen: torch.Generator, n_restarts: int, n_steps: int) -> Tensor:
        """The gap search's best point of the ball (flat float64)."""
        if isinstance(self.target, Graph):
            found = graph_gap_search(self.target, cast(Graph, self.pruned), ball, gen, n_restarts=n_restarts,
                                     n_steps=n_steps)
        else:
            found = gap_search(self.target, cast(Net, self.pruned), ball, gen, n_restarts=n_restarts,
                               n_steps=n_steps)
        return found.x.reshape(-1).to(torch.float64)


def local_pair(target: Net | Graph, pruned: Net | Graph) -> LocalPair:
    """Check the pair (two single chain nets of one architecture, or two graphs of one structure) and compute its
    operator norms once.

    Raises:
        ProbPruneError: a mixed pair, different architectures or structures, an ensemble.
    """
    if isinstance(target, Graph) or isinstance(pruned, Graph):
        if not (isinstance(target, Graph) and isinstance(pruned, Graph)):
            raise ProbPruneError("pruned: the target and the pruned model must both be nets or both be graphs")
        check_graph_pair(target, pruned)
        return LocalPair(target, pruned, graph_pair_norms(target, pruned))
    check_pair(target, pruned)
    if target.n_trials is not None:
        raise ProbPruneError(f"target: one network expected, got an ensemble of {target.n_trials}")
    return LocalPair(target, pruned, pair_norms(target, pruned))


def _bounds(pair: LocalPair, c: Tensor, radius: float, norm: str, box: tuple[float, float] | None) -> dict[str, Any]:
    """The re-derivable numbers of one ball except the witness (shared by maker and checker)."""
    ball = BallSpec(radius=radius, norm=norm, box=box, centre=tuple(float(v) for v in c.tolist()))  # type: ignore[arg-type]
    ud, agree = pair.differential(ball)
    big_r = float(layerwise_radius(c.reshape(1, -1), radius, norm, box)[0])
    ul = pair.layerwise(big_r)
    method = "differential" if ud is not None and ud <= ul else "layerwise"
    return {"upper": ud if method == "differential" else ul, "method": method, "upper_differential": ud,
            "upper_layerwise": ul, "layerwise_radius": big_r, "certified_agree": agree}


def local_ball(target: Net | Graph | LocalPair, pruned: Net | Graph | None, centre: Tensor, *, radius: float,
               norm: str = "l2", box: tuple[float, float] | None = None, seed: int = 0, n_restarts: int = 8,
               n_steps: int = 100, centre_ref: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ball of a local certificate: its certified upper bound, witnessed lower bound and agreement verdict.

    Args:
        target, pruned: F and f (single fully connected nets, or two graphs of one structure); or a
            :class:`LocalPair` (norms computed once) and ``None``.
        centre: ``[d]`` (or the graph's input shape) the centre c (used in float64, flattened).
        radius, norm, box: the ball ``{‖x − c‖ ≤ r} ∩ box``.
        seed, n_restarts, n_steps: the witness search (:func:`~probprune.bounds.differential.gap_search`, or
            :func:`~probprune.bounds.differential_graph.graph_gap_search` for graphs).
        centre_ref: ``{"sha256", "path", "index"}`` of the ``.npy`` row the centre is, or ``None`` (inline).

    Returns:
        The ball as plain JSON data (module docstring).
    """
    pair = target if isinstance(target, LocalPair) else local_pair(target, cast(Any, pruned))
    c = centre.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    numbers = _bounds(pair, c, radius, norm, box)
    ball = BallSpec(radius=radius, norm=norm, box=box, centre=tuple(float(v) for v in c.tolist()))  # type: ignore[arg-type]
    x = _into_ball(pair.search(ball, torch.Generator().manual_seed(seed), n_restarts, n_steps), c, radius, norm, box)
    return {"centre": dict(centre_ref) if centre_ref is not None else [float(v) for v in c.tolist()],
            "norm": norm, "radius": float(radius), "box": None if box is None else [float(box[0]), float(box[1])],
            **numbers, "lower": pair.gap_at(x), "witness": [float(v) for v in x.tolist()]}


def _file(path: str | None) -> dict[str, Any]:
    return {"path": path, "sha256": None if path is None else file_sha256(path)}


def graph_section(target: Graph, pruned: Graph) -> dict[str, Any]:
    """The ``graph`` section of a graph model's local certificate (re-derivable from the two models)."""
    return {"input_shape": list(target.input_shape), "output_shape": list(target.output_shape),
            "n_nodes": len(target.nodes), "ops": sorted({n.op for n in target.nodes}),
            "params_sha256": {"target": graph_params_sha256(target), "pruned": graph_params_sha256(pruned)}}


def _model_section(pair: LocalPair) -> dict[str, Any]:
    """What the document says the models are: chain (arch, activation, bias, digests) or graph (its section)."""
    if isinstance(pair.target, Graph):
        return {"model": "graph", "graph": graph_section(pair.target, cast(Graph, pair.pruned))}
    spec = pair.target.spec
    return {"model": "chain", "arch": spec.to_arch(), "activation": spec.activation, "bias": spec.bias,
            "params_sha256": {"target": net_params_sha256(pair.target),
                              "pruned": net_params_sha256(cast(Net, pair.pruned))}}


def make_local_certificate(target: Net | Graph, pruned: Net | Graph, centres: Tensor, *, radius: float,
                           norm: str = "l2", clip: tuple[float, float] | None = None, target_path: str | None = None,
                           pruned_path: str | None = None, centres_path: str | None = None,
                           indices: Sequence[int] | None = None, seed: int = 0, n_restarts: int = 8,
                           n_steps: int = 100) -> dict[str, Any]:
    """A local certificate of f against F with one ball per row of ``centres`` (``pp.certify``'s inputs).

    Args:
        target, pruned: F and f — single chain nets (``model: chain``) or two
            :class:`~probprune.nets.graph.Graph`\\ s of one structure (``model: graph``, e.g. read by
            :func:`~probprune.nets.onnx_graph.load_onnx_graph`); ``target_path``/``pruned_path`` the files they were
            read from (their digests are stated; without them the document states only the parameter digests, and
            the checker needs the files).
        centres: ``[N, d]`` centres (a graph also takes ``[N, *input_shape]``). ``centres_path``: the ``.npy`` they
            are rows of (then each ball names the file by digest, path and row index ``indices[i]``, default ``i``)
            instead of inline numbers.
        radius, norm, clip: the balls ``{‖x − c‖ ≤ r} ∩ clip``.
        seed, n_restarts, n_steps: the witness searches (ball i draws from ``seed + i``).

    Raises:
        ProbPruneError: not a pair of single chain nets or of graphs of one structure, bad centres or ball.

    >>> import probprune as pp
    >>> from probprune.nets.graph import Graph, Node, activation
    >>> w = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    >>> F = Graph([Node("fc", "linear", ("input",), params={"weight": w}),
    ...            Node("r", "act", ("fc",), {"act": activation("relu")}),
    ...            Node("out", "linear", ("r",), params={"weight": w})], (2,))
    >>> f = F.with_parameters({"out.weight": w * (w.abs() > 0.6)})
    >>> doc = pp.make_local_certificate(F, f, torch.tensor([[1.0, 0.0]]), radius=0.1, n_restarts=1, n_steps=5)
    >>> doc["model"], len(doc["local"]), doc["local"][0]["lower"] <= doc["local"][0]["upper"]
    ('graph', 1, True)
    """
    pair = local_pair(target, pruned)
    if not isinstance(centres, Tensor) or centres.dim() < 2 or centres.shape[0] == 0 \
            or centres[0].numel() != pair.dim or (not pair.is_graph and centres.dim() != 2):
        raise ProbPruneError(f"centres: expected a tensor [N, {pair.dim}] with N >= 1")
    flat = centres.reshape(centres.shape[0], -1)
    idx = list(range(flat.shape[0])) if indices is None else [int(i) for i in indices]
    sha = None if centres_path is None else file_sha256(centres_path)
    balls = [local_ball(pair, None, flat[i], radius=radius, norm=norm, box=clip, seed=seed + i,
                        n_restarts=n_restarts, n_steps=n_steps,
                        centre_ref=None if sha is None else {"sha256": sha, "path": centres_path, "index": idx[i]})
             for i in range(flat.shape[0])]
    return {"format": LOCAL_FORMAT, **_model_section(pair), "target": _file(target_path), "pruned": _file(pruned_path),
            "local": balls, "seeds": {"seed": int(seed)},
            "estimator": {"n_restarts": int(n_restarts), "n_steps": int(n_steps)}, "versions": versions()}


def certify_certificate(job: CertifyJob, outcome: CertifyOutcome) -> dict[str, Any]:
    """The local certificate of a ``probprune certify`` run: one ball per input of its rows (``--certificate``).

    The models and inputs are read again from the job's files (a graph model — what ``certify`` certifies through
    the graph bounds — as graphs); an ``.npy`` data file is named by digest and row.
    """
    if job.radius is None:
        raise ProbPruneError("certificate: a local certificate states a radius; per-input --halfwidth boxes "
                             "cannot be written into one yet")
    from probprune.runner.certify import _graph_target

    model = _graph_target(job)
    target: Net | Graph
    pruned: Net | Graph
    if model is not None:
        from probprune.runner.certify_graph import load_graph_pair

        target, pruned = load_graph_pair(job, model)
        x, _, _ = read_inputs(job, target.input_shape)
    else:
        target, pruned = load_pair(job)
        x, _, _ = load_inputs(job, target.spec)
    indices = [int(r["index"]) for r in outcome.rows]
    npy = None if not str(job.data).lower().endswith(".npy") else job.data
    return make_local_certificate(target, pruned, x[indices], radius=job.radius, norm=job.norm, clip=job.clip,
                                  target_path=job.weights, pruned_path=job.pruned, centres_path=npy,
                                  indices=indices, seed=job.seed, n_restarts=job.n_restarts, n_steps=job.n_steps)


# ---------------------------------------------------------------------------- the checker


def _load(name: str, path: str, spec: NetSpec) -> Net:
    try:
        return load_onnx(path) if path.lower().endswith(".onnx") else load_net(spec, path)
    except ProbPruneError as e:
        raise ProbPruneError(f"{name}={path!r}: {e}") from None


def _centre(ball: Mapping[str, Any], i: int, d: int, cert_dir: Path | None, c: Checker) -> Tensor:
    """The centre of ball ``i``: inline, or the stated row of the ``.npy`` whose digest matches."""
    ref = ball["centre"]
    if isinstance(ref, list):
        x = torch.tensor(ref, dtype=torch.float64)
    else:
        path = Path(ref["path"])
        if not path.is_file() and cert_dir is not None and (cert_dir / path).is_file():
            path = cert_dir / path
        if not path.is_file():
            raise ProbPruneError(f"{c.where}: field local.{i}.centre.path: {ref['path']!r}: no such file (the "
                                 "centres' .npy is needed to check the ball)")
        got = file_sha256(path)
        if got != ref["sha256"]:
            c.reject(f"local.{i}.centre.sha256", ref["sha256"], got, f" (of {str(path)!r})")
        arr = np.load(path, allow_pickle=False)
        if not isinstance(arr, np.ndarray) or arr.ndim < 2 or arr.dtype.kind not in "fiu" \
                or not 0 <= ref["index"] < arr.shape[0]:
            c.reject(f"local.{i}.centre.index", ref["index"], f"a row of the [N, {d}] array in {str(path)!r}")
        x = torch.from_numpy(np.ascontiguousarray(arr[ref["index"]], dtype=np.float64)).reshape(-1)
    if x.numel() != d or not bool(torch.isfinite(x).all()):
        c.reject(f"local.{i}.centre", f"{x.numel()} entries", f"{d} finite entries (the input size)")
    return x


def _check_ball(ball: Mapping[str, Any], i: int, pair: LocalPair, cert_dir: Path | None, c: Checker) -> None:
    """Re-derive one ball: its bounds and verdict recomputed, its witness inside the ball and its gap."""
    d = pair.dim
    x0 = _centre(ball, i, d, cert_dir, c)
    radius, norm = float(ball["radius"]), str(ball["norm"])
    box = None if ball["box"] is None else (float(ball["box"][0]), float(ball["box"][1]))
    if box is not None and not bool(((x0 >= box[0]) & (x0 <= box[1])).all()):
        c.reject(f"local.{i}.box", ball["box"], "a box that holds the centre")
    try:
        want = _bounds(pair, x0, radius, norm, box)
    except ProbPruneError as e:
        raise ProbPruneError(f"{c.where}: rejected: field local.{i}: the ball cannot be bounded ({e})") from None
    if not math.isclose(float(ball["upper"]), want["upper"], rel_tol=c.rtol, abs_tol=0.0):
        c.reject(f"local.{i}.upper", ball["upper"], want["upper"], " (the certified bound recomputed for the ball)")
    w = torch.tensor(ball["witness"], dtype=torch.float64)
    if w.numel() != d or not bool(torch.isfinite(w).all()):
        c.reject(f"local.{i}.witness", f"{w.numel()} entries", f"{d} finite entries (the input size)")
    if not _inside(w, x0, radius, norm, box):
        raise CertificateRejected(f"{c.where}: rejected: field local.{i}.witness: the witness lies outside the ball "
                                  f"(norm {norm}, radius {radius!r}, box {ball['box']!r})", f"local.{i}.witness",
                                  "outside", "inside")
    c.same(f"local.{i}", {k: ball[k] for k in (*want, "lower")}, {**want, "lower": pair.gap_at(w)},
           " (re-derived from the files, the centre and the witness)")


def check_local_certificate(doc: Mapping[str, Any], weights: str | Path, pruned: str | Path, rtol: float = RTOL,
                            where: str = "certificate", cert_dir: str | Path | None = None) -> CheckOutcome:
    """Re-derive every ball of a local certificate from the target and pruned files; confirm or reject.

    Args:
        doc: the certificate, validated (``report.certificate.read_certificate``), ``model`` chain or graph.
        weights: the target F (.safetensors or .onnx; .onnx for a graph). pruned: the pruned f.
        rtol: relative tolerance between stated and recomputed floats.
        where: prefix of error messages. cert_dir: the certificate's folder (a relative ``.npy`` path of a
            centre is looked up there too).

    Raises:
        CertificateRejected: a stated value differs from the re-derived one (names the field).
        ProbPruneError: unreadable files, a missing centres file.
    """
    c = Checker(where, rtol)
    _check_files(doc, weights, pruned, c)
    if doc["model"] == "graph":
        from probprune.runner.graph import load_pruned_graph

        model = read_graph_model("weights", weights)
        tg, pg = model.graph, load_pruned_graph(model, str(pruned))
        c.same("graph", dict(doc["graph"]), graph_section(tg, pg), " (read from the two files)")
        pair = local_pair(tg, pg)
        c.verified += ["model"]
    else:
        spec = parse_arch(doc["arch"], activation=doc["activation"], bias=doc["bias"])
        t, p = _load("weights", str(weights), spec), _load("pruned", str(pruned), spec)
        check_pair(t, p)
        c.same("arch", doc["arch"], t.spec.to_arch())
        c.same("params_sha256", dict(doc["params_sha256"]), {"target": net_params_sha256(t),
                                                              "pruned": net_params_sha256(p)})
        pair = local_pair(t, p)
        c.verified += ["activation", "bias", "model"]
    for i, ball in enumerate(doc["local"]):
        _check_ball(ball, i, pair, None if cert_dir is None else Path(cert_dir), c)
    c.verified += ["local", "format"]
    c.not_verified += [("seeds.seed", "drives only the witness searches; each witness proves its lower bound"),
                       ("estimator", "the search budget that found the witnesses")]
    mine = versions()
    if dict(doc["versions"]) == mine:
        c.verified.append("versions")
    else:
        c.not_verified.append(("versions", f"made with {doc['versions']}, checked with {mine}"))
    b0, top = doc["local"][0], float(max(b["upper"] for b in doc["local"]))
    return CheckOutcome(upper=top, certified=top,
                        lower=float(max(b["lower"] for b in doc["local"])), radius=float(b0["radius"]),
                        target_source="file", verified=tuple(c.verified), not_verified=tuple(c.not_verified),
                        notes=(f"{len(doc['local'])} local balls re-derived (norm {b0['norm']}, radius "
                               f"{b0['radius']!r}); the upper and lower bounds shown are the largest over them",))


def _check_files(doc: Mapping[str, Any], weights: str | Path, pruned: str | Path, c: Checker) -> None:
    """The two files' digests (or that none was recorded), and their paths listed as not verified."""
    for key, path in (("target", weights), ("pruned", pruned)):
        want = doc[key]["sha256"]
        if want is None:
            c.not_verified.append((f"{key}.sha256", "no digest recorded (made from networks in memory)"))
        else:
            c.same(f"{key}.sha256", want, file_sha256(path), f" (of {str(path)!r})")
        if doc[key]["path"] is not None:
            c.not_verified.append((f"{key}.path", "a file name, not a property of the networks"))
