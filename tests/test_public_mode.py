"""SAMPLING_LAB_PUBLIC=1: visitors choose only listed models (no paths, uploads or downloads); local use
keeps every choice. Pure functions here; the sidebar in AppTest both ways."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui.controls
from ui.model_view import configured_engines, public_choices

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
