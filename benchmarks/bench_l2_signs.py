"""What the sign relaxation of the first layer (``bounds/signs.py``) buys on ℓ2 balls, measured in one run.

Usage: ``.venv/bin/python benchmarks/bench_l2_signs.py [--parts global,local,sampled] [--threads 1]``

* ``global``: ``mnist-net_256x2`` (``../shared/models``) pruned 50 % and 90 % by global magnitude, ℓ2 r = 1
  around 0 (issue 16's target: certified ÷ found ≤ 100). Columns: the layerwise bound, plain CROWN on the merged
  net, the differential bound without and with the sign relaxation, the latter with ``optimise=30``, the found gap
  (``gap_search``, 32 restarts × 300 steps started at the first 100 test images, as ``bench_differential.py``).
* ``local``: the same net at 50 %, ℓ2 r = 0.5 around the first N test images (no box): certified ÷ found,
  median / max, without and with the sign relaxation, seconds of each.
* ``lenet`` (with ``--lenet CHECKPOINT``): a LeNet-300-100 trained by ``probprune experiment``, 50 / 90 %, ℓ2 0.3 and
  1.0 around the first 100 test images, without and with the relaxation.
* ``sampled``: the paper's nets (``LawSpec()`` uniform, bias-free ReLU), global magnitude 10 / 50 / 90 %, three
  seeds, ℓ2 r = 1 around 0: how often the differential bound is below the layerwise one, and differential ÷
  layerwise (min / max), without and with the sign relaxation.

"Without" switches the relaxation off for the call (``signs.usable`` returns False); every other part of the
bound is the same code. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from bench_differential import crown_merged, load_mnist_256x2
from torch import Tensor

from probprune.bounds import signs
from probprune.bounds.certified import certified_gap_bound
from probprune.bounds.differential import differential_bound, gap_search
from probprune.config import BallSpec, LawSpec, NetSpec, PruneSpec
from probprune.data import load_dataset
from probprune.masks import prune
from probprune.nets import Net
from probprune.rng import make_generator
from probprune.sampling import sample_net


@contextmanager
def no_signs() -> Iterator[None]:
    orig = signs.usable
    signs.usable = lambda *_: False  # type: ignore[assignment]
    try:
        yield
    finally:
        signs.usable = orig  # type: ignore[assignment]


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def med_max(v: Tensor) -> str:
    return f"{statistics.median(v.tolist()):.4g} / {float(v.max()):.4g}"


def part_global(target: Net, x: Tensor) -> None:
    print("| prune | layerwise | CROWN merged | differential, no signs | differential | optimised (30) | found | "
          "ratios (layerwise / CROWN / no signs / differential / optimised) | s (no signs / differential / "
          "optimised / search) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ball = BallSpec(radius=1.0)
    for frac in (0.5, 0.9):
        pruned = cast(Net, prune(target, PruneSpec(prune_fraction=frac, scope="global")).model)
        with no_signs():
            off, t_off = timed(lambda p=pruned: differential_bound(target, p, ball).value)
        on, t_on = timed(lambda p=pruned: differential_bound(target, p, ball).value)
        opt, t_opt = timed(lambda p=pruned: differential_bound(target, p, ball, optimise=30).value)
        found, t_f = timed(lambda p=pruned: gap_search(target, p, ball, torch.Generator().manual_seed(0),
                                                       n_restarts=32, n_steps=300,
                                                       starts=x / x.norm(dim=-1, keepdim=True)).value)
        lw = float(certified_gap_bound(target, pruned, radius=1.0).value)
        cr = float(crown_merged(target, pruned, torch.zeros(1, 784, dtype=torch.float64), 1.0, "l2", None)[0])
        f = float(found[0])
        vals = (lw, cr, float(off[0]), float(on[0]), float(opt[0]))
        print(f"| {frac:.0%} | {lw:.4g} | {cr:.4g} | {vals[2]:.4g} | {vals[3]:.4g} | {vals[4]:.4g} | {f:.4g} | "
              + " / ".join(f"{v / f:.4g}" for v in vals)
              + f" | {t_off:.2f} / {t_on:.2f} / {t_opt:.2f} / {t_f:.1f} |", flush=True)


def part_local(target: Net, x: Tensor) -> None:
    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model)
    ball = BallSpec(radius=0.5)
    with no_signs():
        off, t_off = timed(lambda: differential_bound(target, pruned, ball, centres=x, batch_size=25).value)
    on, t_on = timed(lambda: differential_bound(target, pruned, ball, centres=x, batch_size=25).value)
    found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=x, n_restarts=4,
                       n_steps=80).value
    cr, t_cr = timed(lambda: crown_merged(target, pruned, x, 0.5, "l2", None))
    big = float(x.norm(dim=-1).max()) + 0.5
    lw = float(certified_gap_bound(target, pruned, radius=big).value)
    print(f"\nℓ2 r = 0.5 around the first {x.shape[0]} test images, 50 % global magnitude (found: gap_search 4 × 80)")
    print("| bound | certified ÷ found (median / max) | s |")
    print("|---|---|---|")
    print(f"| layerwise (ℓ2 ball around 0 of radius {big:.3g}, holding every local ball) | {med_max(lw / found)} | |")
    print(f"| CROWN on the merged net | {med_max(cr / found)} | {t_cr:.2f} |")
    print(f"| differential, no signs | {med_max(off / found)} | {t_off:.2f} |")
    print(f"| differential | {med_max(on / found)} | {t_on:.2f} |")
    print(f"| with ÷ without, per ball (min / median / max) | {float((on / off).min()):.4g} / "
          f"{statistics.median((on / off).tolist()):.4g} / {float((on / off).max()):.4g} | |", flush=True)


def part_lenet(checkpoint: str) -> None:
    """A LeNet-300-100 checkpoint of ``probprune experiment``: ℓ2 0.3 and 1.0 around the first 100 test images."""
    from probprune.bounds.differential import certified_agreement
    from probprune.data import inputs_for, lenet_spec
    from probprune.nets import from_state_dict
    from probprune.store import load_tensors

    spec = lenet_spec("lenet-300-100")
    target = from_state_dict(spec, load_tensors(checkpoint)[0])
    ds = load_dataset("mnist")
    x = inputs_for(ds.test_images[:100], spec, torch.float64).reshape(100, -1)
    print(f"\nLeNet-300-100 ({checkpoint}), ℓ2 balls around the first 100 test images (found: gap_search 4 × 80)")
    print("| prune | ball | no signs (median / max) | with signs (median / max) | "
          "certified agreement (no signs → with) | s (no signs / with) |")
    print("|---|---|---|---|---|---|")
    for frac in (0.5, 0.9):
        pruned = cast(Net, prune(target, PruneSpec(prune_fraction=frac, scope="global")).model)
        for r in (0.3, 1.0):
            ball = BallSpec(radius=r)
            found = gap_search(target, pruned, ball, torch.Generator().manual_seed(0), centres=x, n_restarts=4,
                               n_steps=80).value
            with no_signs():
                off, t_off = timed(lambda p=pruned, b=ball: differential_bound(target, p, b, centres=x).value)
                a_off = certified_agreement(target, pruned, ball, centres=x, attack=False).certified_rate
            on, t_on = timed(lambda p=pruned, b=ball: differential_bound(target, p, b, centres=x).value)
            a_on = certified_agreement(target, pruned, ball, centres=x, attack=False).certified_rate
            print(f"| {frac:.0%} | l2 {r} | {med_max(off / found)} | {med_max(on / found)} | {a_off:.0%} → {a_on:.0%} "
                  f"| {t_off:.1f} / {t_on:.1f} |", flush=True)


def part_sampled() -> None:
    print("\nPaper's sampled nets, ℓ2 r = 1 around 0, bias-free ReLU, LawSpec() uniform, global magnitude, seeds 0-2:"
          " balls where differential < layerwise, and differential ÷ layerwise (min / max)")
    print("| widths | prune | no signs: wins (min / max) | with signs: wins (min / max) |")
    print("|---|---|---|---|")
    ball = BallSpec(radius=1.0)
    total = [0, 0, 0]
    for widths in ((16, 64, 64, 4), (16, 128, 128, 4), (32, 256, 256, 10), (16, 64, 64, 64, 4)):
        for frac in (0.1, 0.5, 0.9):
            cells = []
            for use in (False, True):
                ratios = []
                for seed in range(3):
                    target = sample_net(NetSpec(widths=widths), LawSpec(), make_generator(seed))
                    pruned = cast(Net, prune(target, PruneSpec(prune_fraction=frac, scope="global")).model)
                    lw = float(certified_gap_bound(target, pruned, radius=1.0).value)
                    if use:
                        dv = float(differential_bound(target, pruned, ball).value[0])
                    else:
                        with no_signs():
                            dv = float(differential_bound(target, pruned, ball).value[0])
                    ratios.append(dv / lw)
                wins = sum(r < 1 for r in ratios)
                if use:
                    total[0] += wins
                else:
                    total[1] += wins
                cells.append(f"{wins}/3 ({min(ratios):.3g} / {max(ratios):.3g})")
            total[2] += 3
            print(f"| {'-'.join(map(str, widths))} | {frac:.0%} | {cells[0]} | {cells[1]} |", flush=True)
    print(f"differential below layerwise: {total[1]} of {total[2]} without the sign relaxation, "
          f"{total[0]} of {total[2]} with it")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="global,local,sampled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--lenet", default="", help="part 'lenet': a LeNet-300-100 checkpoint of probprune experiment")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    if parts & {"global", "local"}:
        target = load_mnist_256x2()
        ds = load_dataset("mnist")
        x = ds.test_images[:args.n_images].reshape(args.n_images, -1).double() / 255.0
        if "global" in parts:
            part_global(target, x)
        if "local" in parts:
            part_local(target, x)
    if "sampled" in parts:
        part_sampled()
    if "lenet" in parts:
        part_lenet(args.lenet)


if __name__ == "__main__":
    main()
