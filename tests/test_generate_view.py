"""The Generate page's pure helpers: JSON round trip and validation, safe HTML, colours, chart, tables."""
from __future__ import annotations

import dataclasses

import json
import re

import pytest

import core
from core import Candidate, SamplingConfig, Step
from ui import generate_view as gv


@pytest.fixture(scope="module")
def run(tiny: core.LanguageModel) -> gv.Run:
    cfg = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    r = gv.new_run(tiny, "Test model (gpt2-tiny)", "Every effort moves you", "raw", cfg, 6)
    for step in core.generate(tiny, "Every effort moves you", cfg, 6, top_n=gv.TOP_N):
        r = r.add(step)
    return r.with_status("done")


def _cand(tid: int, text: str, p: float) -> Candidate:
    return Candidate(token_id=tid, text=text, prob=p, raw_prob=p, logit=1.0)


def _step(index: int, text: str, prob: float, token_id: int = 5, alts: tuple[Candidate, ...] = ()) -> Step:
    alts = alts or (_cand(token_id, text, prob),)
    return Step(index=index, token_id=token_id, text=text, prob=prob, raw_prob=prob, rank=1, entropy=1.0,
                raw_entropy=1.5, top_before=alts, top_after=alts, uniform=0.5, prompt_tokens=3, truncated=0)


def _hand_run(*steps: Step, prompt: str = "hi", status: str = "done") -> gv.Run:
    return gv.Run(model="m", model_label="M", prompt=prompt, prompt_mode="raw", sampling=SamplingConfig(seed=1),
                  max_new_tokens=10, steps=tuple(steps), status=status)


# --- JSON -------------------------------------------------------------------------------------

def test_json_round_trip_is_exact(run: gv.Run) -> None:
    assert len(run.steps) == 6 and run.text
    back = gv.parse_run(gv.run_to_json(run))
    assert back == run                                  # every float, candidate and setting survives
    assert back.sampling == SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    assert back.text == run.text


def test_json_round_trip_from_bytes_and_other_statuses(run: gv.Run) -> None:
    for r in (run.with_status("stopped"), gv.Run(**{**run.__dict__, "steps": ()}).with_status("interrupted")):
        assert gv.parse_run(gv.run_to_json(r).encode("utf-8")) == r


def test_json_holds_what_the_export_promises(run: gv.Run) -> None:
    doc = json.loads(gv.run_to_json(run))
    assert doc["format"] == "sampling-lab-run" and doc["version"] == 1
    assert doc["model"] == "gpt2-tiny (random weights)" and doc["prompt"] == "Every effort moves you"
    assert doc["prompt_mode"] == "raw" and doc["text"] == run.text
    more = doc["settings"].pop("more")
    assert doc["settings"] == {"temperature": 1.0, "top_k": 50, "top_p": 0.9, "min_p": 0.0, "seed": 7,
                               "max_new_tokens": 6, "stop_at_eos": True}
    assert more["repetition_penalty"] == 1.0 and more["order"] == "transformers" and more["logit_bias"] == []
    first = doc["steps"][0]
    assert first["token_id"] == run.steps[0].token_id and len(first["top_before"]) == 10
    assert set(first["top_after"][0]) == {"token_id", "text", "prob", "raw_prob", "logit"}


def test_unicode_and_hostile_text_round_trip() -> None:
    r = _hand_run(_step(0, "<script>alert(1)</script>", 0.5), _step(1, "\n€\x00 ", 0.25),
                  prompt='![x](http://127.0.0.1:9/leak) "quoted" ünïcode')
    assert gv.parse_run(gv.run_to_json(r)) == r


