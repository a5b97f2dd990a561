"""ui/next_token_view.py: the table, CSV, chart, pipeline strip and continuation state, without Streamlit."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

import core
from core.sampling import rank_of
from ui import next_token_view as view
from ui.format import fmt_prob

CONFIGS = {
    "default": core.SamplingConfig(),
    "greedy": core.SamplingConfig(temperature=0.0),
    "cool + top-p": core.SamplingConfig(temperature=0.7, top_p=0.9),
    "top-k 3": core.SamplingConfig(top_k=3),
    "hot + min-p": core.SamplingConfig(temperature=1.8, min_p=0.5),
    "everything": core.SamplingConfig(temperature=1.3, top_k=40, top_p=0.95, min_p=0.05),
}
# Hand-built: probabilities 0.6439, 0.2369, 0.0871, 0.0321 (softmax of 3, 2, 1, 0), then tiny ones.
SMALL = torch.tensor([3.0, 2.0, 1.0, 0.0, -8.0, -9.0])


@pytest.fixture(scope="module")
def logits(tiny) -> torch.Tensor:
    return tiny.next_token_logits(tiny.tokenizer.encode("Every effort moves you"))


@pytest.mark.parametrize("name", CONFIGS)
def test_table_probabilities_are_core_probabilities_exactly(tiny, logits, name):
    cfg = CONFIGS[name]
    a = view.analyze(logits.numpy(), cfg)
    expected = core.probabilities(logits, cfg)
    full = view.distribution_table(a, tiny.tokenizer)
    assert len(full) == tiny.vocab_size
    ids = torch.tensor(full["id"].to_numpy())
    # Exactly the tensor the sampler uses, not a recomputation that agrees to a tolerance.
    assert np.array_equal(full["filtered probability"].to_numpy(), expected[ids].numpy())
    assert np.array_equal(full["raw probability"].to_numpy(), torch.softmax(logits, -1)[ids].numpy())
    assert np.array_equal(full["logit"].to_numpy(), logits[ids].numpy())
    assert full["filtered probability"].sum() == pytest.approx(1.0, abs=1e-5)
    assert sorted(full["id"]) == list(range(tiny.vocab_size))
    assert (np.diff(full["logit"].to_numpy()) <= 0).all(), "rows must be most likely first"
    assert np.array_equal(full["rank"].to_numpy()[:50], rank_of(logits, ids[:50]).numpy())
    top = view.distribution_table(a, tiny.tokenizer, 10)
    pd.testing.assert_frame_equal(top, full.head(10))


def test_input_logits_are_not_modified(logits):
    before = logits.clone()
    for cfg in CONFIGS.values():
        view.analyze(logits, cfg)
    assert torch.equal(logits, before)


def test_ranks_match_rank_of_with_ties():
    x = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, -1.0])
    a = view.analyze(x, core.SamplingConfig())
    assert view.ranks(a, torch.arange(6)).tolist() == rank_of(x, torch.arange(6)).tolist() == [4, 1, 1, 5, 1, 6]
    assert a.order.tolist() == [1, 2, 4, 0, 3, 5]   # ties: lower id first


def test_status_names_the_stage_that_removed_each_token(tiny):
    cfg = core.SamplingConfig(top_k=5, top_p=0.85, min_p=0.2)
    a = view.analyze(SMALL, cfg)
    table = view.distribution_table(a, tiny.tokenizer)
    # top-k 5 drops id 5; top-p 0.85 keeps 0.644 + 0.237 = 0.881 (ids 0, 1); min-p never sees the rest.
    assert table["status"].tolist() == ["kept", "kept", "removed by top-p", "removed by top-p",
                                        "removed by top-p", "removed by top-k"]
    cfg = core.SamplingConfig(min_p=0.3)
    table = view.distribution_table(view.analyze(SMALL, cfg), tiny.tokenizer)
    assert table["status"].tolist()[:3] == ["kept", "kept", "removed by min-p"]   # 0.087 < 0.3 × 0.644


def test_greedy_is_one_hot(tiny, logits):
    a = view.analyze(logits, core.SamplingConfig(temperature=0.0))
    table = view.distribution_table(a, tiny.tokenizer, 20)
    assert table["filtered probability"].tolist() == [1.0] + [0.0] * 19
    assert table["status"].tolist() == ["kept"] + ["removed by greedy (T = 0)"] * 19
    assert a.kept == 1
    rest = view.rest_of(a, 20)
    assert rest.filtered_mass == 0 and rest.kept == 0 and rest.count == tiny.vocab_size - 20


def test_underflow_at_tiny_temperature_is_not_called_removal(tiny):
    a = view.analyze(torch.tensor([0.0, -50.0, -100.0]), core.SamplingConfig(temperature=0.05))
    table = view.distribution_table(a, tiny.tokenizer)
    assert table["status"].tolist() == ["kept", "rounds to 0 at T = 0.05", "rounds to 0 at T = 0.05"]


def test_rest_holds_the_mass_below_the_top_n(logits):
    a = view.analyze(logits, CONFIGS["everything"])
    for n in (5, 10, 50):
        rest = view.rest_of(a, n)
        top = a.order[:n]
        assert rest.count == len(logits) - n
        assert float(a.raw_probs[top].sum()) + rest.raw_mass == pytest.approx(1.0, abs=1e-5)
        assert float(a.probs[top].sum()) + rest.filtered_mass == pytest.approx(1.0, abs=1e-5)
        assert rest.kept == a.kept - int((a.probs[top] > 0).sum())
    assert view.rest_of(a, len(logits)) == view.Rest(0, 0, 0.0, 0.0)


def test_csv_round_trips(tiny, logits):
    cfg = CONFIGS["top-k 3"]
    table = view.distribution_table(view.analyze(logits, cfg), tiny.tokenizer, 50)
    back = pd.read_csv(io.BytesIO(view.csv_bytes(table)), keep_default_na=False)
    assert list(back.columns) == ["rank", "token", "id", "logit", "raw probability", "filtered probability",
                                  "status", "text"]
    assert back["id"].tolist() == table["id"].tolist()
    assert back["text"].tolist() == table["text"].tolist()   # leading spaces survive
    np.testing.assert_allclose(back["filtered probability"], table["filtered probability"], rtol=1e-8)
    np.testing.assert_allclose(back["raw probability"], table["raw probability"], rtol=1e-8)
    assert back["status"].value_counts().to_dict() == {"kept": 3, "removed by top-k": 47}


def test_token_labels_are_readable_and_unique(tiny):
    tok = tiny.tokenizer
    nl, sp_the = tok.encode("\n")[0], tok.encode(" the")[0]
    assert view.token_labels([nl, sp_the], tok.token_text) == ["↵", "␣the"]
    # Two lone UTF-8 continuation bytes both read "�": the axis needs two categories.
    partial = [i for i in range(256) if tok.token_text(i) == "\ufffd"][:2]
    assert view.token_labels(partial, tok.token_text) == [f"\ufffd #{partial[0]}", f"\ufffd #{partial[1]}"]


def test_figure_marks_removed_tokens_and_sums_the_rest(tiny, logits):
    cfg = CONFIGS["top-k 3"]
    a = view.analyze(logits, cfg)
    table = view.distribution_table(a, tiny.tokenizer, 10)
    fig = view.distribution_figure(table, view.rest_of(a, 10), cfg)
    raw, filt = fig.data
    assert list(raw.y) == list(filt.y) == [*table["token"], f"all other {tiny.vocab_size - 10:,} tokens"]
    assert list(filt.x[:10]) == table["filtered probability"].astype(float).tolist()
    assert filt.x[10] == 0.0   # top-k 3 left nothing below the top 10
    assert list(raw.text[:10]) == [""] * 3 + ["removed by top-k"] * 7
    assert list(raw.marker.pattern.shape[:10]) == [""] * 3 + ["/"] * 7
    assert fig.layout.yaxis.type == "category"
    assert "top-k 3" in filt.name


def test_figure_escapes_plotly_html(tiny):
    # Plotly renders <b>, <a href> ... in labels: token text must arrive escaped.
    lt = tiny.tokenizer.encode("<")[0]
    logits = torch.full((tiny.vocab_size,), -10.0)
    logits[lt] = 5.0
    a = view.analyze(logits, core.SamplingConfig())
    fig = view.distribution_figure(view.distribution_table(a, tiny.tokenizer, 5), view.rest_of(a, 5), a.cfg)
    assert fig.data[0].y[0] == "&lt;"
    assert fig.data[0].customdata[0][0] == "&lt;"
    assert view.plotly_text("a<b>&") == "a&lt;b&gt;&amp;"


def test_log_scale_figure(tiny, logits):
    a = view.analyze(logits, CONFIGS["greedy"])
    fig = view.distribution_figure(view.distribution_table(a, tiny.tokenizer, 5), view.rest_of(a, 5), a.cfg, True)
    assert fig.layout.xaxis.type == "log"


def test_pipeline_table(logits):
    a = view.analyze(logits, core.SamplingConfig(temperature=0.5, top_k=3))
    summaries = view.stage_summaries(a)
    assert [s.name for s in summaries] == ["raw", "temperature", "top-k", "top-p", "min-p"]
    assert [s.kept for s in summaries] == [len(logits)] * 2 + [3] * 3
    k = summaries[2]
    assert k.active and k.mass_kept == pytest.approx(float(torch.softmax(logits / 0.5, -1).topk(3).values.sum()))
    lines = view.pipeline_markdown(summaries).splitlines()
    assert lines[0] == "| stage | tokens kept | mass kept | raw mass |"
    assert lines[2] == f"| **raw logits** | {len(logits):,} | 100% | 100% |"
    assert lines[3] == f"| **temperature 0.5** | {len(logits):,} | 100% | 100% |"
    assert lines[4] == f"| **top-k 3** | 3 | {fmt_prob(k.mass_kept)} | {fmt_prob(k.raw_mass_kept)} |"
    assert lines[5].startswith("| :gray[top-p 1 (off)] | 3 |")
    greedy = view.analyze(logits, core.SamplingConfig(temperature=0))
    raw_top = fmt_prob(float(torch.softmax(logits, -1).max()))
    assert view.pipeline_markdown(view.stage_summaries(greedy)).splitlines()[3] == \
        f"| **temperature 0 (greedy)** | 1 | 100% | {raw_top} |"
    assert view.summary_markdown(greedy).splitlines()[2:] == [
        f"| tokens in play | {len(logits):,} | **1** |",
        f"| entropy | {view.entropy_bits(greedy.raw_probs):.2f} bits | **0.00 bits** |",
        f"| top choice | {raw_top} | **100%** |"]
    assert view.moot_warnings(view.analyze(logits, core.SamplingConfig(top_k=3, top_p=0.99))) == [
        "top-p 0.99 removes nothing: top-k 3 already kept only 3 tokens."]


def test_sample_is_seeded_by_seed_plus_step(logits):
    a = view.analyze(logits, core.SamplingConfig(seed=7))
    for step in range(3):
        expected = core.sample(core.probabilities(logits, a.cfg), generator=core.make_generator(7 + step))
        assert view.sample_token(a, step) == int(expected) == view.sample_token(a, step)
    greedy = view.analyze(logits, core.SamplingConfig(temperature=0, seed=7))
    assert {view.sample_token(greedy, s) for s in range(5)} == {int(logits.argmax())}


def test_pick_messages(tiny):
    tok = tiny.tokenizer
    a = view.analyze(SMALL, core.SamplingConfig(top_k=2))
    assert view.make_pick(a, tok, 1, "sampled").message() == \
        "Sampled '\"' — rank 2 of 6, p = 26.9%: a random draw, not the top choice."
    assert view.make_pick(a, tok, 0, "sampled").message() == \
        "Sampled '!' — rank 1 of 6, p = 73.1%: the top choice (greedy would pick it too)."
    assert view.make_pick(a, tok, 2, "chosen").message() == \
        "You appended '#' — rank 3 of 6, p = 0% under T = 1 · top-k 2 (raw 8.7%): " \
        "removed by top-k, so Sample could never draw it."
    g = view.analyze(SMALL, core.SamplingConfig(temperature=0))
    assert view.make_pick(g, tok, 0, "sampled").message() == \
        "Sampled '!' — rank 1 of 6, p = 100%: temperature 0 always takes the top choice."


def test_continuation_state():
    state: dict = {}
    a = view.analyze(SMALL, core.SamplingConfig())

    class Tok:   # a stand-in tokenizer: make_pick only needs token_text
        @staticmethod
        def token_text(i: int) -> str:
            return f"t{i}"

    view.sync_context(state, ("m", "p", "raw"))
    view.on_sample(state, a, Tok)
    view.on_choose(state, a, Tok, token_id=3)
    state["pick_box"] = 2
    view.on_choose(state, a, Tok, widget_key="pick_box")
    first = state[view.STEPS_KEY]
    assert view.appended_ids(state)[1:] == [3, 2]
    assert [p.kind for p in view.steps(state)] == ["sampled", "chosen", "chosen"]
    view.undo(state)
    assert view.appended_ids(state)[1:] == [3] and len(first) == 3, "undo must not mutate the stored list"
    view.sync_context(state, ("m", "p", "raw"))
    assert len(view.appended_ids(state)) == 2, "same context keeps the steps"
    view.sync_context(state, ("m", "p2", "raw"))
    assert view.appended_ids(state) == []
    view.on_sample(state, a, Tok)
    view.reset(state)
    assert view.steps(state) == []


def test_context_changes_shelve_the_continuation_never_drop_it():
    state: dict = {}
    a = view.analyze(SMALL, core.SamplingConfig())

    class Tok:
        @staticmethod
        def token_text(i: int) -> str:
            return f"t{i}"

    view.sync_context(state, ("m", "p", "raw"))
    view.on_choose(state, a, Tok, token_id=3)
    view.sync_context(state, ("m2", "p", "raw"))          # another model: set aside, offered back
    assert view.appended_ids(state) == []
    aside = view.set_aside(state)
    assert aside is not None and aside.context == ("m", "p", "raw") and [p.token_id for p in aside.picks] == [3]
    assert "You changed the model" in aside.describe(("m2", "p", "raw"))
    view.carry_over(state)                                  # not across models: token ids differ
    assert view.appended_ids(state) == []
    view.sync_context(state, ("m", "p", "raw"))             # back to the first model: the token is back
    assert view.appended_ids(state) == [3] and view.set_aside(state) is None
    view.sync_context(state, ("m", "p!", "raw"))
    shelf_before = state[view.SHELF_KEY]
    view.carry_over(state)
    assert view.appended_ids(state) == [3] and view.set_aside(state) is None
    assert ("m", "p", "raw") in shelf_before, "carry_over must not mutate the stored shelf"


def test_text_pieces_keep_split_characters_whole_and_html_is_escaped(tiny):
    tok = tiny.tokenizer
    ids = tok.encode(" 🎲<b>x</b>")
    pieces = view.text_pieces(tok, ids)
    assert "".join(pieces) == " 🎲<b>x</b>"
    assert "\ufffd" not in "".join(pieces)
    html = view.text_so_far_html("<img src=x onerror=alert(1)>", pieces)
    assert "<img" not in html and "<b>" not in html and "&lt;img src=x" in html


# --- penalties see the continuation; moved tokens are marked; two orders; the sweep ------------

def test_step_request_history_is_prompt_plus_appended():
    cfg = core.SamplingConfig(repetition_penalty=1.3)
    req = view.step_request(cfg, [4, 5], [1, 1])
    assert req == {"history": (4, 5, 1, 1), "prompt_length": 2, "dry_breakers": None}
    xtc = core.SamplingConfig(xtc_probability=0.5, seed=9)
    u = view.step_request(xtc, [4], [1, 2])["xtc_uniform"]
    assert u == float(core.sampling.draw_uniform(core.make_generator(9 + 2), 2)[1])   # seed + step, 2nd number
    assert "xtc_uniform" not in view.step_request(core.SamplingConfig(xtc_probability=1.0), [4], [])


def test_penalty_and_bias_are_marked_with_their_direction(tiny):
    # SMALL's logits 3, 2, 1, 0, -8, -9; history holds ids 0 and 3 (logit 0: repetition leaves 0 at 0)
    cfg = core.SamplingConfig(repetition_penalty=2.0, presence_penalty=0.5, logit_bias={2: 1.5})
    a = view.analyze(SMALL, cfg, **view.step_request(cfg, [0], [3, 4]))
    assert view.moved_marks(a, torch.tensor([0, 1, 2, 3, 4])) == ["penalty↓", "", "bias↑", "penalty↓", "penalty↓"]
    expected = core.probabilities(SMALL, cfg, history=[0, 3, 4], prompt_length=1)
    table = view.distribution_table(a, tiny.tokenizer)
    assert torch.equal(torch.tensor(table.sort_values("id")["filtered probability"].to_numpy()), expected)
    status = dict(zip(table["id"], table["status"]))
    assert status[0] == "kept · penalty↓" and status[2] == "kept · bias↑" and status[1] == "kept"
    assert SMALL.tolist() == [3.0, 2.0, 1.0, 0.0, -8.0, -9.0]
    # the chart prints the mark beside a kept token's raw bar, and still treats it as kept
    fig = view.distribution_figure(table.head(4), view.rest_of(a, 4), cfg)
    assert list(fig.data[0].text[:4]) == ["kept · penalty↓", "", "kept · bias↑", "kept · penalty↓"]
    assert fig.data[0].marker.color[0] == view.RAW_COLOR


def test_current_analysis_penalises_the_appended_tokens(logits):
    state: dict = {}
    cfg = core.SamplingConfig(repetition_penalty=3.0)
    view.current_analysis(state, ("m", "p", "raw"), [1, 2], lambda ids: logits.numpy(), cfg)
    top = int(logits.argmax())
    view.append_pick(state, view.Pick(top, "x", "chosen", 1, 10, 0.1, 0.1, 10, "kept", False, "T = 1"))
    a = view.current_analysis(state, ("m", "p", "raw"), [1, 2], lambda ids: logits.numpy(), cfg)
    assert torch.equal(a.probs, core.probabilities(logits, cfg, history=[1, 2, top], prompt_length=2))
    assert bool(a.stages[1].moved[top]) and a.stages[1].name == "penalties"


def test_order_comparison_temperature_before_or_after_the_filters(tiny, logits):
    cfg = core.SamplingConfig(temperature=3.0, top_p=0.5)
    a = view.analyze(logits, cfg)
    table = view.order_comparison(a, tiny.tokenizer, n=5)
    assert list(table.columns) == ["token", "raw", "transformers", "llama.cpp"]
    assert len(table) == 6 and table["token"].iloc[-1] == "tokens in play"
    hf = core.probabilities(logits, cfg.replace(order="transformers"))
    llama = core.probabilities(logits, cfg.replace(order="llama.cpp"))
    ids = a.top(5)
    assert table["transformers"].iloc[:5].tolist() == [fmt_prob(float(p)) for p in hf[ids]]
    assert table["llama.cpp"].iloc[:5].tolist() == [fmt_prob(float(p)) for p in llama[ids]]
    # top-p after T = 3 keeps many more tokens than top-p on the raw distribution
    kept_hf, kept_llama = (int(table[c].iloc[-1].replace(",", "")) for c in ("transformers", "llama.cpp"))
    assert kept_hf == int((hf > 0).sum()) and kept_llama == int((llama > 0).sum()) and kept_hf > kept_llama
    assert view.order_note(a).startswith("transformers divides by the temperature before the filters")
    assert view.order_note(view.analyze(logits, core.SamplingConfig(temperature=3.0))).startswith("Both orders")


def test_sweep_figure_marks_the_current_temperature(logits):
    cfg = core.SamplingConfig(temperature=0.7, top_k=40)
    grid = view.sweep_temperatures(0.7)
    assert grid[:3] == (0.0, 0.2, 0.4) and grid[-1] == 5.0 and 0.7 in grid and len(grid) == 27
    assert view.sweep_temperatures(0.4) == core.sampling.temperature_grid(5.0, 26)   # on the grid already
    sweep = core.temperature_sweep(logits, cfg, grid)
    fig = view.sweep_figure(sweep, 0.7)
    assert [list(tr.y) for tr in fig.data] == [list(sweep.entropy), list(sweep.effective), list(sweep.top_prob)]
    assert list(fig.data[0].x) == list(sweep.temperatures) and max(fig.data[0].x) == 5.0
    assert [s.x0 for s in fig.layout.shapes] == [0.7, 0.7, 0.7]
    assert fig.layout.yaxis2.type == "log"
    caption = view.sweep_caption(sweep, 0.7)
    i = sweep.temperatures.index(0.7)
    assert f"At T = 0.7: entropy {sweep.entropy[i]:.2f} bits" in caption
    assert sweep.entropy[0] == 0.0 and sweep.top_prob[0] == 1.0   # T = 0 is greedy
