"""Unit tests for ui/side_by_side_view.py: exact values on tiny hand-built distributions."""
from __future__ import annotations

import pytest
import torch

import core
from ui import side_by_side_view as view
from ui.format import visible_text

VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
BOOK_LOGITS = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
FORWARD = VOCAB.index("forward")


def text_of(i: int) -> str:
    return " " + VOCAB[i]


# --- column settings --------------------------------------------------------------------------

def test_column_specs_apply_sidebar_filters_and_name_invalid_values() -> None:
    base = core.SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, seed=7)
    specs = view.column_specs([0.1, -1.0, 5.0], base)
    assert [sp.name for sp in specs] == ["T = 0.1", "T = -1", "T = 5"]
    assert specs[0].config == core.SamplingConfig(temperature=0.1, top_k=5, top_p=0.9, min_p=0.05, seed=7)
    assert specs[2].config.temperature == 5.0 and specs[2].error is None
    assert specs[1].config is None
    assert specs[1].error == "Column 2: temperature must be a finite number >= 0, got -1.0."


def test_column_specs_extreme_temperatures_are_valid() -> None:
    specs = view.column_specs([1e-6, 1e6, 0.0], core.SamplingConfig())
    assert all(sp.config is not None for sp in specs)
    assert [sp.name for sp in specs] == ["T = 1e-06", "T = 1e+06", "T = 0"]


def test_equal_temperatures_get_distinct_names() -> None:
    specs = view.column_specs([1.0, 1.0, 2.0], core.SamplingConfig())
    assert [sp.name for sp in specs] == ["T = 1 (column 1)", "T = 1 (column 2)", "T = 2"]
    assert len({sp.color for sp in specs}) == 3


def test_filters_caption() -> None:
    assert "no filters" in view.filters_caption(core.SamplingConfig(seed=5))
    text = view.filters_caption(core.SamplingConfig(top_k=40, top_p=0.9, min_p=0.1, seed=5))
    assert "top-k 40 · top-p 0.9 · min-p 0.1 · seed 5" in text


# --- distributions ----------------------------------------------------------------------------

def test_token_order_is_the_raw_ranking_and_ties_go_to_lower_ids() -> None:
    assert view.token_order(BOOK_LOGITS, 3) == [FORWARD, VOCAB.index("toward"), VOCAB.index("closer")]
    assert view.token_order(torch.tensor([1.0, 2.0, 2.0, 0.0]), 10) == [1, 2, 0, 3]


def test_token_order_is_the_same_at_every_temperature() -> None:
    # Ranked by the scaled logits, not by probabilities: at T=0.1 the tail underflows to 0 and ties.
    for t in (1e-6, 0.1, 1.0, 5.0, 1e6):
        scaled = core.filter_logits(BOOK_LOGITS, core.SamplingConfig(temperature=t))
        assert view.token_order(scaled, 9) == view.token_order(BOOK_LOGITS, 9)


def test_token_labels_are_readable_and_unique() -> None:
    texts = {1: " a", 2: "\n", 3: "\ufffd", 4: "\ufffd"}
    assert view.token_labels([1, 2, 3, 4], texts.__getitem__) == ["␣a", "↵", "\ufffd #3", "\ufffd #4"]


def test_distribution_figure_escapes_labels_and_shares_the_axis() -> None:
    # Plotly decodes &lt; &gt; &amp; but would show "&quot;" literally, so quotes stay as they are.
    fig = view.distribution_figure(["<b>x</b>", '␣"y"&'], [0.75, 0.25], 0.9, "#123456")
    bar = fig.data[0]
    assert list(bar.y) == ["&lt;b&gt;x&lt;/b&gt;", '␣"y"&amp;']
    assert list(bar.x) == [0.75, 0.25]
    assert list(fig.layout.xaxis.range) == [0, 0.9]
    assert fig.layout.yaxis.autorange == "reversed"


def test_shared_x_max() -> None:
    assert view.shared_x_max([[0.5, 0.1], [0.2]]) == pytest.approx(0.65)
    assert view.shared_x_max([[1.0]]) == pytest.approx(1.3)


def test_column_summary() -> None:
    probs = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert view.column_summary(probs, [0, 1]) == "entropy 1.50 bits · 3 tokens possible · top 2 hold 75.0%"


