"""SAMPLING_LAB_PUBLIC=1: visitors choose only listed models (no paths, uploads or downloads); local use
keeps every choice. Pure functions here; the sidebar in AppTest both ways."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core
import ui.controls
from ui import bridge
from ui.model_view import BusyLoadingError, configured_engines, load_error_message, load_limit, public_choices

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_public_choices_pure() -> None:
    assert public_choices({}) is None and public_choices({"SAMPLING_LAB_PUBLIC": "0"}) is None
    env = {"SAMPLING_LAB_PUBLIC": "1", "SAMPLING_LAB_ENGINES": "Big=http://10.0.0.5:8000/v1, Other=https://x.org/v1"}
    got = public_choices(env)
    assert got == {"SmolLM2-135M-Instruct (bundled)": "smollm2", "SmolLM2 on llama.cpp (4-bit, fast)": "llamacpp:smollm2",
                   "Big (inference server)": "http://10.0.0.5:8000/v1", "Other (inference server)": "https://x.org/v1"}
    with pytest.raises(ValueError, match="not Name=http"):
        configured_engines({"SAMPLING_LAB_ENGINES": "Big=/etc/passwd"})


def sidebar(monkeypatch, public: bool) -> AppTest:
    monkeypatch.setattr(ui.controls, "TEST_MODEL", None)
    if public:
        monkeypatch.setenv("SAMPLING_LAB_PUBLIC", "1")
        monkeypatch.setenv("SAMPLING_LAB_ENGINES", "Room engine=http://127.0.0.1:9/v1")
    else:
        monkeypatch.delenv("SAMPLING_LAB_PUBLIC", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(APP, default_timeout=120)
    app.switch_page("app_pages/lesson.py").run()
    return app


def test_public_sidebar_lists_only_allowed_models(monkeypatch) -> None:
    app = sidebar(monkeypatch, public=True)
    options = app.selectbox(key="model_label").options
    assert options == ["SmolLM2-135M-Instruct (bundled)", "SmolLM2 on llama.cpp (4-bit, fast)",
                       "Room engine (inference server)"]
    assert not any("Checkpoint" in t.label for t in app.text_input)
    assert not app.get("file_uploader")
    assert not any("Server URL" == t.label for t in app.text_input)


def test_local_sidebar_keeps_every_choice(monkeypatch) -> None:
    app = sidebar(monkeypatch, public=False)
    options = app.selectbox(key="model_label").options
    assert "Local checkpoint…" in options and "GPT-2 1558M (XL)" in options
    assert "Inference server (OpenAI-compatible)…" in options
    app.selectbox(key="model_label").set_value("Local checkpoint…").run()
    assert any(t.label == "Checkpoint path" for t in app.text_input)


def test_load_limit_both_ways() -> None:
    assert load_limit({}) is None and load_limit({"SAMPLING_LAB_MAX_LOADS": "1"}) is None  # local: no bound
    assert load_limit({"SAMPLING_LAB_PUBLIC": "1"}) == 1
    assert load_limit({"SAMPLING_LAB_PUBLIC": "1", "SAMPLING_LAB_MAX_LOADS": "3"}) == 3
    with pytest.raises(ValueError, match="SAMPLING_LAB_MAX_LOADS: '0' is not a whole number"):
        load_limit({"SAMPLING_LAB_PUBLIC": "1", "SAMPLING_LAB_MAX_LOADS": "0"})


def test_busy_loading_message() -> None:
    msg = load_error_message(BusyLoadingError("1 load in progress, at most 1 at once"), "llamacpp:smollm2",
                             "SmolLM2 on llama.cpp (4-bit, fast)", "SmolLM2 on llama.cpp (4-bit, fast)")
    assert msg == ("SmolLM2 on llama.cpp (4-bit, fast) is not loaded yet, and this shared server is busy loading "
                   "another model (1 load in progress, at most 1 at once). Try again in a moment: your prompt "
                   "and settings are kept.")


@pytest.mark.parametrize("public", [True, False])
def test_a_page_while_another_model_loads(monkeypatch, public: bool) -> None:
    """Public: a visitor whose model is not loaded while another load runs reads "busy loading" (no second
    load starts) and gets the page once it ends. Local: the second load starts at once."""
    release, calls, real = threading.Event(), [], core.load_model

    def load(source, progress=None, status=None, **kwargs):
        calls.append(source)
        if source == "held":
            assert release.wait(60)
        return real("gpt2-tiny")

    monkeypatch.setattr(core, "load_model", load)
    monkeypatch.setenv("SAMPLING_LAB_PRELOAD", "0")
    app = sidebar(monkeypatch, public)
    held = bridge.loading("held")              # another visitor's load in progress
    try:
        app.switch_page("app_pages/next_token.py").run()
        busy = [e.value for e in app.error if "busy loading" in e.value]
        if public:
            assert busy and "Try again in a moment" in busy[0] and calls == ["held"]
            assert app.session_state["prompt"] == "Every effort moves you"  # the visitor's state stays
            release.set()
            held.future.result(60)
            app.run()
        assert not app.exception and not [e.value for e in app.error]
        assert calls == ["held", "smollm2"] and app.get("plotly_chart")
    finally:
        release.set()
        held.future.result(60)  # no loading thread left running at exit
        st.cache_resource.clear()


def test_a_malformed_engine_list_is_said_once_and_the_built_in_models_stay(monkeypatch) -> None:
    app = sidebar(monkeypatch, public=True)
    monkeypatch.setenv("SAMPLING_LAB_ENGINES", "Big=/etc/passwd")
    app.run()
    assert not app.exception
    errors = [e.value for e in app.sidebar.error]
    assert len(errors) == 1 and "not Name=http" in errors[0]   # once, though the choices are read five times a run
    assert app.selectbox(key="model_label").options == ["SmolLM2-135M-Instruct (bundled)",
                                                        "SmolLM2 on llama.cpp (4-bit, fast)"]
