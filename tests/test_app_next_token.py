"""The "Next token" page under AppTest, on the tiny random GPT-2 (vocabulary 50,257)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import core
from ui import bridge
from ui import next_token_view as view

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PROMPT = "Every effort moves you"


@pytest.fixture
def at(open_page) -> AppTest:
    return open_page("next_token.py")


@pytest.fixture(scope="module")
def logits(tiny) -> torch.Tensor:
    return tiny.next_token_logits(tiny.tokenizer.encode(PROMPT))


def ok(app: AppTest) -> None:
    assert not app.exception, [e.message for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    assert app.title[0].value == "Next token"


def chart(app: AppTest, key: str = "nt_chart") -> dict:
    charts = [c for c in app.get("plotly_chart") if c.key == key]
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def pipeline(app: AppTest) -> str:
    tables = [m.value for m in app.markdown if "| stage |" in m.value]
    assert len(tables) == 1
    return tables[0]


def summary(app: AppTest) -> str:
    tables = [m.value for m in app.markdown if "| after settings |" in m.value]
    assert len(tables) == 1
    return tables[0]


def text_so_far(app: AppTest) -> str:
    return app.get("html")[0].proto.body


def test_page_renders(at, tiny, logits):
    ok(at)
    spec = chart(at)
    raw, filt = spec["data"]
    assert len(raw["y"]) == 11 and raw["y"][-1] == "all other 50,247 tokens"
    expected = torch.softmax(logits, -1).sort(descending=True).values[:10].tolist()
    assert raw["x"][:10] == pytest.approx(expected, rel=1e-6)
    assert filt["x"][:10] == pytest.approx(expected, rel=1e-6)   # T = 1, no filters: same distribution
    assert spec["layout"]["yaxis"]["type"] == "category"
    assert pipeline(at).splitlines()[2:] == [
        "| **raw logits** | 50,257 | 100% | 100% |", "| :gray[temperature 1 (off)] | 50,257 | 100% | 100% |",
        "| :gray[top-k off] | 50,257 | 100% | 100% |", "| :gray[top-p 1 (off)] | 50,257 | 100% | 100% |",
        "| :gray[min-p 0 (off)] | 50,257 | 100% | 100% |"]
    assert "Every effort moves you" in text_so_far(at)
    assert "| tokens in play | 50,257 | **50,257** |" in summary(at)
    assert len(at.dataframe[-1].value) == 10


def test_temperature_changes_the_chart_without_rerunning_the_model(at, logits, monkeypatch):
    before = chart(at)["data"]
    calls = []
    real = core.LanguageModel.next_token_logits
    monkeypatch.setattr(core.LanguageModel, "next_token_logits", lambda self, ids: calls.append(ids) or real(self, ids))
    at.slider(key="temperature").set_value(0.3).run()
    ok(at)
    after = chart(at)["data"]
    assert after[0]["x"] == before[0]["x"], "the raw bars do not depend on the temperature"
    assert after[1]["x"] != before[1]["x"]
    expected = core.probabilities(logits, core.SamplingConfig(temperature=0.3))
    top = expected.sort(descending=True).values[:10].tolist()
    assert after[1]["x"][:10] == pytest.approx(top, rel=1e-6)
    assert after[1]["x"][0] > before[1]["x"][0], "a lower temperature sharpens the top"
    assert calls == [], "a slider move must reuse the cached logits"


def test_greedy_is_one_hot(at):
    at.slider(key="temperature").set_value(0.0)
    at.slider(key="top_p").set_value(0.5).run()
    ok(at)
    filt = chart(at)["data"][1]["x"]
    assert filt == [1.0] + [0.0] * 10
    assert "| tokens in play | 50,257 | **1** |" in summary(at)
    assert "| top choice | " in summary(at) and summary(at).endswith("| **100%** |")
    df = at.dataframe[-1].value
    assert df["status"].tolist() == ["kept"] + ["removed by greedy (T = 0)"] * 9
    assert [w.value for w in at.warning] == [
        "top-p 0.5 has no effect: temperature 0 is greedy and always picks the top token."]


def test_top_k_marks_removed_tokens(at):
    at.number_input(key="top_k").set_value(3).run()
    ok(at)
    raw, filt = chart(at)["data"]
    assert raw["text"][:10] == [""] * 3 + ["removed by top-k"] * 7
    assert raw["marker"]["pattern"]["shape"][:10] == [""] * 3 + ["/"] * 7
    assert all(x > 0 for x in filt["x"][:3]) and filt["x"][3:] == [0.0] * 8
    assert sum(filt["x"][:3]) == pytest.approx(1.0, abs=1e-6)
    df = at.dataframe[-1].value
    assert df["status"].value_counts().to_dict() == {"kept": 3, "removed by top-k": 7}
    assert "| **top-k 3** | 3 | " in pipeline(at)
    assert "| tokens in play | 50,257 | **3** |" in summary(at)


def test_moot_filter_warning(at):
    at.number_input(key="top_k").set_value(3)
    at.slider(key="top_p").set_value(0.99).run()
    ok(at)
    assert [w.value for w in at.warning] == ["top-p 0.99 removes nothing: top-k 3 already kept only 3 tokens."]


def test_sample_records_the_pick_and_says_its_rank(at, tiny, logits):
    at.number_input(key="seed").set_value(5).run()
    at.button(key="nt_sample").click().run()
    ok(at)
    cfg = core.SamplingConfig(seed=5)
    expected = int(core.sample(core.probabilities(logits, cfg), generator=core.make_generator(5)))
    steps = at.session_state[view.STEPS_KEY]
    assert [s["token_id"] for s in steps] == [expected]
    rank = int(core.sampling.rank_of(logits, torch.tensor(expected)))
    message = at.info[0].value
    assert message.startswith("Sampled ") and f"rank {rank:,} of 50,257" in message
    assert ("a random draw, not the top choice" in message) == (rank > 1)
    assert tiny.tokenizer.token_text(expected) in text_so_far(at)
    # The chart now shows the distribution after prompt + the sampled token.
    after = torch.softmax(tiny.next_token_logits(tiny.tokenizer.encode(PROMPT) + [expected]), -1)
    assert chart(at)["data"][0]["x"][0] == pytest.approx(float(after.max()), rel=1e-6)
    # The second draw uses seed + 1.
    at.button(key="nt_sample").click().run()
    second = int(core.sample(core.probabilities(after.log(), cfg), generator=core.make_generator(6)))
    assert [s["token_id"] for s in at.session_state[view.STEPS_KEY]] == [expected, second]


def test_sample_at_temperature_0_takes_the_top_token(at, logits):
    at.slider(key="temperature").set_value(0.0).run()
    at.button(key="nt_sample").click().run()
    ok(at)
    assert at.session_state[view.STEPS_KEY][0]["token_id"] == int(logits.argmax())
    assert at.info[0].value.endswith("temperature 0 always takes the top choice\\.")


def test_append_then_undo_and_reset(at, tiny, logits):
    first_chart = chart(at)["data"]
    third = int(logits.sort(descending=True, stable=True).indices[2])
    at.selectbox(key="nt_pick").set_value(third).run()
    at.button(key="nt_append").click().run()
    ok(at)
    assert [s["token_id"] for s in at.session_state[view.STEPS_KEY]] == [third]
    assert at.info[0].value.startswith("You appended ") and "rank 3 of 50,257" in at.info[0].value
    assert chart(at)["data"][0]["x"] != first_chart[0]["x"]
    assert tiny.tokenizer.token_text(third) in text_so_far(at)
    at.button(key="nt_undo").click().run()
    ok(at)
    assert at.session_state[view.STEPS_KEY] == []
    assert not at.info
    assert chart(at)["data"] == first_chart
    at.button(key="nt_sample").click().run()
    at.button(key="nt_sample").click().run()
    assert len(at.session_state[view.STEPS_KEY]) == 2
    at.button(key="nt_reset").click().run()
    assert at.session_state[view.STEPS_KEY] == [] and chart(at)["data"] == first_chart


def _appended_text(app: AppTest, tiny) -> str:
    return "".join(tiny.tokenizer.token_text(s["token_id"]) for s in app.session_state[view.STEPS_KEY])


def test_editing_the_prompt_sets_the_tokens_aside_and_restoring_it_brings_them_back(at, tiny):
    """Issue 19 item 2: Sample ×3, add "!" to the prompt, restore it: the three tokens are never lost."""
    for _ in range(3):
        at.button(key="nt_sample").click().run()
    before = list(at.session_state[view.STEPS_KEY])
    at.text_area(key="prompt").set_value(PROMPT + "!").run()
    ok(at)
    assert at.session_state[view.STEPS_KEY] == []
    offer = [m.value for m in at.markdown if "set aside" in m.value]
    assert len(offer) == 1 and "the 3 tokens you appended" in offer[0]
    assert at.button(key="nt_carry") and at.button(key="nt_back_to_prompt")
    at.text_area(key="prompt").set_value(PROMPT).run()     # typed back by hand
    ok(at)
    assert at.session_state[view.STEPS_KEY] == before
    assert not [m for m in at.markdown if "set aside" in m.value]


def test_set_aside_tokens_can_follow_the_new_prompt(at, tiny):
    at.button(key="nt_sample").click().run()
    at.button(key="nt_sample").click().run()
    ids = [s["token_id"] for s in at.session_state[view.STEPS_KEY]]
    at.text_area(key="prompt").set_value("Once upon a time").run()
    at.button(key="nt_carry").click().run()
    ok(at)
    assert [s["token_id"] for s in at.session_state[view.STEPS_KEY]] == ids
    assert text_so_far(at).count("title=\"step ") == 2 or "Once upon a time" in text_so_far(at)
    expected = torch.softmax(tiny.next_token_logits(tiny.tokenizer.encode("Once upon a time") + ids), -1)
    assert chart(at)["data"][0]["x"][0] == pytest.approx(float(expected.max()), rel=1e-6)


def test_back_to_the_earlier_prompt_puts_it_in_the_sidebar(at):
    at.button(key="nt_sample").click().run()
    before = list(at.session_state[view.STEPS_KEY])
    at.text_area(key="prompt").set_value("Something else").run()
    at.button(key="nt_back_to_prompt").click().run()
    ok(at)
    assert at.text_area(key="prompt").value == PROMPT
    assert at.session_state[view.STEPS_KEY] == before


def test_a_click_that_arrives_with_a_sidebar_edit_uses_the_new_settings(at, tiny, logits):
    """Issue 19 item 10: callbacks read the current state, not the previous run's Analysis."""
    at.number_input(key="seed").set_value(1).run()
    t1 = int(core.sample(core.probabilities(logits, core.SamplingConfig(seed=1)), generator=core.make_generator(1)))
    assert t1 != int(logits.argmax()), "precondition: at T = 1 this seed does not draw the top token"
    at.slider(key="temperature").set_value(0.0)            # not run: the edit travels with the click
    at.button(key="nt_sample").click().run()
    ok(at)
    pick = at.session_state[view.STEPS_KEY][0]
    assert pick["token_id"] == int(logits.argmax()) and pick["greedy"]