# --- divergence and text ----------------------------------------------------------------------

@pytest.mark.parametrize("lists, expected", [
    ([[1, 2, 3], [1, 2, 3]], None),
    ([[1, 2, 3], [1, 5, 3]], 1),
    ([[9], [1]], 0),
    ([[1, 2], [1, 2, 3]], 2),          # one column ended (end of text) while the other went on
    ([[1, 2, 3], [1, 2, 3], [1, 2, 4]], 2),
    ([[1, 2, 3]], None),
])
def test_first_divergence(lists: list[list[int]], expected: int | None) -> None:
    assert view.first_divergence(lists) == expected


def _step(token_id: int, text: str, u: float, finished: str | None = None) -> core.Step:
    return core.Step(index=0, token_id=token_id, text=text, prob=0.5, raw_prob=0.4, rank=1, entropy=1.0,
                     raw_entropy=1.2, top_before=(), top_after=(), uniform=u, prompt_tokens=3, truncated=0,
                     finished=finished)


def test_generation_run_collects_steps_and_finds_the_divergence() -> None:
    empty = view.GenerationRun.start(("k",), ["T = 0.1", "T = 5"])
    run = empty.add([_step(1, " a", 0.25), _step(1, " a", 0.25)])
    run = run.add([_step(2, " b", 0.75), _step(3, " c", 0.75)])
    run = run.add([None, _step(4, "\n", 0.5, "eos")])
    assert empty.steps == 0 and empty.ids == ((), ()), "add returns a new run; the old one is unchanged"
    assert run.steps == 3 and run.uniforms == (0.25, 0.75, 0.5)
    assert run.ids == ((1, 2), (1, 3, 4))
    assert run.finished == (None, "eos")
    assert run.divergence == 1
    assert view.divergence_caption(run) == ("The columns part ways at token 2 (highlighted); the first 1 token is "
                                            "the same in every column: T = 0.1 chose “ b”; T = 5 chose “ c”.")
    table = view.steps_table(run)
    # Issue 19 item 4: the first column holds step numbers, and the random number says what it is.
    assert list(table.columns) == ["step", view.RANDOM_COLUMN, "T = 0.1", "T = 5"]
    assert table["T = 0.1"].tolist() == ["␣a  (50.0%)", "␣b  (50.0%)", "(ended)"]
    assert table["T = 5"].tolist()[2] == "↵  (50.0%)"


def test_divergence_caption_names_the_columns_that_agree() -> None:
    """Issue 19 item 4: T = 0 and T = 0.7 both chose " away": never "they differ from the very first choice"."""
    run = view.GenerationRun.start((), ["T = 0", "T = 0.7", "T = 1", "T = 2"])
    run = run.add([_step(1, " away", 0.3), _step(1, " away", 0.3), _step(2, " forward", 0.3),
                   _step(3, " vulnerable", 0.3)])
    caption = view.divergence_caption(run)
    assert caption == ("The columns part ways at token 1 (highlighted): T = 0 and T = 0.7 chose “ away”; "
                       "T = 1 chose “ forward”; T = 2 chose “ vulnerable”.")
    assert "very first" not in caption
    ended = view.GenerationRun.start((), ["a", "b"]).add([_step(1, "x", 0.1, "eos"), _step(1, "x", 0.1)])
    ended = ended.add([None, _step(2, "y", 0.2)])
    assert view.divergence_caption(ended).endswith("a had already ended; b chose “y”.")


def test_divergence_caption_when_all_agree() -> None:
    run = view.GenerationRun.start((), ["a", "b"]).add([_step(1, "x", 0.1), _step(1, "x", 0.1)])
    assert view.divergence_caption(run) == "All columns chose the same 1 token."


def test_column_summary_at_temperature_0() -> None:
    """Issue 19 item 4: never "entropy -0.00 bits · 1 tokens possible"."""
    probs = core.probabilities(torch.tensor([2.0, 1.0, 0.5]), core.SamplingConfig(temperature=0))
    assert view.column_summary(probs, [0, 1]).startswith("entropy 0.00 bits · 1 token possible · ")


