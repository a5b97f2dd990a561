"""Shared fixtures: the tiny random GPT-2 for most tests, the real bundled model for golden ones."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> core.LanguageModel:
    return core.load_model("gpt2-tiny")


@pytest.fixture(scope="session")
def smollm2() -> core.LanguageModel:
    return core.load_model()