def test_changing_the_prompt_starts_a_new_continuation(at):
    at.button(key="nt_sample").click().run()
    assert len(at.session_state[view.STEPS_KEY]) == 1
    at.slider(key="temperature").set_value(0.5).run()
    assert len(at.session_state[view.STEPS_KEY]) == 1, "a slider move keeps the continuation"
    at.text_area(key="prompt").set_value("Once upon a time").run()
    ok(at)
    assert at.session_state[view.STEPS_KEY] == []
    assert "Once upon a time" in text_so_far(at)


def test_top_n_slider(at):
    at.slider(key="nt_top_n").set_value(25).run()
    ok(at)
    assert len(chart(at)["data"][0]["y"]) == 26
    assert len(at.dataframe[-1].value) == 25


def test_empty_prompt_shows_a_message(at):
    at.text_area(key="prompt").set_value("   ").run()
    assert not at.exception
    assert not at.error
    assert [i.value for i in at.info] == ["Type a prompt in the sidebar to see what the model predicts next."]
    assert not at.get("plotly_chart")


def test_order_comparison_toggle_and_temperature_sweep(at, tiny, logits):
    at.slider(key="temperature").set_value(3.0)
    at.slider(key="top_p").set_value(0.5).run()
    ok(at)
    assert not [d for d in at.dataframe if "llama.cpp" in d.value.columns]
    at.toggle(key="nt_compare_orders").set_value(True).run()
    ok(at)
    table = next(d.value for d in at.dataframe if "llama.cpp" in d.value.columns)
    cfg = core.SamplingConfig(temperature=3.0, top_p=0.5)
    in_play = table.iloc[-1]
    assert in_play["token"] == "tokens in play"
    assert in_play["transformers"] == f"{int((core.probabilities(logits, cfg) > 0).sum()):,}"
    assert in_play["llama.cpp"] == \
        f"{int((core.probabilities(logits, cfg.replace(order='llama.cpp')) > 0).sum()):,}"
    sweep = chart(at, "nt_sweep")
    expected = core.temperature_sweep(logits, cfg, view.sweep_temperatures(3.0))
    assert sweep["data"][0]["y"] == pytest.approx(list(expected.entropy))
    assert [s["x0"] for s in sweep["layout"]["shapes"]] == [3.0, 3.0, 3.0]
    assert any("At T = 3:" in c.value for c in at.caption)
