"""ui.bridge's model loading: on its own thread, with a status every waiting script can show."""
from __future__ import annotations

import threading

import pytest
import streamlit as st

import core
from ui import bridge
from ui.model_view import BusyLoadingError


@pytest.fixture
def slow_load(monkeypatch: pytest.MonkeyPatch):
    """core.load_model replaced by one that reports a status, then waits for `release`."""
    release, calls, real = threading.Event(), [], core.load_model

    def load(source, progress=None, status=None, **kwargs):
        calls.append(source)
        status("Converting", 0.5)
        assert release.wait(30)
        if source == "missing":
            raise core.ModelUnavailableError("no such model here")
        return real("gpt2-tiny", status=status)

    monkeypatch.setattr(core, "load_model", load)
    st.cache_resource.clear()
    yield release, calls
    release.set()
    st.cache_resource.clear()


def test_preload_returns_at_once_and_get_model_waits_with_the_status(slow_load, monkeypatch) -> None:
    release, calls = slow_load
    monkeypatch.setenv(bridge.PRELOAD_ENV, "1")
    bridge.preload("smollm2")  # returns while the load waits for `release`
    assert calls == ["smollm2"] and not bridge.loading("smollm2").future.done()
    seen: list[tuple[str, float]] = []

    def waiting(job: bridge.Loading) -> None:
        seen.append((job.what, job.done))
        if len(seen) == 3:
            release.set()

    lm = bridge.get_model("smollm2", waiting)
    assert lm.name.startswith("gpt2-tiny") and calls == ["smollm2"]  # one load, the preloaded one
    assert seen[0] == ("Converting", 0.5) and [d for _, d in seen] == sorted(d for _, d in seen)
    assert bridge.get_model("smollm2") is lm  # a cache hit: no wait, no second load
    assert bridge.loading("smollm2").done == 1.0


def test_preload_can_be_turned_off(slow_load, monkeypatch) -> None:
    _, calls = slow_load
    monkeypatch.setenv(bridge.PRELOAD_ENV, "0")
    bridge.preload("smollm2")
    assert calls == []


def test_a_failed_load_raises_and_is_tried_again(slow_load) -> None:
    release, calls = slow_load
    release.set()
    for _ in range(2):
        with pytest.raises(core.ModelUnavailableError, match="no such model"):
            bridge.get_model("missing")
    assert calls == ["missing", "missing"]


def test_public_server_loads_one_model_at_a_time(slow_load, monkeypatch) -> None:
    release, calls = slow_load
    monkeypatch.setenv("SAMPLING_LAB_PUBLIC", "1")
    monkeypatch.delenv("SAMPLING_LAB_MAX_LOADS", raising=False)
    first = bridge.loading("smollm2")              # a load in progress (waits for `release`)
    with pytest.raises(BusyLoadingError, match="1 load in progress, at most 1 at once"):
        bridge.get_model("llamacpp:smollm2")       # a second model would start a second load: refused
    assert calls == ["smollm2"]                    # nothing started for it
    assert bridge.loading("smollm2") is first      # the same model: the one load, shared
    bridge.preload("llamacpp:smollm2")             # the app's preload is quiet about a busy server
    release.set()
    bridge.get_model("smollm2", lambda job: None)  # the first load ends and frees its slot...
    assert bridge.get_model("llamacpp:smollm2").name.startswith("gpt2-tiny")  # ...so the next one loads
    assert calls == ["smollm2", "llamacpp:smollm2"]


def test_public_limit_can_be_raised_and_local_use_has_none(slow_load, monkeypatch) -> None:
    release, calls = slow_load
    monkeypatch.setenv("SAMPLING_LAB_PUBLIC", "1")
    monkeypatch.setenv("SAMPLING_LAB_MAX_LOADS", "2")
    bridge.loading("a"), bridge.loading("b")
    with pytest.raises(BusyLoadingError, match="2 loads in progress, at most 2"):
        bridge.loading("c")
    monkeypatch.delenv("SAMPLING_LAB_PUBLIC")   # local use: every load starts
    bridge.loading("c"), bridge.loading("d")
    assert calls == ["a", "b", "c", "d"]
    release.set()
    for source in "abcd":
        bridge.get_model(source, lambda job: None)
    assert bridge._loads_now == 0


def test_a_malformed_load_limit_is_a_message_not_a_crash(slow_load, monkeypatch) -> None:
    _, calls = slow_load
    monkeypatch.setenv("SAMPLING_LAB_PUBLIC", "1")
    monkeypatch.setenv("SAMPLING_LAB_MAX_LOADS", "many")
    monkeypatch.setenv(bridge.PRELOAD_ENV, "1")
    bridge.preload("smollm2")  # app.py's every run: quiet
    with pytest.raises(ValueError, match="SAMPLING_LAB_MAX_LOADS: 'many' is not a whole number"):
        bridge.get_model("smollm2")  # a page: ValueError is one of LOAD_ERRORS, shown as a message
    assert calls == []