def test_readable_text_and_prompt_tail() -> None:
    assert visible_text("a\nb\x07\tc\r") == "a↵\nb\\x07\tc⏎"
    assert view.prompt_tail("x" * 70, 60) == "…" + "x" * 60
    assert view.prompt_tail("short") == "short"


def test_continuation_html_escapes_model_text_and_marks_the_divergence() -> None:
    html = view.continuation_html('<img src="http://evil/">', ["![x](http://a/)", " <script>", "\n"],
                                  "#ff0000", highlight=1, finished="eos")
    assert "<img" not in html and "<script>" not in html
    assert "&lt;img src=&quot;http://evil/&quot;&gt;" in html
    assert '<mark data-testid="sbs-diverge"' in html and "&lt;script&gt;</mark>" in html
    assert html.count("<mark") == 1
    assert "↵\n" in html and "[stopped: the model wrote its end-of-text token]" in html


# --- 1,000 draws --------------------------------------------------------------------------------

def test_many_draws_per_row_match_one_draw_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    for t in (0.0, 0.5, 1.0, 3.0):
        probs = core.probabilities(BOOK_LOGITS, core.SamplingConfig(temperature=t, top_k=6))
        u = torch.rand(2000, generator=g, dtype=torch.float64)
        expected = core.sample(probs.expand(2000, -1), uniform=u)
        assert torch.equal(core.sample(probs, uniform=u), expected)
    assert core.sample(torch.tensor([0.0, 1.0, 0.0]), uniform=torch.tensor([0.0, 0.999999])).tolist() == [1, 1]


def test_draw_counts_sum_to_n_and_greedy_puts_all_on_the_argmax() -> None:
    rows = [core.probabilities(BOOK_LOGITS, core.SamplingConfig(temperature=t)) for t in (0.0, 1.0, 5.0)]
    counts = view.draw_counts(rows, seed=123)
    assert [int(c.sum()) for c in counts] == [1000, 1000, 1000]
    assert int(counts[0][FORWARD]) == 1000
    # More heat, more variety: the book's observation.
    distinct = [int((c > 0).sum()) for c in counts]
    assert distinct[0] == 1 and distinct[1] < distinct[2] == 9
    assert all(torch.equal(a, b) for a, b in zip(counts, view.draw_counts(rows, seed=123)))
    assert not torch.equal(counts[2], view.draw_counts(rows, seed=124)[2])


def test_draw_counts_with_common_random_numbers_stay_close_to_the_book() -> None:
    # The book (ch. 5, torch.manual_seed(123) and multinomial) reports 582 x forward, 343 x toward
    # at T=1; our inverse-CDF draws differ in detail but not in proportion.
    counts = view.draw_counts([torch.softmax(BOOK_LOGITS, -1)], seed=123)[0]
    assert 540 < int(counts[FORWARD]) < 630 and 300 < int(counts[VOCAB.index("toward")]) < 390


def test_counts_table_sums_to_the_draws_with_an_other_row() -> None:
    rows = [core.probabilities(BOOK_LOGITS, core.SamplingConfig(temperature=t)) for t in (0.0, 5.0)]
    counts = view.draw_counts(rows, seed=1)
    table = view.counts_table(counts, ["T = 0", "T = 5"], BOOK_LOGITS, text_of, max_rows=3)
    assert table["token"].tolist() == ["␣forward", "␣toward", "␣closer", "(all other tokens)"]
    assert table["raw rank"].tolist() == ["1", "2", "3", ""]
    assert table["T = 0"].tolist() == [1000, 0, 0, 0]
    assert int(table["T = 5"].sum()) == 1000
    assert table["T = 5"].iloc[3] == int(counts[1].sum()) - int(counts[1][[3, 7, 0]].sum())
    fig = view.counts_figure(table, ["T = 0", "T = 5"], ["#111111", "#222222"])
    assert [list(bar.y) for bar in fig.data] == [table["T = 0"].tolist(), table["T = 5"].tolist()]
    assert view.distinct_caption(counts, ["T = 0", "T = 5"]).startswith("Different tokens drawn: T = 0 → 1 · ")


# --- ready-made comparisons: each column a full setting ------------------------------------------

