"""Start-up time of the CLI: ``probprune --help`` and each ``probprune <command> --help`` (issue 17).

Each is run as a fresh subprocess (``python -m probprune …``, the same program as the ``probprune``
script) 5 times; the median wall time is printed beside ``python -c pass`` (the interpreter's floor)
and ``python -c "import probprune"`` (the package alone), with the ratio to the floor, and the median CPU
time (user + system) of the child, which a loaded machine does not stretch. Target: under 0.5 s for every line.

Usage::

    python benchmarks/bench_cli_startup.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def wall(argv: list[str], repeat: int) -> float:
    """Median wall time (seconds) of ``repeat`` runs of ``argv`` (stdout/stderr discarded; must exit 0)."""
    return timed(argv, repeat)[0]


def timed(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system of the child, seconds) of ``repeat`` runs of ``argv``.

    The CPU time hardly depends on the machine's load (a busy shared box stretches the wall time, not the work
    done), so it is the number to compare across runs taken at different loads.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def commands() -> list[list[str]]:
    """Every command path of the app (groups and their sub-commands), e.g. ``["data", "info"]``."""
    import typer

    from probprune.cli import app

    out: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        for name, sub in sorted((subs or {}).items()):
            out.append([*path, name])
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


def main() -> None:
    """Measure and print one line per case: median seconds, ratio to ``python -c pass``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    a = ap.parse_args()
    py = sys.executable
    cases: list[tuple[str, list[str]]] = [("python -c pass", [py, "-c", "pass"]),
                                          ("python -c 'import probprune'", [py, "-c", "import probprune"]),
                                          ("probprune --help", [py, "-m", "probprune", "--help"])]
    cases += [(f"probprune {' '.join(c)} --help", [py, "-m", "probprune", *c, "--help"]) for c in commands()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [(name, *timed(argv, a.repeat)) for name, argv in cases]
    floor = rows[0][1]
    if a.json:
        print(json.dumps({"repeat": a.repeat, "cpus": os.cpu_count(), "load_1min": load,
                          "seconds": {n: w for n, w, _ in rows}, "cpu_seconds": {n: c for n, _, c in rows}},
                         indent=2))
        return
    print(f"median of {a.repeat} runs; {os.cpu_count()} CPUs; load average (1 min) at start {load:.2f}")
    print(f"{'case':<44} {'seconds':>8} {'x floor':>8} {'cpu s':>8}")
    for name, s, c in rows:
        print(f"{name:<44} {s:8.3f} {s / floor:8.1f} {c:8.3f}")


if __name__ == "__main__":
    main()
