"""The Generate page in AppTest with the tiny random GPT-2: streaming result, seeds, stop, export/import."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core
import ui.controls
from ui import bridge
from ui import branches
from ui import generate_view as gv
from ui import token_picker

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def at(open_page) -> AppTest:
    """A fresh app on the Generate page, sidebar on the tiny model, max 6 new tokens."""
    app = open_page("generate.py", timeout=120)
    assert not app.exception, app.exception
    app.number_input(key="gen_max_tokens").set_value(6).run()
    return app


def _generate(at: AppTest, key: str = "gen_generate") -> gv.Run:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at.session_state["gen_run"]


def _picker(at: AppTest, n: int = 1, which: int = 0) -> dict:
    """The data of the clickable text (ui.token_picker): n of them on the page, the which-th one."""
    texts = at.get("bidi_component")
    assert len(texts) == n
    return json.loads(texts[which].proto.json)


def test_generate_shows_tokens_chart_inspector_and_download(at: AppTest) -> None:
    assert "Press **Generate**" in at.info[0].value
    run = _generate(at)
    assert run.status == "done" and len(run.steps) == 6 and run.text
    assert [s.value for s in at.success] == ["Finished: reached the limit of 6 tokens."]
    # Buttons are idle again after the run: Generate enabled, Stop disabled.
    assert not at.button(key="gen_generate").disabled and at.button(key="gen_stop").disabled
    text = _picker(at)
    assert len(text["tokens"]) == 6 and text["copy"] == run.text
    assert text["tokens"][0]["t"] == gv.token_display(run.steps[0].text)
    assert all(re.match(r"#\d", t["tip"]) for t in text["tokens"])
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    chosen = next(t for t in spec["data"] if t["name"].startswith("chosen token's probability"))
    assert chosen["x"] == [1, 2, 3, 4, 5, 6]
    assert chosen["y"] == pytest.approx([s.prob for s in run.steps])
    assert any("entropy" in t["name"] for t in spec["data"])
    inspect = at.selectbox(key="gen_inspect_1")
    assert len(inspect.options) == 6 and inspect.options[0].startswith("#1 ")
    inspect.set_value(3).run()
    before = at.dataframe[0].value
    assert (before["chosen"] == "✓").sum() == 1
    assert before.loc[before["chosen"] == "✓", "token"].iloc[0] == gv.show_token(run.steps[3].text)
    download = at.get("download_button")[0].proto
    assert download.label == "Download this run (JSON)"
    summary = [t.value for t in at.text]
    assert any("seed 123" in t and "gpt2-tiny" in t for t in summary)


def test_same_seed_same_text_other_seed_other_text(at: AppTest) -> None:
    first = _generate(at).text
    again = _generate(at).text
    assert first == again
    at.number_input(key="seed").set_value(124).run()
    other = _generate(at)
    assert other.sampling.seed == 124
    assert other.text != first        # T=1 over 50,257 near-uniform tokens: a collision is vanishingly rare
    assert any("seed 124" in t.value for t in at.text)


def test_new_seed_button_changes_the_sidebar_seed(at: AppTest) -> None:
    run = _generate(at, "gen_reroll")
    seed = at.number_input(key="seed").value
    assert run.sampling.seed == seed and len(run.steps) == 6


def test_changed_settings_keep_the_run_and_say_so(at: AppTest) -> None:
    run = _generate(at)
    at.slider(key="temperature").set_value(0.5).run()
    assert at.session_state["gen_run"] == run                   # no new generation on a slider move
    assert any("settings have changed since this run (temperature)" in c.value for c in at.caption)


def test_chat_mode_on_a_model_without_a_template_runs_raw(at: AppTest) -> None:
    at.radio(key="prompt_mode").set_value("chat").run()
    run = _generate(at)
    assert run.prompt_mode == "raw" and len(run.steps) == 6
    assert not any("settings have changed" in c.value for c in at.caption)
    assert any("has no chat template" in c.value for c in at.caption)


def test_interrupted_run_keeps_tokens_with_a_stopped_note(at: AppTest) -> None:
    run = _generate(at)
    partial = gv.Run(**{**run.__dict__, "steps": run.steps[:3]}).with_status("running")
    # A Stop click reruns the script mid-generation: what it leaves behind is a "running" run.
    at.session_state["gen_run"] = partial
    at.session_state[gv.COMMAND_KEY] = "stop"
    at.run()
    assert not at.exception
    assert at.warning[0].value.startswith("Stopped after 3 tokens")
    assert len(_picker(at)["tokens"]) == 3
    assert at.session_state["gen_run"].status == "stopped"
    at.session_state["gen_run"] = partial                       # any other rerun: "interrupted"
    at.run()
    assert at.warning[0].value.startswith("Interrupted after 3 tokens")


def _replay(exported: bytes, name: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """A fresh session that replays a run file with no model to load."""
    def no_model(*args, **kwargs):
        raise AssertionError("replay must not load a model")

    monkeypatch.setattr(bridge, "get_model", no_model)
    fresh = AppTest.from_file(APP, default_timeout=120)
    fresh.run()
    fresh.switch_page("app_pages/generate.py").run()
    fresh.file_uploader(key="gen_upload").upload(name, exported, "application/json").run()
    assert not fresh.exception and not fresh.error
    return fresh


def test_export_then_replay_without_the_model(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _generate(at)
    html, spec = _picker(at), json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    fresh = _replay(gv.run_to_json(run).encode("utf-8"), "my-run.json", monkeypatch)
    assert fresh.session_state["gen_run"] == run
    assert _picker(fresh) == html
    assert json.loads(fresh.get("plotly_chart")[0].proto.spec)["data"] == spec
    assert any(t.value.startswith("Replayed from my-run.json") for t in fresh.text)


@pytest.mark.parametrize("data, message", [
    (b"{not json", r"not valid JSON"),
    (b'{"format": "sampling-lab-run", "version": 1, "steps": []}', r"missing field 'settings'"),
    (b"\x89PNG\r\n", r"not UTF\-8"),
])
def test_malformed_upload_shows_an_error_not_an_exception(at: AppTest, data: bytes, message: str) -> None:
    at.file_uploader(key="gen_upload").upload("bad.json", data, "application/json").run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and r"bad\.json" in at.error[0].value
    assert "gen_run" not in at.session_state or at.session_state["gen_run"] is None


def test_error_about_a_hostile_file_is_not_markdown(at: AppTest) -> None:
    doc = b'{"format": "sampling-lab-run", "version": 1, "settings": {"temperature": "![x](http://127.0.0.1:9/l)"}}'
    at.file_uploader(key="gen_upload").upload("![y](http://127.0.0.1:9/n).json", doc, "application/json").run()
    assert not at.exception and len(at.error) == 1
    message = at.error[0].value
    assert r"settings\.temperature must be a finite number \>= 0" in message
    assert "![" not in message and "](" not in message             # no image or link syntax survives
    assert r"\!\[x\]\(http\://127\.0\.0\.1\:9/l\)" in message


def test_hostile_prompt_is_escaped(at: AppTest) -> None:
    at.text_area(key="prompt").set_value('<script>alert(1)</script> ![x](http://127.0.0.1:9/leak) "q"').run()
    _generate(at)
    # the clickable text gets plain strings and sets them with textContent: nothing is parsed as HTML
    assert _picker(at)["prompt"] == '<script>alert(1)</script> ![x](http://127.0.0.1:9/leak) "q"'
    assert "innerHTML" not in token_picker._JS and "textContent = data.prompt" in token_picker._JS


def _greedy_first_token(at: AppTest) -> int:
    at.slider(key="temperature").set_value(0.0).run()
    return _generate(at).steps[0].token_id


def test_raw_mode_continues_past_the_end_token_by_default_and_says_so(at: AppTest, monkeypatch) -> None:
    """Issue 19 item 5: an instruct model's end token after 3 tokens must not end the first impression."""
    end = _greedy_first_token(at)
    tiny = bridge.get_model("gpt2-tiny")
    # A copy whose end-of-text token is the first greedy token (the shared cached model stays as it is).
    ending = dataclasses.replace(tiny, tokenizer=dataclasses.replace(tiny.tokenizer, eos_ids=frozenset({end})))
    monkeypatch.setattr(bridge, "get_model", lambda source, _progress=None: ending)
    assert at.toggle(key="gen_past_end_raw").value is True
    run = _generate(at)
    assert len(run.steps) == 6 and not run.stop_at_eos and run.end_tokens[0] == 0
    assert at.success[0].value.startswith("Finished: reached the limit of 6 tokens. The model wrote its "
                                          "end-of-text token at token #1")
    assert "generation went on past it" in at.success[0].value
    at.toggle(key="gen_past_end_raw").set_value(False).run()
    run = _generate(at)
    assert len(run.steps) == 1 and run.finished == "eos"
    assert at.success[0].value.startswith("Finished: the model wrote its end-of-text token after 1 token, which "
                                          "means it considers the text complete.")


