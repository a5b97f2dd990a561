"""Share links (ui/share.py): round trips, and hostile or broken links that must give defaults + a message."""
from __future__ import annotations

import base64
import random
import string
import zlib

import pytest

from ui import share
from ui.controls import MODELS

STATE = {"model_label": "GPT-2 124M", "prompt_mode": "chat", "prompt": "Every effort moves you",
         "temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "seed": 5, "rep_penalty": 1.3,
         "dry_multiplier": 0.8, "logit_bias_text": "198:-5, 13:2", "order_preset": "custom",
         "order_custom": ["temperature", "top-k", "min-p"], "xtc_threshold": 0.1,
         "nt_steps": [{"kind": "sampled", "token_id": 8600}, {"kind": "chosen", "token_id": 3867}]}


def test_round_trip_next_token():
    params = share.to_params(STATE, MODELS, "")
    r = share.from_params(params, MODELS)
    assert r.problems == []
    for key in ("model_label", "prompt_mode", "prompt", "temperature", "top_k", "top_p", "min_p", "seed",
                "rep_penalty", "dry_multiplier", "logit_bias_text", "order_preset", "order_custom"):
        assert r.values[key] == STATE[key], key
    assert "xtc_threshold" not in params          # at its default: left out of the link
    assert r.appended == (("sampled", 8600), ("chosen", 3867))
    assert params["a"] == "s8600.c3867"


def test_round_trip_generate():
    state = {**STATE, "gen_max_saved": 60, "gen_max_tokens": 250, "gen_past_end_chat": True,
             "gen_run": object()}   # a run generated here (no .origin attribute: not a replay)
    params = share.to_params(state, MODELS, "generate")
    assert params["n"] == "250" and params["pe"] == "1" and params["run"] == "1" and "a" not in params
    r = share.from_params(params, MODELS)
    assert r.values["gen_max_saved"] == 250 and r.values["gen_max_tokens"] == 250
    assert r.values["gen_past_end_chat"] is True and r.generate
    assert "n" not in share.to_params(state, MODELS, "")   # the length belongs to Generate only


def test_long_prompt_is_compressed_and_comes_back():
    prompt = "Every effort moves you. " * 400 + "ünïcödé ✓\n<b>x</b>"
    params = share.to_params({**STATE, "prompt": prompt}, MODELS, "")
    assert "p" not in params and len(params["pz"]) < len(prompt) / 10
    assert share.from_params(params, MODELS).values["prompt"] == prompt


def test_incompressible_prompt_is_left_out():
    rng = random.Random(0)
    prompt = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(12_000))   # barely compresses
    assert share.pack_prompt(prompt) is None
    assert not {"p", "pz"} & set(share.to_params({**STATE, "prompt": prompt}, MODELS, ""))


def test_local_checkpoint_never_goes_into_a_link():
    params = share.to_params({**STATE, "model_label": "Local checkpoint…", "ckpt_path": "/etc/passwd"}, MODELS, "")
    assert "m" not in params and "/etc/passwd" not in str(params)
    r = share.from_params({"m": "local"}, MODELS)
    assert "model_label" not in r.values and r.problems == ["m is not one of the app's models"]


@pytest.mark.parametrize("params, problem", [
    ({"t": "abc"}, "t is not a number"),
    ({"t": "nan"}, "t must be between 0 and 5"),
    ({"t": "1e309"}, "t must be between 0 and 5"),
    ({"k": "-3"}, "k must be between 0 and 200000"),
    ({"seed": "1.5"}, "seed must be a whole number"),
    ({"mode": "<script>"}, "mode must be raw or chat"),
    ({"o": "custom", "oc": "temperature,evil"}, "oc is not a list of distinct stage names"),
    ({"o": "__class__"}, "o is not a known order"),
    ({"a": "s1.x2"}, "the appended tokens are not in the form s123.c456"),
    ({"a": "s１２"}, "the appended tokens are not in the form s123.c456"),   # full-width digits
    ({"a": ".".join(["s1"] * 201)}, "more than 200 appended tokens"),
    ({"pz": "!!!notbase64"}, "the compressed prompt is damaged"),
    ({"pz": base64.urlsafe_b64encode(b"not zlib").decode()}, "the compressed prompt is damaged"),
    ({"p": "a\x00b"}, "the prompt holds a NUL character"),
    ({"pe": "yes"}, "pe must be 0 or 1"),
])
def test_bad_values_give_defaults_and_a_message(params, problem):
    r = share.from_params({**params, "tp": "0.9"}, MODELS)
    assert r.problems == [problem]
    assert r.values.get("top_p") == 0.9             # the good values of the same link still apply
    assert set(r.values) <= {"top_p", "order_preset"}   # "custom" itself is a valid order
    assert r.message().startswith("This link had settings the app could not use")


def test_zip_bomb_is_refused_without_inflating_it():
    bomb = base64.urlsafe_b64encode(zlib.compress(b"a" * 4_000_000, 9)).decode().rstrip("=")
    assert len(bomb) < share.MAX_PROMPT_PARAM
    r = share.from_params({"pz": bomb}, MODELS)
    assert r.problems == ["the compressed prompt is damaged or too long"] and "prompt" not in r.values


def test_oversized_link_is_ignored_whole():
    r = share.from_params({"t": "0.5", "p": "x" * 9_000}, MODELS)
    assert r.values == {} and "longer than 8,000 characters" in r.problems[0]


def test_unknown_parameters_are_counted_not_quoted():
    r = share.from_params({"<img src=x onerror=alert(1)>": "1", "t": "0.5"}, MODELS)
    assert r.values == {"temperature": 0.5}
    assert r.problems == ["1 unknown parameter ignored"] and "<img" not in r.message()


def test_present_flag():
    assert share.from_params({"present": "1"}, MODELS).present
    assert share.to_params({**STATE, "present": True}, MODELS, "")["present"] == "1"
    assert "present" not in share.to_params(STATE, MODELS, "")
