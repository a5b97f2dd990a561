"""The sidebar's "More samplers" and order picker: pure helpers, then the whole app under AppTest."""
from __future__ import annotations

import pytest

import core
from ui import controls
from ui.format import settings_label


def test_parse_logit_bias():
    assert controls.parse_logit_bias("") == ()
    assert controls.parse_logit_bias(" 198:-5, 13:2.5 ;7:1") == ((198, -5.0), (13, 2.5), (7, 1.0))
    for bad in ("198", "x:1", "5:abc", "1.5:2"):
        with pytest.raises(ValueError, match="is not token id:value"):
            controls.parse_logit_bias(bad)


def test_current_settings_reads_more_samplers_and_order():
    state = {"rep_penalty": 1.3, "presence_penalty": 0.5, "typical_p": 0.9, "logit_bias_text": "5:-2",
             "order_preset": "llama.cpp", "dry_multiplier": 0.8, "penalty_last_n": 64}
    s = controls.current_settings(state)
    assert s.error is None
    cfg = s.sampling
    assert (cfg.repetition_penalty, cfg.presence_penalty, cfg.typical_p, cfg.dry_multiplier) == (1.3, 0.5, 0.9, 0.8)
    assert cfg.logit_bias == ((5, -2.0),) and cfg.order == "llama.cpp" and cfg.penalty_last_n == 64
    assert cfg.stages[-1] == "temperature"


def test_custom_order_in_picked_order():
    state = {"order_preset": "custom", "order_custom": ["top-k", "temperature", "top-p", "min-p"], "top_k": 5}
    assert controls.current_settings(state).sampling.order == ("top-k", "temperature", "top-p", "min-p")


@pytest.mark.parametrize("state, words", [
    ({"logit_bias_text": "oops"}, "'oops' is not token id:value"),
    # a custom order without a stage whose setting is on: core's message, never an exception
    ({"order_preset": "custom", "order_custom": ["temperature"], "top_k": 5}, "order leaves out 'top-k'"),
    ({"order_preset": "custom", "order_custom": ["temperature", "top-k"], "rep_penalty": 1.2},
     "order leaves out 'penalties'"),
])
def test_bad_setting_is_a_message_and_the_basic_four_still_apply(state, words):
    s = controls.current_settings({**state, "temperature": 0.7})
    assert words in s.error
    assert s.sampling == core.SamplingConfig(temperature=0.7, top_k=state.get("top_k") or None)


def test_rules_text_names_the_engine():
    assert "keeps exactly k tokens" in controls.rules_text("llama.cpp")
    assert "tied with the k-th logit" in controls.rules_text("transformers")
    assert controls.rules_text(("temperature", "top-k")).startswith("A custom order follows transformers' rules")


def test_bias_problem_names_the_id():
    cfg = core.SamplingConfig(logit_bias={70000: 1.0})
    assert "token id 70000 is outside this model's vocabulary (ids 0 to 49,151)" in controls.bias_problem(cfg, 49152)
    assert controls.bias_problem(cfg, 80000) is None


def test_settings_label_knows_the_new_fields():
    cfg = core.SamplingConfig(temperature=0.8, repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3,
                              penalty_last_n=64, logit_bias={5: 1.0, 7: -2.0}, typical_p=0.9, top_n_sigma=1.5,
                              xtc_probability=0.5, dry_multiplier=0.8, order="llama.cpp", seed=3)
    assert settings_label(cfg, seed=True) == (
        "T = 0.8 · rep 1.2 · presence 0.5 · frequency 0.3 · penalties see the last 64 · bias on 2 tokens · "
        "typical-p 0.9 · top-nσ 1.5 · XTC 0.1 at 0.5 · DRY ×0.8 · llama.cpp order · seed 3")
    assert settings_label(core.SamplingConfig(order=("temperature", "top-k"))) == (
        "T = 1 · no filters · order: temperature → top-k")


# --- the whole app -------------------------------------------------------------------------------