def test_chat_mode_stops_at_the_end_token_and_hints_at_a_lower_temperature(at: AppTest) -> None:
    at.radio(key="prompt_mode").set_value("chat").run()
    assert at.toggle(key="gen_past_end_chat").value is False
    assert any("try 0.2–0.5" in c.value for c in at.caption)
    at.slider(key="temperature").set_value(0.4).run()
    assert not any("try 0.2–0.5" in c.value for c in at.caption)


def test_a_click_with_a_sidebar_edit_generates_with_the_new_settings(at: AppTest) -> None:
    """Issue 19 item 10: the click acts on the sidebar as it is now, and each run replaces the last."""
    first = _generate(at)
    at.slider(key="temperature").set_value(0.0)          # not run: the edit arrives with the click
    second = _generate(at)
    assert second.sampling.temperature == 0.0 and second.number == first.number + 1
    assert first.status == "done" and len(first.steps) == 6, "the earlier run object is never mutated"
    assert at.session_state[gv.COMMAND_KEY] is None


def test_branch_from_an_alternative_side_by_side_with_its_tree_exported_and_replayed(
        at: AppTest, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _generate(at)                                   # 6 tokens, raw mode: goes on past the end token
    at.selectbox(key="gen_inspect_1").set_value(2).run()  # what a click on token #3 does
    choice = branches.alternatives(run.steps[2])[1]
    at.selectbox(key="gen_alt_1_0_2").set_value(1).run()
    at.button(key="gen_branch").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    run = at.session_state["gen_run"]
    (br,) = run.branches
    assert (br.parent, br.at, br.choice.token_id, br.choice.prob) == (0, 2, choice.token_id, choice.prob)
    assert [s.index for s in br.steps] == [2, 3, 4, 5]     # the run's limit: 6 tokens in all
    # the continuation is what the model generates alone from the prompt + the branch's first 3 tokens
    ids = tiny.encode_prompt(run.prompt) + [s.token_id for s in run.steps[:2]] + [choice.token_id]
    alone = list(core.generate(tiny, ids, run.sampling, 3, top_n=gv.TOP_N, stop_at_eos=False))
    assert [s.token_id for s in br.steps[1:]] == [s.token_id for s in alone]
    assert [s.prob for s in br.steps[1:]] == [s.prob for s in alone]
    # original and branch side by side, the split marked in both; the tree names the edge's probability
    left, right = _picker(at, 2, 0), _picker(at, 2, 1)
    assert left["copy"] == run.text and right["copy"] == branches.text_of(run.path(1))
    assert left["split"] == right["split"] == 2
    assert at.selectbox(key="gen_view_1").value == 1
    tree = next(h.proto.body for h in at.get("html") if "sl-tree" in h.proto.body)
    assert "branch 1</b> from the original at #3" in tree and gv.fmt_prob(choice.prob) in tree
    # the same alternative again shows the branch instead of making a second one
    at.selectbox(key="gen_view_1").set_value(0).run()
    at.selectbox(key="gen_inspect_1").set_value(2).run()
    at.selectbox(key="gen_alt_1_0_2").set_value(1).run()
    assert at.button(key="gen_show_branch").label == "Show branch 1"
    # the tree travels in the run file and comes back on replay
    exported = gv.run_to_json(run).encode("utf-8")
    assert gv.parse_run(exported) == run
    fresh = _replay(exported, "tree.json", monkeypatch)
    assert fresh.session_state["gen_run"].branches == run.branches
    assert [o for o in fresh.selectbox(key="gen_view_1").options] == ["original (6 tokens)",
                                                                     branches.label(run.steps, run.branches, 1)]


def test_a_full_model_says_busy_with_how_many_are_ahead(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """core.Busy from the shared scheduler (every row taken, queue full): a warning with the count
    ahead, buttons idle again, no traceback; the next Generate, with room, runs."""
    import core

    def full(self, rows: int = 1):
        raise core.Busy(30, 2, "the queue is full")

    with monkeypatch.context() as m:
        m.setattr(core.StepScheduler, "join", full)
        at.button(key="gen_generate").click().run()
    assert not at.exception and not at.error
    assert at.session_state["gen_run"].status == "busy"
    assert [w.value for w in at.warning] == [
        "The model is busy with other people's generations right now (32 requests ahead of you), so nothing "
        "was generated. Press Generate again in a moment."]
    assert not at.button(key="gen_generate").disabled and at.button(key="gen_stop").disabled
    run = _generate(at)
    assert run.status == "done" and len(run.steps) == 6
