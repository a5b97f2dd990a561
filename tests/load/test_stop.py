"""Stop, switching pages, or closing the tab mid-generation frees the work and leaves no stuck state.

Each test starts a long generation (1,000 tokens of SmolLM2, ~30 s or more on 2 cores) in one websocket
session without waiting for it, interrupts it, then checks that the server's CPU use falls back to idle
within a few seconds and that the app still generates, in the same session and in a new one.
"""
from __future__ import annotations

import time

import psutil
import pytest

from bench.load_test import Server, generated_tokens, open_generate_session, start_server
from st_client import StreamlitSession

LONG = 1000


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    try:
        yield srv
    finally:
        srv.stop()


def press_without_waiting(s: StreamlitSession, key: str) -> None:
    """Click a button and return at once (StreamlitSession.run would wait for the run to finish)."""
    back = s._build_back_msg({s._resolve_widget(key): True})
    s._ws.send_binary(back.SerializeToString())


def cpu(server: Server, seconds: float = 1.0) -> float:
    return psutil.Process(server.proc.pid).cpu_percent(interval=seconds)


def assert_busy(server: Server) -> None:
    time.sleep(2)   # past the prompt; tokens are streaming now
    assert cpu(server) > 50, "the generation did not start"


def assert_back_to_idle(server: Server, within_s: float = 6.0) -> float:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (used := cpu(server)) < 15:
            return used
    raise AssertionError(f"server still busy ({used:.0f}% CPU) {within_s} s after the interruption")


def assert_still_generates(server: Server) -> None:
    with open_generate_session(server.url, seed=5, tokens=3) as fresh:
        r = fresh.run({"gen_generate": True})
        assert r.exceptions == [] and len(generated_tokens(r.texts)) == 3
        assert r.find_text("Finished: reached the limit of 3 tokens.")


def test_stop_button_keeps_the_tokens_and_frees_the_server(server: Server) -> None:
    with open_generate_session(server.url, seed=11, tokens=LONG) as s:
        press_without_waiting(s, "gen_generate")
        assert_busy(server)
        r = s.run({"gen_stop": True})
        assert r.exceptions == []
        stopped = r.texts_matching("Stopped after ")
        assert len(stopped) == 1, r.texts
        n = int(stopped[0].split()[2])
        assert 1 <= n < LONG and len(generated_tokens(r.texts)) == n
        assert_back_to_idle(server)
        # no stuck state: this session generates again, and the buttons work
        r = s.run({"gen_max_tokens": 3})
        assert r.find_text("Stopped after ")           # the partial run is still shown until replaced
        r = s.run({"gen_generate": True})
        assert r.find_text("Finished: reached the limit of 3 tokens.") and r.exceptions == []
    assert_still_generates(server)


def test_switching_page_interrupts_and_keeps_the_partial_run(server: Server) -> None:
    with open_generate_session(server.url, seed=12, tokens=LONG) as s:
        press_without_waiting(s, "gen_generate")
        assert_busy(server)
        r = s.switch_page("")                          # the Next token page
        assert r.exceptions == [] and r.find_text("Next token")
        assert_back_to_idle(server)
        r = s.switch_page("generate")
        assert r.exceptions == []
        note = r.texts_matching("Interrupted after ")
        assert len(note) == 1, r.texts
        assert int(note[0].split()[2]) == len(generated_tokens(r.texts)) >= 1
    assert_still_generates(server)


def test_closing_the_tab_stops_the_generation(server: Server) -> None:
    s = open_generate_session(server.url, seed=13, tokens=LONG)
    press_without_waiting(s, "gen_generate")
    assert_busy(server)
    s.close()
    assert_back_to_idle(server, within_s=10)
    assert_still_generates(server)
