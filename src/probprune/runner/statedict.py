"""A safetensors checkpoint under a model's own parameter names, mapped exactly onto an architecture's layers.

probprune names a chain's tensors as ``to_module(net).state_dict()`` does (``0.weight``, ``2.weight`` …). A
checkpoint saved from the user's own ``nn.Module`` (``safetensors.torch.save_file(model.state_dict(), …)``)
names them as that module does: ``features.0.weight``, ``classifier.1.bias``, ``fc1.weight``.
:func:`own_names` maps such names onto the ``--arch`` layers, exactly or not at all:

* every tensor must be the ``weight`` (and, with biases, the ``bias``) of one Linear/Conv2d layer: anything
  else (BatchNorm's statistics, buffers, a bias on a bias-free architecture) is refused, named;
* the order of the layers is known only where the names say it: two names that differ first in a pair of
  integers (``features.0`` and ``features.3``: indices of one ``nn.Sequential``/``nn.ModuleList``) are in that
  order; names that differ in a word (``features.3`` and ``classifier.0``, ``fc1`` and ``fc2``) are not ordered
  by their names (the module's ``forward`` decides, which a state dict does not record);
* the map is the one assignment of the file's layers to the architecture's layers, in order, with every
  weight (and bias) shape equal and no order the names give broken. None, or more than one (equal shapes whose
  order the names do not give), is refused, naming the tensors.

The map is returned, so that a pruned model is written under the same names (:func:`renamed`).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from probprune.config import NetSpec, ProbPruneError

__all__ = ["own_names", "renamed"]

_SUFFIXES = ("weight", "bias")


def _before(p: str, q: str) -> bool:
    """``p`` is a layer before ``q`` by the names: the first component where they differ is a pair of integers."""
    for a, b in zip(p.split("."), q.split(".")):
        if a != b:
            return a.isdigit() and b.isdigit() and int(a) < int(b)
    return False


def _groups(spec: NetSpec, tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The file's tensors by layer name (``features.0``) and suffix; anything but a weight/bias refused."""
    groups: dict[str, dict[str, Tensor]] = {}
    for name in sorted(tensors):
        prefix, _, suffix = name.rpartition(".")
        if not prefix or suffix not in _SUFFIXES:
            raise ProbPruneError(f"tensor {name!r}: not the weight or bias of a Linear/Conv2d layer of architecture "
                                 f"{spec.to_arch()} (BatchNorm statistics and other buffers: fold them into the "
                                 "layers first, or read the module with graph_from_module / export it to ONNX)")
        groups.setdefault(prefix, {})[suffix] = tensors[name]
    for prefix, g in groups.items():
        if "weight" not in g:
            raise ProbPruneError(f"tensor {prefix + '.bias'!r}: a bias without a weight {prefix + '.weight'!r}")
        if spec.bias != ("bias" in g):
            raise ProbPruneError(
                f"tensor {prefix + '.bias'!r}: the architecture has no biases (give --bias)" if "bias" in g else
                f"tensor {prefix + '.weight'!r}: has no bias {prefix + '.bias'!r}, but the architecture has biases "
                "(leave --bias out)")
    if len(groups) != spec.n_layers:
        listed = ", ".join(f"{p}.weight {tuple(g['weight'].shape)}" for p, g in groups.items())
        raise ProbPruneError(f"tensors: the file has {len(groups)} weight tensor(s) ({listed}), architecture "
                             f"{spec.to_arch()} has {spec.n_layers} layers")
    return groups


def _fits(g: dict[str, Tensor], shape: tuple[int, ...]) -> bool:
    b = g.get("bias")
    return tuple(g["weight"].shape) == shape and (b is None or tuple(b.shape) == shape[:1])


#: Partial assignments tried before the search gives up (equal shapes in unordered names can make many).
_MAX_STEPS = 100_000