def _doc(run: gv.Run) -> dict:
    return json.loads(gv.run_to_json(run))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("steps"), "missing field 'steps'"),
    (lambda d: d.update(format="something-else"), "not a Sampling Lab run"),
    (lambda d: d.update(version=99), "version 99 is not supported"),
    (lambda d: d["settings"].update(temperature=-1), "settings.temperature must be a finite number >= 0"),
    (lambda d: d["steps"][0]["top_before"][0].update(logit="x"), "top_before[0].logit must be a finite number,"),
    (lambda d: d["settings"].update(top_k="ten"), "settings.top_k must be an integer"),
    (lambda d: d["settings"].update(top_p=0), "top_p must be a finite number in (0, 1]"),
    (lambda d: d["settings"].update(seed=True), "settings.seed must be an integer"),
    (lambda d: d["steps"][1].update(prob=1.5), "steps[1].prob must be a finite number in [0, 1"),
    (lambda d: d["steps"][2].update(index=7), "steps[2].index must be 2"),
    (lambda d: d["steps"][0].pop("token_id"), "steps[0]: missing field 'token_id'"),
    (lambda d: d["steps"][0]["top_after"][3].update(text=None), "steps[0].top_after[3].text must be a string"),
    (lambda d: d["steps"][0].update(finished="maybe"), "steps[0].finished must be null"),
    (lambda d: d.update(steps={"0": 1}), "steps must be a list"),
    (lambda d: d.update(prompt_mode="poem"), "prompt_mode must be one of 'raw', 'chat'"),
    (lambda d: d.update(status="running"), "status must be one of"),
    (lambda d: d.update(text="edited"), "'text' does not match"),
])
def test_malformed_runs_are_rejected_with_a_message(run: gv.Run, mutate, message: str) -> None:
    doc = _doc(run)
    mutate(doc)
    with pytest.raises(gv.RunFormatError) as e:
        gv.parse_run(json.dumps(doc))
    assert message in str(e.value)


@pytest.mark.parametrize("data, message", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2, 3]", "not a Sampling Lab run"),
    (b'{"format": "sampling-lab-run", "version": 1, "x": NaN}', "NaN"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
])
def test_garbage_is_rejected_not_raised(data: bytes, message: str) -> None:
    with pytest.raises(gv.RunFormatError) as e:
        gv.parse_run(data)
    assert message in str(e.value)


def test_oversized_file_is_rejected_before_parsing() -> None:
    with pytest.raises(gv.RunFormatError, match="MB"):
        gv.parse_run(b" " * (gv.MAX_FILE_BYTES + 1))


# --- HTML safety ------------------------------------------------------------------------------

HOSTILE = ["<script>alert(1)</script>", "![x](http://127.0.0.1:9/leak?a=1)", '" onmouseover="alert(1)',
           "<img src=x onerror=alert(1)>", "&lt;already&gt;"]


def test_tokens_html_escapes_model_text_and_prompt() -> None:
    steps = [_step(i, t, 0.3, token_id=i, alts=(_cand(i, t, 0.3), _cand(99, "<b>alt</b>", 0.2)))
             for i, t in enumerate(HOSTILE)]
    html = gv.tokens_html(_hand_run(*steps, prompt="<script>p()</script> ![y](http://evil/)"), "sampled")
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;p()&lt;/script&gt;" in html
    assert "&amp;lt;already&amp;gt;" in html                     # escaped once more, shown literally
    # The markdown image stays literal text inside a span: no element can load it.
    assert "![x](http://127.0.0.1:9/leak?a=1)" in html and "src=" not in html.replace("src=x", "")
    # Attribute break-out is impossible: every quote inside a title is an entity.
    titles = re.findall(r'title="([^"]*)"', html)
    assert len(titles) == len(HOSTILE)
    assert all("<" not in t and ">" not in t for t in titles)
    assert "&quot; onmouseover=&quot;alert(1)" in html
    assert html.count('class="sl-tok"') == len(HOSTILE)


def test_token_display_keeps_layout_visible() -> None:
    assert gv.token_display(" the") == " the"
    assert gv.token_display("\n\n") == "↵\n↵\n"
    assert gv.token_display("") == "∅"
    assert gv.token_display("a\x00b\x7f") == "a\\x00b\\x7f"


def test_title_lists_alternatives_and_marks_the_choice() -> None:
    step = _step(2, " cat", 0.25, token_id=7, alts=(_cand(3, " dog", 0.5), _cand(7, " cat", 0.25)))
    title = gv.step_title(step)
    assert title.startswith("#3 ␣cat  25.0% after filters")
    assert "␣dog  50.0%" in title and "␣cat  25.0% · 25.0% ← chosen" in title


