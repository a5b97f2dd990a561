"""ui/format.py: the one place that writes a probability, an entropy, a token, model text or settings."""
from __future__ import annotations

import pytest

import core
from ui.format import (fmt_bits, fmt_prob, plural, prompt_display, settings_label, show_token, visible_text,
                       with_prob_text)


@pytest.mark.parametrize("p, text", [
    (0.0, "0%"), (-1e-9, "0%"), (1.0, "100%"), (0.999999, "100%"), (0.9996, ">99.9%"), (0.31, "31.0%"),
    (0.176, "17.6%"), (0.025, "2.5%"), (0.2589, "25.9%"), (0.05, "5.0%"), (0.001, "0.1%"),
    (0.00031, "0.031%"), (0.0003, "0.030%"), (0.0000312, "0.0031%"), (3.2e-07, "<0.001%"), (1e-30, "<0.001%")])
def test_fmt_prob_one_format(p: float, text: str) -> None:
    assert fmt_prob(p) == text


def test_fmt_prob_never_shows_a_kept_token_as_zero() -> None:
    assert all(fmt_prob(p) != "0%" for p in (1e-45, 1e-12, 1e-6))


def test_fmt_bits_and_plural() -> None:
    assert fmt_bits(-0.0000001) == "0.00 bits"    # a one-token distribution, never "-0.00"
    assert fmt_bits(3.014) == "3.01 bits"
    assert plural(1, "token") == "1 token" and plural(2, "token") == "2 tokens"
    assert plural(1000, "draw") == "1,000 draws"


def test_settings_label() -> None:
    assert settings_label(core.SamplingConfig(seed=1)) == "T = 1 · no filters"
    cfg = core.SamplingConfig(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, seed=7)
    assert settings_label(cfg) == "T = 0.7 · top-k 50 · top-p 0.9 · min-p 0.05"
    assert settings_label(cfg, temperature=False, seed=True) == "top-k 50 · top-p 0.9 · min-p 0.05 · seed 7"
    assert settings_label(core.SamplingConfig(temperature=0)).startswith("T = 0 (greedy)")


def test_tokens_and_text() -> None:
    assert show_token(" the") == "␣the" and show_token("\n") == "↵" and show_token("") == "∅"
    assert show_token("a\x00") == "a\\x00"
    assert visible_text("a\nb\x07\tc\r") == "a↵\nb\\x07\tc⏎"
    assert visible_text("") == ""


def test_chat_prompt_reads_the_same_on_every_page() -> None:
    assert prompt_display("Hi", "raw") == "Hi"
    assert prompt_display("Hi", "chat") == "User: Hi\nAssistant: "


def test_with_prob_text_leaves_the_numbers_alone() -> None:
    import pandas as pd
    df = pd.DataFrame({"token": ["a", "b"], "p": [0.31, 0.0000312]})
    shown = with_prob_text(df, ["p"])
    assert shown["p"].tolist() == ["31.0%", "0.0031%"]
    assert df["p"].tolist() == [0.31, 0.0000312]
