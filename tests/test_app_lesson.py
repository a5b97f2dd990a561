"""The "How sampling works" lesson: its pure helpers, and the page under AppTest with no model at all.

The toy example is LLMs-from-scratch ch. 5: at temperature 1 "forward" has 57.21 %, at 0.1 it has 99.10 %.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

import core
from ui import bridge
from ui import lesson_view as lv
from ui.format import fmt_prob

APP = str(Path(__file__).resolve().parent.parent / "app.py")
KEPT_BY_TOP3 = ["forward", "toward", "closer"]


# --- pure helpers ----------------------------------------------------------------------------

def test_toy_vocabulary_matches_the_book() -> None:
    assert len(lv.WORDS) == len(lv.SCORES) == 9
    assert dict(zip(lv.WORDS, lv.SCORES))["forward"] == 6.75
    assert [lv.WORDS[i] for i in lv.ORDER[:3]] == KEPT_BY_TOP3


@pytest.mark.parametrize("temperature, forward", [(1.0, 57.21), (0.1, 99.10), (5.0, 24.21), (0.0, 100.0)])
def test_forward_probability(temperature: float, forward: float) -> None:
    result = lv.run_lesson(lv.lesson_config(temperature, 9))
    assert 100 * float(result.probs[lv.WORDS.index("forward")]) == pytest.approx(forward, abs=0.01)
    assert float(result.probs.sum()) == pytest.approx(1.0, abs=1e-6)


def test_top_k_9_is_off_and_top_k_3_keeps_three() -> None:
    assert lv.lesson_config(1.0, 9).top_k is None
    result = lv.run_lesson(lv.lesson_config(1.0, 3))
    kept = [w for w, p in zip(lv.WORDS, result.probs.tolist()) if p > 0]
    assert sorted(kept) == sorted(KEPT_BY_TOP3)
    assert int((result.counts > 0).sum()) <= 3 and int(result.counts.sum()) == lv.N_DRAWS


def test_draws_follow_the_probabilities_and_the_seed() -> None:
    cfg = lv.lesson_config(1.0, 9, seed=7)
    a, b = lv.run_lesson(cfg), lv.run_lesson(cfg)
    assert torch.equal(a.counts, b.counts)                      # same seed, same draws
    assert int(a.counts.sum()) == lv.N_DRAWS
    # 1,000 draws: each share within 5 points of its probability (sd <= 1.6 points).
    assert torch.allclose(a.counts / lv.N_DRAWS, a.probs, atol=0.05)
    other = lv.run_lesson(lv.lesson_config(1.0, 9, seed=8))
    assert not torch.equal(a.counts, other.counts)


def test_greedy_and_top_k_1_pick_forward_every_time() -> None:
    for cfg in (lv.lesson_config(0.0, 9), lv.lesson_config(5.0, 1)):
        counts = lv.run_lesson(cfg).counts
        assert int(counts[lv.WORDS.index("forward")]) == lv.N_DRAWS, cfg


def test_numbers_table() -> None:
    df = lv.numbers_table(lv.run_lesson(lv.lesson_config(1.0, 9)))
    assert list(df.columns) == ["word", "score", "probability", "draws out of 1,000"]
    assert df["word"].tolist()[:3] == KEPT_BY_TOP3
    assert df["score"].is_monotonic_decreasing
    assert df.loc[0, "probability"] == "57.2%"      # ui.format.fmt_prob, as on every page
    assert df["draws out of 1,000"].sum() == 1000


def test_figures_use_the_same_numbers_as_the_table() -> None:
    result = lv.run_lesson(lv.lesson_config(0.5, 3))
    probs_fig, draws_fig = lv.probability_figure(result), lv.draws_figure(result)
    df = lv.numbers_table(result)
    assert list(probs_fig.data[0].y) == df["word"].tolist()
    assert [fmt_prob(x / 100) for x in probs_fig.data[0].x] == df["probability"].tolist()
    assert list(draws_fig.data[0].x) == df["draws out of 1,000"].tolist()
    assert probs_fig.data[0].text[3] == "cut by top-k"
    assert probs_fig.layout.xaxis.range[1] > 100           # fixed axis, room for the labels


def test_labels_and_notes() -> None:
    top3, greedy = lv.lesson_config(1.0, 3), lv.lesson_config(0.0, 9)
    assert lv.probability_label(0, 0.5721, top3) == "57.2%"
    assert lv.probability_label(5, 0.0, top3) == "cut by top-k"
    assert lv.probability_label(5, 0.0, greedy) == "0% at T = 0"
    assert "every time" in lv.temperature_note(0)
    assert "below 1" in lv.temperature_note(0.1)
    assert "unchanged" in lv.temperature_note(1)
    assert "above 1" in lv.temperature_note(5)
    assert "top-k is off" in lv.top_k_note(9)
    assert "stay in the running" in lv.top_k_note(9, 1.0)


def test_greedy_lesson_never_says_every_word_stays_while_labelling_words_cut() -> None:
    """Issue 19 item 6: at T = 0 with top-k off, the note and the bar labels tell one story."""
    result = lv.run_lesson(lv.lesson_config(0.0, 9))
    labels = lv.probability_figure(result).data[0].text
    note = lv.top_k_note(9, 0.0)
    assert "stay in the running" not in note and "temperature 0" in note
    assert labels[0] == "100%" and "cut" not in " ".join(labels)
    assert set(labels[1:]) == {"0% at T = 0"}
    assert "“forward”, “toward”, “closer”" in lv.top_k_note(3)


# --- the page under AppTest ------------------------------------------------------------------

@pytest.fixture
def model_loads(monkeypatch) -> list[str]:
    """Every attempt to load a model; the patched loaders fail so nothing real is ever loaded."""
    calls: list[str] = []

    def refuse(source: str, *args, **kwargs):
        calls.append(source)
        raise core.ModelUnavailableError(f"the lesson must not load a model (asked for {source})")

    monkeypatch.setattr(bridge, "get_model", refuse)
    monkeypatch.setattr(core, "load_model", refuse)
    return calls


@pytest.fixture
def at(open_page, model_loads) -> AppTest:
    return open_page("lesson.py")


def ok(app: AppTest) -> None:
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    assert app.title[0].value == "How sampling works"


def charts(app: AppTest) -> tuple[dict, dict]:
    found = app.get("plotly_chart")
    assert len(found) == 2, f"expected the probability and the draws charts, got {len(found)}"
    probs, draws = (json.loads(c.proto.spec)["data"][0] for c in found)
    return probs, draws


def bar(chart: dict, word: str) -> float:
    return chart["x"][chart["y"].index(word)]


def test_page_renders_without_loading_a_model(at: AppTest, model_loads: list[str]) -> None:
    ok(at)
    assert model_loads == []
    assert at.slider(key="temperature").value == 1.0            # the shared sidebar is there too
    probs, draws = charts(at)
    assert probs["y"] == [lv.WORDS[i] for i in lv.ORDER]
    assert bar(probs, "forward") == pytest.approx(57.21, abs=0.01)
    assert sum(draws["x"]) == 1000
    table = at.dataframe[0].value
    assert table.loc[table["word"] == "forward", "probability"].item() == "57.2%"
    assert table["draws out of 1,000"].tolist() == draws["x"]
    assert model_loads == []


def test_temperature_changes_the_chart(at: AppTest, model_loads: list[str]) -> None:
    before, before_draws = charts(at)
    at.slider(key="lesson_temperature").set_value(0.1).run()
    ok(at)
    after, after_draws = charts(at)
    assert after["x"] != before["x"]
    assert bar(after, "forward") == pytest.approx(99.10, abs=0.01)
    assert bar(after, "toward") == pytest.approx(0.90, abs=0.01)
    assert sum(after_draws["x"]) == 1000 and after_draws["x"] != before_draws["x"]
    assert "Temperature 0.1 (below 1)" in at.info[0].value

    at.slider(key="lesson_temperature").set_value(5.0).run()
    flat, _ = charts(at)
    assert bar(flat, "forward") == pytest.approx(24.21, abs=0.01)
    assert min(flat["x"]) > 4                                   # even "pizza" gets a real chance
    assert at.slider(key="temperature").value == 1.0             # the sidebar's setting is untouched
    assert model_loads == []


def test_top_k_3_leaves_three_bars(at: AppTest) -> None:
    at.slider(key="lesson_top_k").set_value(3).run()
    ok(at)
    probs, draws = charts(at)
    kept = [w for w, x in zip(probs["y"], probs["x"]) if x > 0]
    assert kept == KEPT_BY_TOP3
    assert sum(probs["x"]) == pytest.approx(100, abs=0.01)
    assert all(c == 0 for w, c in zip(draws["y"], draws["x"]) if w not in KEPT_BY_TOP3)
    assert sum(draws["x"]) == 1000
    assert "Top-k 3: only “forward”, “toward”, “closer” can be picked" in at.info[0].value


@pytest.mark.parametrize("temperature, top_k", [(0.0, 9), (0.5, 2), (1.0, 9), (3.3, 5), (5.0, 1)])
def test_counts_sum_to_1000(at: AppTest, temperature: float, top_k: int) -> None:
    at.slider(key="lesson_temperature").set_value(temperature)
    at.slider(key="lesson_top_k").set_value(top_k).run()
    ok(at)
    probs, draws = charts(at)
    assert sum(draws["x"]) == 1000
    assert sum(probs["x"]) == pytest.approx(100, abs=0.01)
    # A word with probability 0 is never drawn.
    assert all(c == 0 for p, c in zip(probs["x"], draws["x"]) if p == 0)
    assert math.isclose(sum(at.dataframe[0].value["draws out of 1,000"]), 1000)


def test_try_this_buttons(at: AppTest) -> None:
    def click(label: str) -> None:
        next(b for b in at.button if b.label == label).click().run()
        ok(at)

    click("Cold: T = 0.1")
    assert at.slider(key="lesson_temperature").value == pytest.approx(0.1)
    click("Top-k = 1")
    assert at.slider(key="lesson_top_k").value == 1
    probs, draws = charts(at)
    assert bar(probs, "forward") == 100 and bar(draws, "forward") == 1000
    click("Reset")
    assert at.slider(key="lesson_temperature").value == 1.0 and at.slider(key="lesson_top_k").value == 9

    _, first = charts(at)
    click("Roll 1,000 again")
    _, second = charts(at)
    assert second["x"] != first["x"] and sum(second["x"]) == 1000