def test_streaming_html_shows_progress_and_cursor() -> None:
    r = _hand_run(_step(0, "a", 0.9), status="running")
    assert "Generating… 1 of at most 10 tokens" in gv.tokens_html(r, streaming=True)
    assert "▍" in gv.tokens_html(r, streaming=True) and "▍" not in gv.tokens_html(r)


def test_chat_prompt_is_labelled() -> None:
    r = gv.Run(**{**_hand_run().__dict__, "prompt_mode": "chat"})
    assert "User: hi\nAssistant: " in gv.tokens_html(r)


# --- colours, bands, numbers ------------------------------------------------------------------

def test_bands_and_colours() -> None:
    assert [gv.band_of(p) for p in (1.0, 0.5, 0.49, 0.1, 0.05, 0.01, 0.009, 0.0)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({style for _, _, style in gv.BANDS}) == len(gv.BANDS)  # each band its own underline
    assert gv.colours_of(1.0) == ("rgb(253, 231, 37)", "#000")         # viridis yellow, dark text
    assert gv.colours_of(0.0) == ("rgb(68, 1, 84)", "#fff")            # viridis purple, light text
    positions = [gv.scale_position(p) for p in (0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)]
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] == 1
    assert gv.scale_position(1e-2) == pytest.approx(0.5)


def test_colour_by_raw_uses_raw_probability() -> None:
    step = Step(**{**_step(0, "x", 0.9).__dict__, "raw_prob": 0.005})
    assert 'text-decoration-style:solid' in gv.token_span(step, "sampled")
    assert 'text-decoration-style:wavy' in gv.token_span(step, "raw")


def test_legend_names_every_band() -> None:
    html = gv.legend_html("raw")
    assert all(gv.escape_html(name) in html for _, name, _ in gv.BANDS)
    assert "raw probability" in html and "linear-gradient" in html


# --- summary, chart, tables -------------------------------------------------------------------

def test_chart_has_probability_and_entropy_per_step(run: gv.Run) -> None:
    fig = gv.chart_figure(run.steps)
    by_name = {t.name: t for t in fig.data}
    chosen = by_name["chosen token's probability (after filters)"]
    assert list(chosen.x) == [1, 2, 3, 4, 5, 6] and chosen.mode == "markers"   # dots, never a tangle of lines
    assert list(chosen.y) == [s.prob for s in run.steps]
    assert list(by_name["top token's probability"].y) == [max(c.prob for c in s.top_after) for s in run.steps]
    entropy = by_name["entropy after filters (bits)"]
    assert entropy.type == "bar" and list(entropy.y) == [s.entropy for s in run.steps]
    assert entropy.yaxis == "y2" and chosen.yaxis == "y"                          # two rows, one token axis
    assert not any("average" in n for n in by_name)


def test_chart_smoothing_is_a_trailing_mean() -> None:
    assert gv.moving_average([1.0, 0.0, 1.0, 1.0], 2) == [1.0, 0.5, 0.5, 1.0]
    steps = [_step(i, "x", 0.5) for i in range(200)]
    fig = gv.chart_figure(steps, smooth=10)
    names = [t.name for t in fig.data]
    assert "chosen, average of 10" in names and "entropy, average of 10" in names
    assert len(fig.data[1].x) == 200 and fig.layout.xaxis2.dtick is None


def test_chart_hover_labels_are_escaped() -> None:
    fig = gv.chart_figure([_step(0, "<b>x</b>", 0.5)])
    assert fig.data[1].customdata[0] == "&lt;b&gt;x&lt;/b&gt;"


