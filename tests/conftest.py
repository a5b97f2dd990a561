"""Shared fixtures: the tiny random GPT-2 for most tests, the real bundled model for golden ones."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("SAMPLING_LAB_PRELOAD", "0")  # AppTests load only what they ask for (test_bridge turns it on)

import core  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> core.LanguageModel:
    return core.load_model("gpt2-tiny")


@pytest.fixture(scope="session")
def smollm2() -> core.LanguageModel:
    return core.load_model()


APP = str(ROOT / "app.py")


@pytest.fixture
def open_page(monkeypatch: pytest.MonkeyPatch):
    """Factory: a fresh AppTest of the whole app (router + sidebar) on one page, with the tiny model."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import ui.controls

    monkeypatch.setenv("SAMPLING_LAB_TEST_MODEL", "gpt2-tiny")
    monkeypatch.setattr(ui.controls, "TEST_MODEL", "gpt2-tiny")  # read at import; the module may be loaded

    def _open(page: str, timeout: float = 60) -> AppTest:
        st.cache_data.clear()  # every cache, the bridge's included
        st.cache_resource.clear()
        app = AppTest.from_file(APP, default_timeout=timeout)
        app.switch_page(f"app_pages/{page}").run()
        assert app.selectbox(key="model_label").value == "Test model (gpt2-tiny)"
        return app

    return _open
