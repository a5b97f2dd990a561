"""Load test: N simultaneous app sessions generating text on the Generate page, over Streamlit's websocket.

    .venv/bin/python -m bench.load_test --sessions 10 --tokens 20

Starts `streamlit run app.py` on a free loopback port (bundled SmolLM2), warms it up with one session
(so the model is loaded), then opens N sessions with tests/load/st_client.py, sets a distinct seed in
each and presses Generate in all of them at once. Reports sessions held, errors, p50/p95 latency of the
Generate run, the server's RSS before / during (sampled every 0.5 s) / after the sessions close, how
many times the server called core.load_model, and whether every session's text equals what
core.generate gives for its seed alone.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "load")]

from st_client import StreamlitSession, wait_for_health  # noqa: E402

PROMPT = "Every effort moves you"
LOAD_MARK = "SAMPLING_LAB_LOAD_MODEL"
# The server counts core.load_model calls on stdout: st.cache_resource must make it exactly one.
_LAUNCHER = f"""
import sys, core
_load = core.load_model
def _counted(*a, **k):
    print("{LOAD_MARK}", a, flush=True)
    return _load(*a, **k)
core.load_model = _counted
from streamlit.web import cli
sys.argv = ["streamlit", "run", *sys.argv[1:]]
cli.main()
"""
_TOKEN = re.compile(r'<span class="sl-tok" data-step="\d+"[^>]*>(.*?)</span>', re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def model_loads(self) -> int:
        return self.log.read_text(errors="replace").count(LOAD_MARK)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_server(env_extra: dict[str, str] | None = None) -> Server:
    """The app on a free loopback port, with core.load_model calls counted in its log."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="sampling-lab-load-")) / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--client.showErrorDetails", "full"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})})
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_for_health(server.url, timeout=60)
    except TimeoutError:
        server.stop()
        raise RuntimeError("streamlit did not start:\n" + log.read_text(errors="replace")[-3000:]) from None
    return server


def generated_tokens(texts: list[str]) -> list[str]:
    """The token texts shown on the Generate page: its clickable text once a run is over (ui.token_picker's
    JSON data), else the streaming box's coloured spans, unescaped."""
    pickers = [t for t in texts if t.startswith("{") and '"tokens"' in t and '"copy"' in t]
    boxes = pickers or [t for t in texts if 'class="sl-gen"' in t]
    if len(boxes) != 1:
        raise AssertionError(f"expected one generated-text box, found {len(boxes)}")
    if pickers:
        return [token["t"] for token in json.loads(pickers[0])["tokens"]]
    return [html.unescape(t) for t in _TOKEN.findall(boxes[0])]


def expected_tokens(seed: int, tokens: int, prompt: str = PROMPT, lm=None) -> list[str]:
    """What the same settings give alone, in this process (the page shows token_display of each step).
    Raw text, so the page's default goes on past the end-of-text token (ui.controls.continue_past_end)."""
    import core
    from ui.generate_view import TOP_N, token_display

    import torch
    from core.runtime import configure_threads

    lm = lm or core.load_model()
    cfg = core.SamplingConfig(temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, seed=seed)
    # the server's thread setting (app.py): a prompt read on 2 threads rounds differently, and a draw that
    # lands on a 6e-6 token (seed 4011 at step 3) then picks its neighbour
    before = torch.get_num_threads()
    configure_threads()
    try:
        return [token_display(s.text) for s in core.generate(lm, prompt, cfg, tokens, top_n=TOP_N, stop_at_eos=False)]
    finally:
        torch.set_num_threads(before)


def open_generate_session(url: str, seed: int, tokens: int, prompt: str = PROMPT, timeout: float = 600
                          ) -> StreamlitSession:
    s = StreamlitSession(url, page="generate", timeout=timeout)
    s.run()
    r = s.run({"prompt": prompt, "seed": seed, "gen_max_tokens": tokens})
    if r.exceptions:
        raise AssertionError(f"setting up the session failed: {r.exceptions}")
    return s


