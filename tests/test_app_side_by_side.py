"""AppTest for the "Compare settings" page on the tiny random GPT-2.

Expected values come from `core` directly, so a wrong chart or wrong text fails the test.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

import core
import ui.controls
from ui import bridge
from ui import side_by_side_view as view
from ui.format import busy_note, show_token, visible_text

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PROMPT = "Every effort moves you"   # the sidebar's default


@pytest.fixture
def at(open_page) -> AppTest:
    app = open_page("side_by_side.py")
    assert not app.exception
    return app


@pytest.fixture(scope="module")
def logits(tiny: core.LanguageModel) -> torch.Tensor:
    return tiny.next_token_logits(tiny.tokenizer.encode(PROMPT))


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def dist_x(at: AppTest) -> list[list[float]]:
    """Bar values of the per-column distribution charts (the last chart is the 1,000-draw one)."""
    return [c["data"][0]["x"] for c in charts(at)[:-1]]


def boxes(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html") if 'data-testid="sbs-text"' in h.proto.body]


def visible(body: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def set_columns(at: AppTest, *temps: float) -> AppTest:
    at.radio(key="sbs_columns").set_value(len(temps)).run()
    for i, t in enumerate(temps):
        at.number_input(key=f"sbs_t{i}").set_value(t)
    return at.run()


def generate(at: AppTest, max_tokens: int = 30) -> AppTest:
    at.number_input(key="sbs_max_tokens").set_value(max_tokens)
    at.button(key="sbs_generate").click()
    return at.run()


def expected_texts(lm: core.LanguageModel, temps: list[float], n: int, **filters: object) -> list[list[str]]:
    cfgs = [core.SamplingConfig(temperature=t, seed=123, **filters) for t in temps]
    out: list[list[str]] = [[] for _ in temps]
    # raw prompt: the page continues past the end-of-text token by default
    for steps in core.generate_many(lm, lm.tokenizer.encode(PROMPT), cfgs, n, seed=123, stop_at_eos=False):
        for i, step in enumerate(steps):
            if step is not None:
                out[i].append(step.text)
    return out


def test_page_renders_the_books_three_temperatures(at: AppTest, tiny: core.LanguageModel,
                                                   logits: torch.Tensor) -> None:
    assert [at.number_input(key=f"sbs_t{i}").value for i in range(3)] == [0.1, 1.0, 5.0]
    assert not at.error
    specs = charts(at)
    assert len(specs) == 4
    order = view.token_order(logits, 10)
    labels = [view.plotly_text(show_token(tiny.tokenizer.token_text(i))) for i in order]
    for spec, t in zip(specs[:3], (0.1, 1.0, 5.0)):
        assert spec["data"][0]["y"] == labels   # same token order in every column
        expected = core.probabilities(logits, core.SamplingConfig(temperature=t))[order].tolist()
        assert spec["data"][0]["x"] == pytest.approx(expected, rel=1e-5)
    assert any(view.CRN_SENTENCE in m.value for m in at.markdown)
    assert "Click **Generate**" in at.info[0].value


def test_changing_one_temperature_changes_only_that_chart(at: AppTest, logits: torch.Tensor) -> None:
    before = dist_x(at)
    at.number_input(key="sbs_t1").set_value(0.5).run()
    after = dist_x(at)
    assert not at.exception
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1]
    order = view.token_order(logits, 10)
    expected = core.probabilities(logits, core.SamplingConfig(temperature=0.5))[order].tolist()
    assert after[1] == pytest.approx(expected, rel=1e-5)
    assert after[1][0] > before[1][0]   # colder: the top token gains


def test_generate_writes_the_continuation_into_every_column(at: AppTest, tiny: core.LanguageModel) -> None:
    generate(at, max_tokens=12)
    assert not at.exception and not at.error
    bodies = boxes(at)
    assert len(bodies) == 3
    for body, texts in zip(bodies, expected_texts(tiny, [0.1, 1.0, 5.0], 12)):
        assert len(texts) == 12
        assert visible(body) == PROMPT + visible_text("".join(texts))
    run = at.session_state["sbs_run"]
    assert run.complete and run.steps == 12 and len(run.uniforms) == 12
    assert any(c.value.startswith("Generated 12 tokens \\(the limit was 12\\) in ") for c in at.caption)
    table = at.dataframe[0].value
    assert list(table.columns) == ["step", view.RANDOM_COLUMN, "T = 0.1", "T = 1", "T = 5"]
    assert table[view.RANDOM_COLUMN].tolist() == [round(u, 4) for u in run.uniforms]


def test_equal_temperatures_give_identical_text(at: AppTest, tiny: core.LanguageModel) -> None:
    set_columns(at, 1.3, 1.3)
    generate(at, max_tokens=20)
    first, second = (visible(b) for b in boxes(at))
    assert first == second
    assert first == PROMPT + visible_text("".join(expected_texts(tiny, [1.3], 20)[0]))
    assert any(c.value.replace("\\", "").endswith("All columns chose the same 20 tokens.") for c in at.caption)
    assert not any("sbs-diverge" in b for b in boxes(at))


def test_the_first_divergence_is_marked_in_every_column(at: AppTest, tiny: core.LanguageModel) -> None:
    # Greedy next to a nearly greedy column: on the tiny model they agree for some tokens, then part
    # (where exactly depends on the model's float32 rounding, so only that they share a start).
    set_columns(at, 0.0, 0.012)
    generate(at, max_tokens=30)
    run = at.session_state["sbs_run"]
    assert [list(t) for t in run.texts] == expected_texts(tiny, [0.0, 0.012], 30)
    d = view.first_divergence(run.ids)
    assert d is not None and 0 < d < 30
    assert any(f"The columns part ways at token {d + 1} \\(highlighted\\)" in c.value for c in at.caption)
    for body, texts in zip(boxes(at), run.texts):
        marked = re.findall(r'<mark data-testid="sbs-diverge"[^>]*>(.*?)</mark>', body)
        assert marked == [html.escape(visible_text(texts[d]), quote=True)]
        # Everything before the mark is the shared part.
        before = visible(body.split("<mark")[0])
        assert before == PROMPT + visible_text("".join(texts[:d]))


def test_invalid_temperature_shows_a_message_not_a_traceback(at: AppTest, tiny: core.LanguageModel) -> None:
    at.number_input(key="sbs_t1").set_value(-1.0).run()
    assert not at.exception
    # The message is escaped so that Markdown shows it literally.
    assert [re.sub(r"\\(.)", r"\1", e.value) for e in at.error] == [
        "Column 2: temperature must be a finite number >= 0, got -1.0."]
    assert len(charts(at)) == 3            # two distribution charts + the draws chart
    generate(at, max_tokens=5)
    assert not at.exception
    bodies = boxes(at)
    assert len(bodies) == 2
    assert visible(bodies[0]) == PROMPT + visible_text("".join(expected_texts(tiny, [0.1], 5)[0]))
    assert any("the setting above is not valid" in c.value for c in at.caption)
    table = at.dataframe[-1].value
    assert [c for c in table.columns if c.startswith("T =")] == ["T = 0.1", "T = 5"]


def test_extreme_temperatures_work(at: AppTest, logits: torch.Tensor) -> None:
    set_columns(at, 1e-6, 1e6)
    assert not at.exception and not at.error
    cold, hot = dist_x(at)
    assert cold[0] == pytest.approx(1.0) and sum(cold[1:]) == pytest.approx(0.0, abs=1e-6)
    assert hot == pytest.approx([1 / logits.numel()] * 10, rel=1e-3)
    generate(at, max_tokens=5)
    assert not at.exception and len(boxes(at)) == 2


def test_thousand_draws_sum_to_1000_and_greedy_puts_all_on_the_argmax(at: AppTest, tiny: core.LanguageModel,
                                                                      logits: torch.Tensor) -> None:
    table = at.dataframe[-1].value
    names = ["T = 0.1", "T = 1", "T = 5"]
    assert [int(table[n].sum()) for n in names] == [1000, 1000, 1000]
    at.number_input(key="sbs_t0").set_value(0.0).run()
    table = at.dataframe[-1].value
    argmax = int(logits.argmax())
    assert table["token"].iloc[0] == show_token(tiny.tokenizer.token_text(argmax))
    assert table["raw rank"].iloc[0] == "1"
    assert table["T = 0"].iloc[0] == 1000 and int(table["T = 0"].sum()) == 1000
    assert int(table["T = 5"].sum()) == 1000
    bars = charts(at)[-1]["data"]
    assert [b["name"] for b in bars] == ["T = 0", "T = 1", "T = 5"]
    assert bars[0]["y"][0] == 1000


def test_changed_settings_hide_stale_text(at: AppTest) -> None:
    generate(at, max_tokens=3)
    assert len(boxes(at)) == 3
    at.number_input(key="sbs_t2").set_value(4.0).run()
    assert boxes(at) == []
    assert "Click **Generate**" in at.info[0].value


def test_sidebar_filters_apply_to_every_column(at: AppTest, tiny: core.LanguageModel) -> None:
    at.number_input(key="top_k").set_value(1).run()
    assert any("top-k 1 · seed 123" in c.value for c in at.caption)
    for x in dist_x(at):
        assert x[0] == 1.0 and set(x[1:]) == {0.0}
    generate(at, max_tokens=8)
    texts = {visible(b) for b in boxes(at)}
    greedy = expected_texts(tiny, [0.0], 8)[0]
    assert texts == {PROMPT + visible_text("".join(greedy))}


def test_ready_made_comparisons_chart_and_generate_full_settings(at: AppTest, tiny: core.LanguageModel,
                                                                logits: torch.Tensor) -> None:
    assert at.title[0].value == "Compare settings"
    ids = tiny.tokenizer.encode(PROMPT)
    order = view.token_order(logits, 10)
    for name in view.COMPARISONS:
        at.selectbox(key="sbs_comparison").set_value(name).run()
        assert not at.exception and not at.error
        cfgs = view.comparison_configs(name, 123)
        x = dist_x(at)
        assert len(x) == 2
        for got, cfg in zip(x, cfgs):
            expected = core.probabilities(logits, cfg, history=ids, prompt_length=len(ids))[order].tolist()
            assert got == pytest.approx(expected, rel=1e-5), name
    # the last one: transformers vs llama.cpp order; edit column 2 and generate both with one seed
    at.slider(key="sbs_edit_3_1_rep_penalty").set_value(1.5).run()   # the sidebar's widget code, prefixed
    cfgs = [c for c in view.comparison_configs("transformers vs llama.cpp order (T = 2, top-p 0.9)", 123)]
    cfgs[1] = cfgs[1].replace(repetition_penalty=1.5)
    assert dist_x(at)[1] == pytest.approx(core.probabilities(logits, cfgs[1], history=ids)[order].tolist(), rel=1e-5)
    generate(at, max_tokens=8)
    assert not at.exception
    out: list[list[str]] = [[], []]
    for steps in core.generate_many(tiny, ids, cfgs, 8, seed=123, stop_at_eos=False):
        for i, step in enumerate(steps):
            if step is not None:
                out[i].append(step.text)
    texts = [visible(b) for b in boxes(at)]
    assert len(texts) == 2
    for text, expected in zip(texts, out):
        assert "".join(expected).strip() in text


def test_column_editor_has_every_sampler_a_seed_and_dry_breakers(at: AppTest, tiny: core.LanguageModel,
                                                                 logits: torch.Tensor) -> None:
    name = "greedy vs temperature 1"
    at.selectbox(key="sbs_comparison").set_value(name).run()
    key = f"sbs_edit_{list(view.COMPARISONS).index(name)}_1"
    for suffix in ("rep_penalty", "presence_penalty", "frequency_penalty", "typical_p", "top_n_sigma",
                   "xtc_probability", "xtc_threshold", "dry_multiplier", "dry_base"):
        assert at.slider(key=f"{key}_{suffix}") is not None                 # every sampler, per column
    assert at.text_input(key=f"{key}_dry_breakers_text").value == r'\n, :, ", *'
    at.slider(key=f"{key}_typical_p").set_value(0.5)
    at.slider(key=f"{key}_dry_multiplier").set_value(0.8)
    at.text_input(key=f"{key}_dry_breakers_text").set_value(r"\n, the")
    at.number_input(key=f"{key}_seed").set_value(77).run()
    assert not at.exception and not at.error
    ids = tiny.tokenizer.encode(PROMPT)
    cfg = core.SamplingConfig(temperature=1.0, typical_p=0.5, dry_multiplier=0.8, dry_sequence_breakers=("\n", "the"),
                              seed=77)
    order = view.token_order(logits, 10)
    breakers = core.samplers.dry_breaker_ids(cfg.dry_sequence_breakers, tiny.tokenizer.token_text,
                                             tiny.tokenizer.encode, tiny.tokenizer.vocab_size)
    expected = core.probabilities(logits, cfg, **view.column_request(cfg, ids, breakers))[order].tolist()
    assert dist_x(at)[1] == pytest.approx(expected, rel=1e-5)
    assert any("seed 77" in m.value for m in at.markdown)                   # seeds differ: the names say which
    assert any(view.SEEDS_SENTENCE in m.value for m in at.markdown)
    generate(at, max_tokens=6)
    run = at.session_state["sbs_run"]
    alone = [s.text for s in core.generate(tiny, ids, cfg, 6, stop_at_eos=False)]
    assert list(run.texts[1]) == alone                                       # the column's own seed, bit for bit
    assert run.column_uniforms[1] != run.column_uniforms[0]
    # text that does not parse: the column says so, the other column stays
    at.text_input(key=f"{key}_dry_breakers_text").set_value(r"\q").run()
    assert not at.exception
    assert any(r"Column 2\: DRY sequence breakers\: unknown escape" in e.value for e in at.error)  # shown literally
    assert len(dist_x(at)) == 1


def test_a_full_model_says_busy_in_the_status_line(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self, rows: int = 1):
        raise core.Busy(1, 0, "no room within 30 s")

    monkeypatch.setattr(core.StepScheduler, "join", full)
    generate(at, max_tokens=5)
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == [busy_note(1)]
    assert "1 request ahead of you" in busy_note(1)
    assert at.session_state["sbs_run"] is None and not boxes(at)
