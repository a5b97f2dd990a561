"""10 simultaneous app sessions generating over the websocket: zero errors, no leakage, one model, memory back.

Timing is reported by `python -m bench.load_test`, not asserted here (a 2-core CI box is noisy).
"""
from __future__ import annotations

import pytest

import core
from bench.load_test import expected_tokens, run_load, start_server

SESSIONS, TOKENS = 10, 12


@pytest.fixture(scope="module")
def result():
    server = start_server()
    try:
        yield run_load(server, SESSIONS, TOKENS)
    finally:
        server.stop()


def test_ten_concurrent_sessions_without_errors(result) -> None:
    assert result.held == SESSIONS
    assert result.errors == []
    assert all(len(r.tokens) >= 1 for r in result.results)


def test_no_leakage_between_sessions(result) -> None:
    """Each session's text is what its seed gives alone, and distinct seeds gave distinct texts."""
    lm = core.load_model()
    for r in result.results:
        assert r.tokens == expected_tokens(r.seed, TOKENS, lm=lm), f"seed {r.seed}"
    assert len({tuple(r.tokens) for r in result.results}) == SESSIONS


def test_model_loaded_once(result) -> None:
    # counted in the server (bench.load_test wraps core.load_model); RSS growth confirms no second copy (~540 MB)
    assert result.model_loads == 1
    assert result.rss_peak - result.rss_before < 200 * 2**20


def test_memory_back_within_10_percent(result) -> None:
    assert result.rss_after <= 1.10 * result.rss_before, (result.rss_before, result.rss_after)
