"""How long ``from_module`` takes to read the LeNets (issue 15: one code path for reading a module).

Per model (``probprune.data`` builds LeNet-300-100 and LeNet-5 as ``nn.Sequential``): the median over ``--runs``
runs of ``from_module(module)``, and beside it, in the same run, the floor of any checked conversion: one float64
forward of the module on the 256 check inputs (a reader that checks its conversion numerically runs at least that)
and a plain ``copy.deepcopy`` of the module. Wall and process CPU time (on a shared machine the CPU time is the
work; the wall time adds waiting for a core). One thread.

    PYTHONPATH=src python benchmarks/bench_from_module.py --runs 7
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from probprune.data import init_module, lenet_spec
from probprune.nets import from_module


def _median(fn: object, runs: int, cpu: bool = False) -> float:
    """Median wall time of ``fn()`` (or, with ``cpu``, of this process's CPU time: what the work costs on a
    shared machine, where wall time also counts waiting for a core)."""
    clock = time.process_time if cpu else time.perf_counter
    times = []
    for _ in range(runs):
        t0 = clock()
        fn()  # type: ignore[operator]
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in ("lenet-300-100", "lenet-5"):
        _one(name, args.runs)


def _one(name: str, runs: int) -> None:
    spec = lenet_spec(name)
    module = init_module(spec, torch.Generator().manual_seed(0)).eval()
    shape = spec.input_shape
    from_module(module, input_shape=shape)  # warm-up (imports, first fx trace)
    conv = _median(lambda: from_module(module, input_shape=shape), runs)
    conv_cpu = _median(lambda: from_module(module, input_shape=shape), runs, cpu=True)
    m64 = copy.deepcopy(module).double()
    x = torch.randn(256, *(shape or (spec.widths[0],)), dtype=torch.float64)

    def fwd() -> None:
        with torch.no_grad():
            m64(x)

    floor = _median(fwd, runs)
    floor_cpu = _median(fwd, runs, cpu=True)
    dc = _median(lambda: copy.deepcopy(module), runs)
    print(f"{name}: from_module {conv * 1e3:.1f} ms wall, {conv_cpu * 1e3:.1f} ms CPU (medians of {runs}); float64 "
          f"forward on 256 inputs {floor * 1e3:.1f} ms wall, {floor_cpu * 1e3:.1f} ms CPU; deepcopy {dc * 1e3:.1f} ms; "
          f"ratio from_module / forward (CPU) {conv_cpu / floor_cpu:.1f}")

if __name__ == "__main__":
    main()
