"""Share links and presenter mode under AppTest, on the tiny random GPT-2."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui.controls

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def at(monkeypatch) -> AppTest:
    """The app not run yet: a link is read on a session's first run only (conftest's open_page runs it)."""
    monkeypatch.setenv("SAMPLING_LAB_TEST_MODEL", "gpt2-tiny")
    monkeypatch.setattr(ui.controls, "TEST_MODEL", "gpt2-tiny")
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["m"] = "gpt2-tiny"
    return at


def test_presenter_link_and_guess_round(at):
    at.query_params["present"] = "1"
    at.query_params["t"] = "0.5"
    at.query_params["a"] = "s5.c7"
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["present"] and at.slider(key="temperature").value == 0.5
    assert [d["token_id"] for d in at.session_state["nt_steps"]] == [5, 7]
    assert any(c.key == "nt_chart" for c in at.get("plotly_chart"))
    at.button(key="present_guess_button").click().run()
    assert not at.exception
    assert len(at.radio(key="present_guess_pick").options) == 5
    assert not any(c.key == "nt_chart" for c in at.get("plotly_chart")), "an open round hides the answer"
    at.radio(key="present_guess_pick").set_value(at.radio(key="present_guess_pick").options[0]).run()
    at.button(key="present_reveal").click().run()
    assert any("The room picked" in t.value for t in at.text)


def test_bad_link_says_so(at):
    at.query_params["t"] = "9"
    at.query_params["m"] = "../../etc/passwd"
    at.run()
    assert not at.exception
    assert at.slider(key="temperature").value == 1.0
    assert any("t must be between 0 and 5" in w.value and "m is not one of" in w.value for w in at.warning)