@dataclass
class SessionResult:
    seed: int
    latency_s: float = 0.0
    tokens: list[str] = field(default_factory=list)
    error: str | None = None


def press_generate(client: StreamlitSession, res: SessionResult) -> None:
    """One Generate run into res: its latency, and the tokens shown or the page's errors."""
    run = client.run({"gen_generate": True})
    res.latency_s = run.duration_s
    if run.exceptions:
        res.error = "; ".join(run.exceptions)
    elif busy := [t for t in run.texts if "The model is busy" in t]:
        res.error = f"turned away: {busy[0][:120]}"
    else:
        res.tokens = generated_tokens(run.texts)


@dataclass
class LoadResult:
    sessions: int
    held: int                       # sessions connected at the same time
    results: list[SessionResult]
    rss_before: int
    rss_peak: int
    rss_after: int
    rss_samples: list[int]
    model_loads: int
    wall_s: float

    @property
    def errors(self) -> list[str]:
        return [f"seed {r.seed}: {r.error}" for r in self.results if r.error]

    @property
    def latencies(self) -> list[float]:
        return sorted(r.latency_s for r in self.results if not r.error)

    def percentile(self, q: float) -> float:
        xs = self.latencies
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def run_load(server: Server, sessions: int = 10, tokens: int = 20, base_seed: int = 1000,
             settle_s: float = 8.0) -> LoadResult:
    """Warm up, then N sessions press Generate together; RSS is sampled every 0.5 s throughout."""
    warm = open_generate_session(server.url, base_seed - 1, 2)
    r = warm.run({"gen_generate": True})
    warm.close()
    if r.exceptions:
        raise AssertionError(f"warm-up failed: {r.exceptions}")
    time.sleep(2)
    rss_before = server.rss

    samples: list[int] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            samples.append(server.rss)
            stop_sampling.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seeds = [base_seed + i for i in range(sessions)]
    clients = [open_generate_session(server.url, seed, tokens) for seed in seeds]
    held = sum(1 for c in clients if c.session_id)
    start = threading.Barrier(sessions)

    def one(client: StreamlitSession, seed: int) -> SessionResult:
        res = SessionResult(seed)
        try:
            start.wait()
            press_generate(client, res)
        except Exception as e:  # any failure counts as this session's error
            res.error = f"{type(e).__name__}: {e}"
        return res

    t0 = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        results = list(pool.map(one, clients, seeds))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    time.sleep(settle_s)   # the server drops closed sessions and their state
    stop_sampling.set()
    sampler.join()
    return LoadResult(sessions, held, results, rss_before, max(samples), server.rss, samples, server.model_loads(),
                      wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=20)
    args = ap.parse_args()
    server = start_server()
    try:
        res = run_load(server, args.sessions, args.tokens)
    finally:
        server.stop()
    import core
    lm = core.load_model()
    leaks = [r.seed for r in res.results if not r.error and r.tokens != expected_tokens(r.seed, args.tokens, lm=lm)]
    mb = 1 / 2**20
    print(f"sessions: {res.sessions} opened, {res.held} held at once, {args.tokens} new tokens each (SmolLM2, raw)")
    print(f"errors: {len(res.errors)}" + "".join(f"\n  {e}" for e in res.errors))
    print(f"latency of a Generate run: p50 {res.percentile(0.5):.2f} s, p95 {res.percentile(0.95):.2f} s, "
          f"max {max(res.latencies, default=float('nan')):.2f} s; all sessions done in {res.wall_s:.2f} s")
    print(f"server RSS: before {res.rss_before * mb:.0f} MB, peak during {res.rss_peak * mb:.0f} MB, "
          f"after close {res.rss_after * mb:.0f} MB ({(res.rss_after / res.rss_before - 1) * 100:+.1f}%)")
    print(f"core.load_model calls in the server: {res.model_loads}")
    print(f"sessions whose text differs from the same seed alone: {len(leaks)} {leaks or ''}")


if __name__ == "__main__":
    main()