def test_comparisons_are_full_settings_with_the_sidebar_seed() -> None:
    cfgs = {name: view.comparison_configs(name, 7) for name in view.COMPARISONS}
    assert cfgs["top-p 0.9 vs min-p 0.1 at temperature 3"] == [
        core.SamplingConfig(temperature=3.0, top_p=0.9, seed=7), core.SamplingConfig(temperature=3.0, min_p=0.1, seed=7)]
    assert [c.temperature for c in cfgs["greedy vs temperature 1"]] == [0.0, 1.0]
    assert [c.repetition_penalty for c in cfgs["with vs without repetition penalty"]] == [1.3, 1.0]
    assert [c.order for c in cfgs["transformers vs llama.cpp order (T = 2, top-p 0.9)"]] == ["transformers", "llama.cpp"]


def test_setting_specs_apply_edits_name_columns_and_report_bad_values() -> None:
    cfgs = view.comparison_configs("transformers vs llama.cpp order (T = 2, top-p 0.9)", 5)
    specs = view.setting_specs(cfgs, [{}, {"top_k": 3}])
    assert [sp.name for sp in specs] == ["T = 2 · top-p 0.9", "T = 2 · top-k 3 · top-p 0.9 · llama.cpp order"]
    assert specs[1].config == cfgs[1].replace(top_k=3) and specs[1].color != specs[0].color
    same = view.setting_specs([core.SamplingConfig()] * 2, [{}, {}])
    assert [sp.name for sp in same] == ["T = 1 · no filters (column 1)", "T = 1 · no filters (column 2)"]
    bad = view.setting_specs(cfgs, [{"top_p": 0.0}, {}])
    assert bad[0].config is None and bad[0].error == "Column 1: top_p must be a finite number in (0, 1], got 0.0."
    assert bad[1].config is not None


def test_order_comparison_charts_differ_and_penalty_sees_the_prompt() -> None:
    hf, llama = view.comparison_configs("transformers vs llama.cpp order (T = 2, top-p 0.9)", 5)
    p_hf = core.probabilities(BOOK_LOGITS, hf, **view.column_request(hf, [3], None))
    p_llama = core.probabilities(BOOK_LOGITS, llama, **view.column_request(llama, [3], None))
    assert int((p_hf > 0).sum()) > int((p_llama > 0).sum())   # top-p after T = 2 keeps more
    with_rep, without = view.comparison_configs("with vs without repetition penalty", 5)
    req = view.column_request(with_rep, [FORWARD], None)
    assert req["history"] == (FORWARD,) and req["prompt_length"] == 1
    p_with = core.probabilities(BOOK_LOGITS, with_rep, **req)
    p_without = core.probabilities(BOOK_LOGITS, without, **view.column_request(without, [FORWARD], None))
    assert p_with[FORWARD] < p_without[FORWARD]   # the prompt's own token is penalised


def test_draw_counts_per_row_seeds() -> None:
    row = torch.softmax(torch.tensor([1.0, 0.5, 0.2, 0.0]), -1)
    same = view.draw_counts([row, row], seed=5)
    assert torch.equal(same[0], same[1])                                 # one seed: the same numbers
    mixed = view.draw_counts([row, row, row], seed=5, seeds=[None, 6, 5])
    assert torch.equal(mixed[0], same[0]) and torch.equal(mixed[2], same[0])
    assert torch.equal(mixed[1], view.draw_counts([row], seed=6)[0]) and not torch.equal(mixed[1], same[0])


def test_steps_table_shows_each_columns_number_when_seeds_differ() -> None:
    def step(u: float, tid: int) -> core.Step:
        return core.Step(index=0, token_id=tid, text="x", prob=0.5, raw_prob=0.5, rank=1, entropy=1.0,
                         raw_entropy=1.0, top_before=(), top_after=(), uniform=u, prompt_tokens=1, truncated=0)

    run = view.GenerationRun.start(("k",), ["a", "b"]).add([step(0.25, 1), step(0.25, 2)])
    assert view.shared_uniforms(run) and view.RANDOM_COLUMN in view.steps_table(run).columns
    run = view.GenerationRun.start(("k",), ["a", "b"]).add([step(0.25, 1), step(0.75, 2)])
    table = view.steps_table(run)
    assert not view.shared_uniforms(run) and view.RANDOM_COLUMN not in table.columns
    assert table["b"].tolist() == ["x  (50.0%)  u = 0.7500"]
