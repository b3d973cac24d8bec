"""The report in a real browser: headless Debian chromium opens report.html from disk.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (fd 3: our
commands, fd 4: its replies, NUL-terminated JSON), standard library only. The test asserts that
every figure is displayed (``naturalWidth > 0``), that the page asked for nothing but itself and
inline ``data:`` images (Network domain) and that the browser logged no error and no
Content-Security-Policy violation (Log domain). The screenshot stays under the run folder as a CI artifact.

Under ``CI=true`` the test never skips: a missing chromium is a failure.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from probprune.config import BoundSpec, GapSpec, MCSpec, NetSpec, PruneSpec, RunConfig
from probprune.report import build_report

pytestmark = pytest.mark.browser

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--window-size=1400,1000")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A minimal DevTools-protocol client over chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        r, self._w = os.pipe()
        self._r, w = os.pipe()
        # the child's ends go above 9 first, so that moving them to fd 3 / 4 never clobbers one another
        to_chrome_r, from_chrome_w = fcntl.fcntl(r, fcntl.F_DUPFD, 10), fcntl.fcntl(w, fcntl.F_DUPFD, 10)
        os.close(r)
        os.close(w)

        # chromium expects fd 3 = our commands, fd 4 = its replies: bash (dash takes single-digit fds only) moves them
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        # chromium's stderr goes to a file: an undrained pipe fills and blocks chromium, and reading one
        # waits for every child process of chromium to close it
        self._stderr_path = profile.parent / f"{profile.name}-chromium-stderr.log"
        with open(self._stderr_path, "wb") as stderr:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                ["bash", "-c", script, binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                pass_fds=(to_chrome_r, from_chrome_w), close_fds=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    err = self._stderr_path.read_bytes().decode(errors="replace")
                    raise RuntimeError(f"chromium closed the debugging pipe: {err[-2000:]}")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        doc: dict[str, Any] = json.loads(msg)
        return doc

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing, and under CI=true the browser test must run (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return binary


def _tiny_verify_run(runs: Path) -> Path:
    from probprune.runner.verify import run_verify

    cfg = RunConfig(net=NetSpec(widths=(8, 32, 32, 4)),
                    prunes=(PruneSpec(method="magnitude", schedule_c=1.0, schedule_alpha=0.5),
                            PruneSpec(method="random", schedule_c=1.0, schedule_alpha=0.5)),
                    gap=GapSpec(n_points=64, n_restarts=1, n_steps=3), bound=BoundSpec(delta=0.1),
                    mc=MCSpec(n_trials=6, hidden_widths=(32, 64), chunk_size=6))
    return run_verify(cfg, runs).run_dir


def _experiment_run(runs: Path) -> Path:
    """An experiment folder (2 models × 2 fractions × 2 methods × 1 scope × fine-tuned or not, 2 seeds)."""
    from probprune.records import ExperimentRow
    from probprune.store.experiments import ExperimentStore

    cfg = {"dataset": "mnist", "models": ["lenet-300-100", "lenet-5"], "prune_fractions": [0.0, 0.8],
           "methods": ["random", "magnitude"], "scopes": ["global"], "seeds": [0, 1], "finetune_epochs": 0.1}
    run = runs / "experiment"
    with ExperimentStore(run, cfg) as st:
        for m in cfg["models"]:
            for pf in cfg["prune_fractions"]:
                for me in cfg["methods"]:
                    for ft in (False, True):
                        for seed in cfg["seeds"]:
                            st.add(ExperimentRow(
                                dataset="mnist", model=m, method=me, scope="global", prune_fraction=pf, finetuned=ft,
                                seed=seed, test_accuracy=0.97 - pf * (0.4 if me == "random" else 0.02) + 0.002 * seed,
                                gap_lower=2.0 * pf, gap_upper=300.0 * pf, mean_test_gap=0.5 * pf, radius=9.3,
                                sparsity=pf))
    return run


def _load(dt: DevTools, url: str) -> str:
    targets = dt.send("Target.getTargets")["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    session = dt.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
    for domain in ("Network", "Page", "Log", "Runtime"):
        dt.send(f"{domain}.enable", session=session)
    dt.events.clear()
    dt.send("Page.navigate", {"url": url}, session=session)
    dt.wait_event("Page.loadEventFired")
    # the load event could be a late one of about:blank: wait until our document is complete
    deadline = time.monotonic() + 60
    while True:
        ready = dt.send("Runtime.evaluate", {"expression": "document.URL + ' ' + document.readyState",
                                             "returnByValue": True}, session=session)["result"]["value"]
        if ready == f"{url} complete":
            return str(session)
        assert time.monotonic() < deadline, f"the report did not finish loading: {ready}"
        time.sleep(0.2)


def _text(dt: DevTools, session: str, element_id: str) -> str | None:
    expr = f"(e => e ? e.textContent : null)(document.getElementById({json.dumps(element_id)}))"
    value = dt.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)["result"]
    return value.get("value")


#: an experiment report's figures: accuracy and gap vs prune_fraction (a verify report has at least 4)
EXPERIMENT_FIGURES = 2


def _render_and_check(chromium: str, run_dir: Path, profile: Path, min_figures: int) -> dict[str, str | None]:
    """Open the run's report in chromium; assert every figure shows and nothing is fetched; return shown texts."""
    report = build_report(run_dir)
    n_figures = report.read_text().count("<img ")
    assert n_figures >= min_figures
    url = report.resolve().as_uri()
    dt = DevTools(chromium, profile)
    try:
        session = _load(dt, url)
        state = dt.send("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images).map(i => "
                          "({w: i.naturalWidth, h: i.naturalHeight, done: i.complete, alt: i.alt})))",
            "returnByValue": True}, session=session)
        images = json.loads(state["result"]["value"])
        shown = {k: _text(dt, session, k) for k in ("status", "verdicts", "can-only-refute", "terms")}
        shot = dt.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        (run_dir / "report_screenshot.png").write_bytes(base64.b64decode(shot["data"]))
        dt.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drain late events
    finally:
        dt.close()
    assert len(images) == n_figures
    for img in images:
        assert img["done"] and img["w"] > 0 and img["h"] > 0, img
    requested = [ev["params"]["request"]["url"] for ev in dt.events if ev.get("method") == "Network.requestWillBeSent"]
    assert url in requested  # the network domain did watch the page load
    outside = [u for u in requested if u != url and not u.startswith("data:")]
    assert outside == [], f"the report asked for {outside}"
    # a blocked fetch shows up as a Content-Security-Policy violation or a failed load in the log
    complaints = [ev["params"]["entry"].get("text", "") for ev in dt.events if ev.get("method") == "Log.entryAdded"
                  and (ev["params"]["entry"].get("level") == "error"
                       or "Content Security Policy" in ev["params"]["entry"].get("text", ""))]
    assert complaints == []
    assert (run_dir / "report_screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return shown


def _runs_dir(tmp_path: Path) -> Path:
    # PROBPRUNE_BROWSER_RUNS: where CI keeps the run folders (reports + screenshots) as artifacts
    return Path(os.environ.get("PROBPRUNE_BROWSER_RUNS", str(tmp_path / "runs")))


def test_report_displays_every_figure_and_makes_no_request(chromium: str, tmp_path: Path) -> None:
    from probprune.store.runs import open_run, read_points

    run_dir = _tiny_verify_run(_runs_dir(tmp_path))
    shown = _render_and_check(chromium, run_dir, tmp_path / "profile", min_figures=4)
    # the header and verdict counts the reader sees are the store's
    info = open_run(run_dir)
    assert shown["status"] == f"{info.status}: {info.n_done} of {info.n_expected} trials stored"
    points = read_points(run_dir)
    counts = {v: sum(1 for p in points if p["verdict"] == v) for v in ("confirmed", "consistent", "refuted")}
    assert shown["verdicts"] is not None and shown["verdicts"].startswith(
        f"δ = 0.1, 95 % confidence: {counts['confirmed']} confirmed, {counts['consistent']} consistent, "
        f"{counts['refuted']} refuted")
    # 6 trials per point cannot confirm at δ = 0.1 (36 needed): the page says so
    assert shown["can-only-refute"] is not None and "at least 36 trials" in shown["can-only-refute"]
    assert shown["terms"] is not None and "Clopper–Pearson" in shown["terms"]


def test_experiment_report_in_the_browser(chromium: str, tmp_path: Path) -> None:
    from probprune.store.experiments import read_experiment

    run_dir = _experiment_run(_runs_dir(tmp_path))
    shown = _render_and_check(chromium, run_dir, tmp_path / "profile", min_figures=EXPERIMENT_FIGURES)
    assert shown["status"] == f"complete: {len(read_experiment(run_dir))} of 32 settings stored"
    assert shown["verdicts"] is None and shown["can-only-refute"] is None  # no Monte Carlo verdicts here
    assert shown["terms"] is not None and "certified upper" in shown["terms"] and "coverage here" in shown["terms"]


def _certify_runs(runs: Path) -> tuple[Path, Path]:
    """A certify run folder (8 inputs, ℓ∞ 0.05 ∩ [0, 1]) and a max-prune run folder on a small trained-free pair."""
    import numpy as np
    import torch

    from probprune.config import CertifyJob, parse_arch
    from probprune.data import as_net, init_module
    from probprune.masks import prune
    from probprune.nets.onnx import save_onnx
    from probprune.runner.certify import MaxPruneSolve, run_certify, run_max_prune

    spec = parse_arch("fcn:6,24,24,4", bias=True)
    target = as_net(init_module(spec, torch.Generator().manual_seed(0)), spec)
    runs.mkdir(parents=True, exist_ok=True)
    save_onnx(target, runs / "t.onnx")
    save_onnx(prune(target, PruneSpec(prune_fraction=0.5, scope="global")).model, runs / "p.onnx")
    np.save(runs / "x.npy", np.random.default_rng(0).uniform(0, 1, size=(8, 6)).astype(np.float32))
    job = CertifyJob(weights=str(runs / "t.onnx"), pruned=str(runs / "p.onnx"), data=str(runs / "x.npy"),
                     radius=0.05, n_points=8, clip=(0.0, 1.0), n_restarts=2, n_steps=10, batch_size=4)
    one = run_certify(job, run_dir=runs / "certify").run_dir
    mp = run_max_prune(CertifyJob(**{**job.to_dict(), "pruned": str(runs / "t.onnx"), "radius": 0.01}),
                       MaxPruneSolve(agreement=0.5, tol=0.05), run_dir=runs / "max-prune").run_dir
    assert one is not None and mp is not None
    return one, mp


def test_certify_reports_in_the_browser(chromium: str, tmp_path: Path) -> None:
    from probprune.store.certify import read_certify

    one, mp = _certify_runs(_runs_dir(tmp_path) / "certify-runs")
    shown = _render_and_check(chromium, one, tmp_path / "profile", min_figures=2)
    assert shown["status"] == f"complete: {len(read_certify(one).rows)} of 8 inputs stored"
    assert shown["terms"] is not None and "certified agreement" in shown["terms"]
    shown = _render_and_check(chromium, mp, tmp_path / "profile2", min_figures=1)
    assert shown["status"] == f"complete: {len(read_certify(mp).levels)} prune levels measured"