def plain(markdown: str) -> str:
    """Undo plain_text_for_markdown's backslashes."""
    return markdown.replace("\\", "")


def _pipeline(app) -> str:
    return next(m.value for m in app.markdown if "| stage |" in m.value)


def test_more_samplers_and_order_reach_the_pipeline(open_page):
    app = open_page("next_token.py")
    assert any(e.label == "More samplers" for e in app.expander)
    app.slider(key="rep_penalty").set_value(1.5)
    app.selectbox(key="order_preset").set_value("llama.cpp").run()
    assert not app.exception and not app.error
    rows = [line.split("|")[1].strip(" *") for line in _pipeline(app).splitlines()[2:]]
    assert rows[0] == "raw logits" and rows[1] == "penalties: repetition 1.5"
    assert rows[-1] == ":gray[temperature 1 (off)]"   # llama.cpp: temperature last (off at 1: grey)
    captions = " ".join(c.value for c in app.sidebar.caption)
    assert "keeps exactly k tokens" in captions and "xtc → temperature" in captions
    # the prompt's own tokens are in the history: a repeated prompt token is marked as moved
    table = next(d.value for d in app.dataframe if "status" in d.value.columns)
    assert table["status"].str.contains("penalty↓").any()


def test_custom_order_and_a_bad_setting_show_messages_not_tracebacks(open_page):
    app = open_page("next_token.py")
    app.selectbox(key="order_preset").set_value("custom").run()
    app.multiselect(key="order_custom").set_value(["top-k", "temperature", "top-p", "min-p"]).run()
    assert not app.exception and not app.error
    assert "top-k → temperature → top-p → min-p" in " ".join(c.value for c in app.sidebar.caption)
    app.text_input(key="logit_bias_text").set_value("198:-5, banana").run()
    assert not app.exception
    assert "'banana' is not token id:value" in plain(app.sidebar.error[0].value)
    assert "only temperature, top-k, top-p and min-p" in plain(app.warning[0].value)
    # the custom order above has no logit-bias stage: core says so
    app.text_input(key="logit_bias_text").set_value("999999:3").run()
    assert "order leaves out 'logit-bias'" in plain(app.sidebar.error[0].value)
    app.selectbox(key="order_preset").set_value("transformers").run()
    assert not app.exception and not app.sidebar.error
    assert "token id 999999 is outside this model's vocabulary" in plain(app.error[0].value)


def test_dry_breakers_text_round_trip_and_errors():
    assert controls.breakers_text(core.samplers.DEFAULT_DRY_BREAKERS) == r'\n, :, ", *'
    for breakers in [core.samplers.DEFAULT_DRY_BREAKERS, ("a, b", " x ", "\\", ",", "  ", "\t"), ()]:
        assert controls.parse_breakers(controls.breakers_text(breakers)) == breakers
    assert controls.parse_breakers(r" \n ,, :,  ") == ("\n", ":")           # spaces around, empty entries dropped
    with pytest.raises(ValueError, match=r"unknown escape '\\\\q'"):
        controls.parse_breakers(r"\q")
    state = {"dry_multiplier": 0.8, "dry_breakers_text": r"\n, the"}
    assert controls.current_settings(state).sampling.dry_sequence_breakers == ("\n", "the")
    assert "unknown escape" in controls.current_settings({"dry_breakers_text": "\\"}).error


def test_more_samplers_with_a_prefix_reads_that_column_only():
    state = {"c1_rep_penalty": 1.4, "rep_penalty": 1.1, "c1_logit_bias_text": "3:1", "c1_order_preset": "vllm"}
    fields = controls.more_samplers(state, "c1_")
    assert (fields["repetition_penalty"], fields["logit_bias"], fields["order"]) == (1.4, ((3, 1.0),), "vllm")
    assert controls.more_samplers(state)["repetition_penalty"] == 1.1
    assert controls.logit_bias_text(((198, -5.0), (13, 2.5))) == "198:-5, 13:2.5"
