"""Two Streamlit replicas behind nginx (deploy/room.py, deploy/nginx.conf): 20 sessions generate at once
through nginx, each stays on its replica, no errors, and each text equals its seed alone. Twice: on the
bundled model in each replica, and in public mode with both replicas on ONE llama.cpp server that the
test starts (SAMPLING_LAB_ENGINES), the engine chosen in each session's sidebar.

Skipped when nginx is missing, unless SAMPLING_LAB_REQUIRE_NGINX=1. Timings are printed (pytest -s),
never asserted.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "load"))

from bench.load_test import PROMPT, SessionResult, expected_tokens, press_generate  # noqa: E402
import core  # noqa: E402
from core.engines import llamacpp  # noqa: E402
from core.loading import _smollm2_path  # noqa: E402
from deploy.room import find_nginx, start_room  # noqa: E402
from st_client import StreamlitSession  # noqa: E402

if find_nginx() is None:
    if os.environ.get("SAMPLING_LAB_REQUIRE_NGINX") == "1":
        raise RuntimeError("SAMPLING_LAB_REQUIRE_NGINX=1 but nginx is not installed (apt-get install -y nginx)")
    pytest.skip("nginx is not installed (apt-get install -y nginx)", allow_module_level=True)

SESSIONS, TOKENS, BASE_SEED = 20, 12, 2000
# The engine run: every token is one request for the whole 49,152-token distribution (~4.7 MB of JSON),
# so fewer tokens keep it near two minutes on 2 cores.
ENGINE_TOKENS, ENGINE_SEED = 4, 3000
ENGINE_LABEL = "Room engine (inference server)"   # SAMPLING_LAB_ENGINES="Room engine=URL" in the sidebar


def get(url: str, cookie: str | None = None):
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        return r.headers


@dataclass
class Visit(SessionResult):
    cookie: str = ""
    upstreams: list[str] = field(default_factory=list)  # X-Upstream of the page, the websocket, a later GET


def open_visit(url: str, seed: int, tokens: int = TOKENS, model_label: str | None = None
               ) -> tuple[Visit, StreamlitSession]:
    """What a browser does: load the page (nginx sets the affinity cookie), open the websocket with it.
    model_label: first open the lesson page (it loads no model), pick that model in the sidebar, then go
    to Generate, so the session never touches the default model."""
    v = Visit(seed)
    page = get(url + "/")
    v.cookie = page["Set-Cookie"].split(";")[0]
    v.upstreams.append(page["X-Upstream"])
    s = StreamlitSession(url, page="generate" if model_label is None else "lesson", timeout=600,
                         headers={"Cookie": v.cookie})
    v.upstreams.append(s.handshake_headers.get("x-upstream", ""))
    s.run()
    if model_label is not None:
        r = s.switch_page("generate", {"model_label": model_label})
        if problems(r):
            raise AssertionError(f"choosing {model_label!r} failed: {problems(r)}")
    r = s.run({"prompt": PROMPT, "seed": seed, "gen_max_tokens": tokens})
    if r.exceptions:
        raise AssertionError(f"setting up seed {seed} failed: {r.exceptions}")
    return v, s


def problems(r) -> list[str]:
    """A run's exceptions and the app's load / engine failure messages."""
    words = ("Could not load", "not offered", "inference server failed", "busy loading")
    return r.exceptions + [t for t in r.texts if any(w in t for w in words)]


def generate_all(room, opened: list[tuple[Visit, StreamlitSession]]) -> tuple[list[Visit], float]:
    """Every session presses Generate at the same moment; then a later request with its cookie."""
    barrier = threading.Barrier(len(opened))

    def generate(item: tuple[Visit, StreamlitSession]) -> Visit:
        v, s = item
        try:
            barrier.wait()
            press_generate(s, v)
            v.upstreams.append(get(room.url + "/_stcore/health", v.cookie)["X-Upstream"])
        except Exception as e:  # any failure is this session's error
            v.error = f"{type(e).__name__}: {e}"
        return v

    t1 = time.perf_counter()
    with ThreadPoolExecutor(len(opened)) as pool:
        visits = list(pool.map(generate, opened))
    wall = time.perf_counter() - t1
    for _, s in opened:
        s.close()
    return visits, wall


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def stays_on_its_replica(room, visits: list[Visit]) -> None:
    for v in visits:
        assert len(v.upstreams) == 3 and len(set(v.upstreams)) == 1, (v.seed, v.upstreams)
    # nginx's own log: every request carrying a session's cookie went to one replica
    routes: dict[str, set[str]] = defaultdict(set)
    for line in room.access_log.read_text().splitlines():
        m = re.search(r"upstream=(\S+) route=(\S+)", line)
        if m:
            routes[m.group(2)].add(m.group(1))
    for v in visits:
        key = v.cookie.split("=", 1)[1]
        assert routes[key] == {v.upstreams[0]}, (v.seed, routes[key])


@pytest.fixture(scope="module")
def room_run():
    t0 = time.perf_counter()
    room = start_room(2)
    start_s = time.perf_counter() - t0
    try:
        for url in room.replica_urls:  # load the model in each replica before the timed part
            with StreamlitSession(url, page="generate", timeout=600) as warm:
                warm.run()
                warm.run({"prompt": PROMPT, "seed": BASE_SEED - 1, "gen_max_tokens": 2})
                r = warm.run({"gen_generate": True})
                assert not r.exceptions, r.exceptions
        opened = [open_visit(room.url, BASE_SEED + i) for i in range(SESSIONS)]
        visits, wall = generate_all(room, opened)
        yield room, visits, start_s, wall
    finally:
        room.stop()
        shutil.rmtree(room.run_dir, ignore_errors=True)  # nginx.conf, logs


def test_twenty_sessions_without_errors(room_run) -> None:
    room, visits, start_s, wall = room_run
    lat = sorted(v.latency_s for v in visits if not v.error)
    per_replica = defaultdict(int)
    for v in visits:
        per_replica[v.upstreams[0]] += 1
    print(f"\nroom: 2 replicas + nginx up in {start_s:.1f} s; {SESSIONS} sessions x {TOKENS} tokens through nginx "
          f"in {wall:.1f} s; Generate run p50 {statistics.median(lat):.2f} s, max {lat[-1]:.2f} s; "
          f"sessions per replica {dict(per_replica)}; errors {sum(1 for v in visits if v.error)}")
    assert [v.error for v in visits if v.error] == []
    assert len(per_replica) == 2  # the cookie hash spread the sessions (all on one: p = 2**-19)


def test_each_session_stays_on_its_replica(room_run) -> None:
    room, visits, _, _ = room_run
    stays_on_its_replica(room, visits)


def test_texts_equal_the_same_seed_alone(room_run, smollm2) -> None:
    _, visits, _, _ = room_run
    for v in visits:
        assert v.tokens == expected_tokens(v.seed, TOKENS, lm=smollm2), f"seed {v.seed}"
    assert len({tuple(v.tokens) for v in visits}) == SESSIONS


# ---------------------------------------------------------------- both replicas on one engine

@pytest.fixture(scope="module")
def engine_room_run():
    """Public mode: both replicas list ONE llama.cpp server (the bundled Q4_1 file) and load no model of
    their own (no preload; sessions start on the lesson page and choose the engine)."""
    pytest.importorskip("xllamacpp")
    server = llamacpp.start_server(_smollm2_path(), slots=2)
    room = None
    try:
        env = {"SAMPLING_LAB_PUBLIC": "1", "SAMPLING_LAB_ENGINES": f"Room engine={server.url}",
               "SAMPLING_LAB_PRELOAD": "0"}
        room = start_room(2, env=env)
        for url in room.replica_urls:  # connect each replica to the engine before the timed part
            with StreamlitSession(url, page="lesson", timeout=600) as warm:
                warm.run()
                r = warm.switch_page("generate", {"model_label": ENGINE_LABEL})
                assert not problems(r), problems(r)
        opened = [open_visit(room.url, ENGINE_SEED + i, ENGINE_TOKENS, ENGINE_LABEL) for i in range(SESSIONS)]
        visits, wall = generate_all(room, opened)
        yield room, server, visits, wall
    finally:
        if room is not None:
            room.stop()
            shutil.rmtree(room.run_dir, ignore_errors=True)
        server.stop()


def test_one_engine_twenty_sessions(engine_room_run, smollm2) -> None:
    room, server, visits, wall = engine_room_run
    lat = [v.latency_s for v in visits if not v.error]
    per_replica = defaultdict(int)
    for v in visits:
        per_replica[v.upstreams[0]] += 1
    print(f"\none engine ({server.path.name}), 2 replicas, public mode: {SESSIONS} sessions x {ENGINE_TOKENS} "
          f"tokens through nginx in {wall:.1f} s; Generate run p50 {statistics.median(lat):.2f} s, "
          f"p95 {percentile(lat, 0.95):.2f} s, max {max(lat):.2f} s; sessions per replica {dict(per_replica)}; "
          f"errors {sum(1 for v in visits if v.error)}")
    assert [v.error for v in visits if v.error] == []
    assert len(per_replica) == 2
    stays_on_its_replica(room, visits)
    # each text is what core gives for that seed alone on the same engine
    engine = core.load_model(server.url)
    for v in visits:
        assert v.tokens == expected_tokens(v.seed, ENGINE_TOKENS, lm=engine), f"seed {v.seed}"
    # ...and not what the in-process float32 model gives: the replicas really used the 4-bit engine
    other = sum(v.tokens != expected_tokens(v.seed, ENGINE_TOKENS, lm=smollm2) for v in visits)
    print(f"{len({tuple(v.tokens) for v in visits})} distinct texts; {other} of {SESSIONS} differ from the "
          "in-process float32 model's for the same seed")
    assert other > 0