def test_alternatives_tables_mark_the_choice_and_add_it_when_outside_the_top() -> None:
    step = Step(**{**_step(0, " zebra", 0.01, token_id=42, alts=(_cand(1, " a", 0.6), _cand(2, " b", 0.3))).__dict__,
                   "rank": 777})
    before, after = gv.alternatives_tables(step)
    assert list(before["token"]) == ["␣a", "␣b", "␣zebra"]
    assert list(before["chosen"]) == ["", "", "✓"] and before["rank"].iloc[-1] == 777
    assert after["rank"].isna().iloc[-1]
    inside = _step(0, " a", 0.6, token_id=1, alts=(_cand(1, " a", 0.6), _cand(2, " b", 0.3)))
    before, _ = gv.alternatives_tables(inside)
    assert list(before["chosen"]) == ["✓", ""] and len(before) == 2


def test_json_keeps_the_samplers_beyond_the_basic_four() -> None:
    cfg = SamplingConfig(seed=3, repetition_penalty=1.3, logit_bias={5: -2.0}, dry_multiplier=0.8, xtc_probability=0.5,
                         order=("logit-bias", "penalties", "dry", "top-k", "xtc", "temperature"))
    run = gv.Run(**{**_hand_run(_step(0, "x", 0.9)).__dict__, "sampling": cfg})
    assert gv.parse_run(gv.run_to_json(run)).sampling == cfg
    # files saved before these fields existed replay with them off
    doc = json.loads(gv.run_to_json(run))
    del doc["settings"]["more"]
    assert gv.parse_run(json.dumps(doc)).sampling == SamplingConfig(seed=3)
    for bad, words in (({"typical_p": 2}, "typical_p must be a finite number in (0, 1], got 2"),
                       ({"nonsense": 1}, "settings.more has an unknown field 'nonsense'"),
                       ({"order": ["temperature", "banana"]}, "unknown stage 'banana' in order")):
        doc["settings"]["more"] = bad
        with pytest.raises(gv.RunFormatError, match=re.escape(words)):
            gv.parse_run(json.dumps(doc))


def test_settings_changes_and_labels(run: gv.Run) -> None:
    cfg = run.sampling
    assert gv.settings_changes(run, run.model_label, run.prompt, "raw", cfg, 6) == []
    assert gv.settings_changes(run, run.model_label, "x", "raw", cfg.replace(temperature=0.5, seed=8), 9) == \
        ["prompt", "temperature", "seed", "max new tokens"]
    # "chat" asked of a model without a template ran as raw: not a change while the sidebar still says chat.
    assert gv.settings_changes(run, run.model_label, run.prompt, "chat", cfg, 6, asked_mode="chat") == []
    assert gv.settings_changes(run, run.model_label, run.prompt, "chat", cfg, 6) == ["prompt mode"]
    assert gv.settings_changes(run, run.model_label, run.prompt, "raw", cfg.replace(repetition_penalty=1.2), 6) == \
        ["more samplers"]
    assert gv.settings_changes(run, run.model_label, run.prompt, "raw", cfg.replace(order="llama.cpp"), 6) == ["order"]


def test_status_notes(run: gv.Run) -> None:
    assert gv.status_note(run) == ("success", "Finished: reached the limit of 6 tokens.")
    kind, note = gv.status_note(run.with_status("stopped"))
    assert kind == "warning" and note.startswith("Stopped after 6 tokens")
    assert gv.status_note(run.with_status("interrupted"))[1].startswith("Interrupted after 6 tokens")
    eos = _hand_run(Step(**{**_step(0, "x", 0.9).__dict__, "finished": "eos"}))
    assert gv.status_note(eos)[1] == (
        "Finished: the model wrote its end-of-text token after 1 token, which means it considers the text "
        "complete. Switch on “Continue past the end-of-text token” to see what it writes next.")


def test_status_note_says_where_the_end_token_was_passed() -> None:
    """Issue 19 item 5: a run that went on past the end token says so in plain words."""
    run = dataclasses.replace(_hand_run(_step(0, "a", 0.5), _step(1, "<|im_end|>", 0.5, token_id=9), _step(2, "b", 0.5)),
                              eos_ids=(9,), stop_at_eos=False)
    kind, note = gv.status_note(run)
    assert note == ("Finished: reached the limit of 3 tokens. The model wrote its end-of-text token at token #2; "
                    "generation went on past it because “Continue past the end-of-text token” is on.")
    assert 'class="sl-tok sl-end" data-step="2"' in gv.tokens_html(run)