def _assignments(shapes: list[tuple[int, ...]], groups: dict[str, dict[str, Tensor]],
                 limit: int = 2) -> list[list[str]]:
    """Up to ``limit`` assignments (layer i → file layer name) with equal shapes and no name order broken."""
    found: list[list[str]] = []
    chosen: list[str] = []
    steps = [0]

    def extend(i: int) -> None:
        steps[0] += 1
        if steps[0] > _MAX_STEPS:
            raise ProbPruneError(f"tensors {', '.join(groups)}: too many ways to try to map them onto the "
                                 "architecture (equal shapes in names that give no order); save the model as one "
                                 "nn.Sequential, or name the tensors as probprune does")
        if len(found) >= limit:
            return
        if i == len(shapes):
            found.append(list(chosen))
            return
        for p, g in groups.items():
            if p not in chosen and _fits(g, shapes[i]) and not any(_before(p, q) for q in chosen):
                chosen.append(p)
                extend(i + 1)
                chosen.pop()

    extend(0)
    return found


def own_names(spec: NetSpec, tensors: Mapping[str, Tensor]) -> dict[str, str] | None:
    """The map probprune name → the file's name of every tensor, or ``None`` when the file uses probprune's.

    Args:
        spec: the architecture (``--arch``, ``--bias``).
        tensors: the checkpoint's tensors by name.

    Returns:
        ``None`` when the names are ``spec``'s (``0.weight`` …; also when some are missing or extra:
        :func:`~probprune.nets.from_state_dict` then reads the file as it is, or names what is wrong), else
        ``{"0.weight": "features.0.weight", "0.bias": …}``.

    Raises:
        ProbPruneError: a tensor that is no layer's weight or bias, a bias mismatch, another number of layers, or
            no single assignment of the file's layers to the architecture's (shapes and the names' order);
            the message names the tensors.

    >>> import torch
    >>> from probprune.config import parse_arch
    >>> own_names(parse_arch("fcn:4,3,2"), {"fc2.weight": torch.zeros(2, 3), "fc1.weight": torch.zeros(3, 4)})
    {'0.weight': 'fc1.weight', '2.weight': 'fc2.weight'}
    """
    names = spec.layer_names()
    ours = set(names) | ({n.replace(".weight", ".bias") for n in names} if spec.bias else set())
    if set(tensors) <= ours or ours <= set(tensors):  # probprune's names (a missing or extra one: its message)
        return None
    groups = _groups(spec, tensors)
    shapes = spec.weight_shapes()
    found = _assignments(shapes, groups)
    if not found:
        for i in range(len(shapes)):  # the first layer no assignment reaches: name it and what the file has
            if not _assignments(shapes[: i + 1], groups, 1):
                have = ", ".join(f"{p}.weight {tuple(g['weight'].shape)}" for p, g in groups.items())
                raise ProbPruneError(f"tensors: layer {i} ({names[i]}) of architecture {spec.to_arch()} takes a "
                                     f"weight of shape {shapes[i]}, and no tensor of the file fits it in order "
                                     f"(file: {have})")
    if len(found) > 1:
        a, b = found[0], found[1]
        differ = sorted({p for p, q in zip(a, b) if p != q})
        raise ProbPruneError(f"tensors {', '.join(p + '.weight' for p in differ)}: more than one way to map them "
                             f"onto architecture {spec.to_arch()} (equal shapes, and their names do not give their "
                             "order); save the model as one nn.Sequential, or name the tensors as probprune does "
                             f"({', '.join(names)})")
    out: dict[str, str] = {}
    for ours_name, prefix in zip(names, found[0]):
        out[ours_name] = prefix + ".weight"
        if spec.bias:
            out[ours_name.replace(".weight", ".bias")] = prefix + ".bias"
    return out


def renamed(tensors: Mapping[str, Tensor], names: Mapping[str, str]) -> dict[str, Tensor]:
    """``tensors`` keyed by ``names[key]`` (a map from :func:`own_names`, or its inverse); every key must map."""
    missing = sorted(set(tensors) - set(names))
    if missing:
        raise ProbPruneError(f"tensor {missing[0]!r}: has no name in the map {dict(names)}")
    return {names[k]: v for k, v in tensors.items()}
