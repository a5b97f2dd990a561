"""Share links: the app's state as URL query parameters, and back.

Pure functions (no Streamlit import): `to_params` writes session-state values as short query
parameters; `from_params` reads them back, checking every value against the widget's own range, so a
hand-edited or hostile link gives defaults and a plain message, never an exception. The page itself is
the URL path (Streamlit's own routing), so a copied address names it.
"""
from __future__ import annotations

import base64
import binascii
import math
import zlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np

import core
from ui import next_token_view as view
from ui.controls import DEFAULT_PROMPT, DEFAULT_SEED, MORE, ORDER_CHOICES

MAX_QUERY_CHARS = 8_000     # a link longer than this is refused whole (browsers and proxies cut long URLs)
MAX_PROMPT_CHARS = 20_000   # a prompt, once decompressed
PLAIN_PROMPT_CHARS = 200    # shorter prompts stay readable in the link; longer ones are compressed
MAX_PROMPT_PARAM = 6_000    # a compressed prompt longer than this is left out of the link
MAX_APPENDED = 200          # appended tokens a link may carry
MAX_BIAS_CHARS = 500


@dataclass(frozen=True)
class Number:
    """One numeric widget: its name in the link, its session-state key, its range and its default."""

    url: str
    key: str
    low: float
    high: float
    default: float
    integer: bool = False

    def parse(self, text: str) -> float | int:
        """The value, or ValueError saying what was wrong (never quoting more than a few characters)."""
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.url} is not a number") from None
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ValueError(f"{self.url} must be between {self.low:g} and {self.high:g}")
        if self.integer:
            if value != int(value):
                raise ValueError(f"{self.url} must be a whole number")
            return int(value)
        return value

    def show(self, value: float | int) -> str:
        return str(int(value)) if self.integer else f"{float(value):g}"


# The ranges are the sidebar widgets' own (ui/controls.py render_sidebar and _more_samplers).
NUMBERS: tuple[Number, ...] = (
    Number("t", "temperature", 0.0, 5.0, 1.0),
    Number("k", "top_k", 0, 200_000, 0, integer=True),
    Number("tp", "top_p", 0.01, 1.0, 1.0),
    Number("mp", "min_p", 0.0, 0.99, 0.0),
    Number("seed", "seed", 0, 2**31 - 1, DEFAULT_SEED, integer=True),
    Number("rp", "rep_penalty", 1.0, 2.0, 1.0),
    Number("pp", "presence_penalty", -2.0, 2.0, 0.0),
    Number("fp", "frequency_penalty", -2.0, 2.0, 0.0),
    Number("pn", "penalty_last_n", -1, 100_000, -1, integer=True),
    Number("typ", "typical_p", 0.01, 1.0, 1.0),
    Number("ns", "top_n_sigma", 0.0, 5.0, 0.0),
    Number("xp", "xtc_probability", 0.0, 1.0, 0.0),
    Number("xt", "xtc_threshold", 0.0, 0.5, 0.1),
    Number("dm", "dry_multiplier", 0.0, 2.0, 0.0),
    Number("db", "dry_base", 1.0, 3.0, 1.75),
    Number("dl", "dry_allowed_length", 0, 50, 2, integer=True),
    Number("n", "gen_max_saved", 1, 1000, 60, integer=True),   # Generate: max new tokens
)
ALWAYS = {"t", "k", "tp", "mp", "seed"}   # written even at their defaults: a reader sees the basic settings
PAGE_ONLY = {"n": "generate"}             # parameters that belong to one page (URL path)
assert {n.key for n in NUMBERS} >= set(MORE), "every More-samplers widget needs a link parameter"
KNOWN = {n.url for n in NUMBERS} | {"m", "mode", "p", "pz", "lb", "o", "oc", "a", "pe", "run", "present"}


@dataclass
class Restored:
    """What a link asks for: session-state values to set, plus what the pages do with it."""

    values: dict[str, object] = field(default_factory=dict)
    appended: tuple[tuple[str, int], ...] = ()   # Next token: ("sampled" | "chosen", token id) in order
    generate: bool = False                       # Generate: run it on arrival (same seed, same text)
    present: bool = False
    problems: list[str] = field(default_factory=list)

    def message(self) -> str | None:
        """One plain sentence for the page (parameter names only: never the link's own text)."""
        if not self.problems:
            return None
        return ("This link had settings the app could not use, so their defaults apply: "
                + "; ".join(self.problems) + ".")


# --- the prompt: plain when short, zlib + base64url when long ------------------------------------

def pack_prompt(prompt: str) -> tuple[str, str] | None:
    """(parameter, value) for the prompt, or None when even compressed it is too long for a link."""
    if len(prompt) <= PLAIN_PROMPT_CHARS:
        return "p", prompt
    packed = base64.urlsafe_b64encode(zlib.compress(prompt.encode("utf-8"), 9)).decode("ascii").rstrip("=")
    return ("pz", packed) if len(packed) <= MAX_PROMPT_PARAM else None


def unpack_prompt(packed: str) -> str:
    """The prompt from a `pz` value; ValueError for anything that is not our own compressed UTF-8, or that
    would decompress past MAX_PROMPT_CHARS (a zip bomb stops there, it is never inflated whole)."""
    if len(packed) > MAX_PROMPT_PARAM:
        raise ValueError("the compressed prompt is too long")
    try:
        data = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, 4 * MAX_PROMPT_CHARS + 1)
        if len(raw) > 4 * MAX_PROMPT_CHARS or inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("the compressed prompt is damaged or too long")
        text = raw.decode("utf-8")
    except (binascii.Error, zlib.error, UnicodeDecodeError):
        raise ValueError("the compressed prompt is damaged") from None
    return _checked_prompt(text)


def _checked_prompt(text: str) -> str:
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS:,} characters")
    if "\x00" in text:
        raise ValueError("the prompt holds a NUL character")
    return text


# --- appended tokens: "s8600.c3867" = sampled 8600, then chose 3867 -------------------------------

KINDS = {"s": "sampled", "c": "chosen"}


def pack_appended(steps: Sequence[Mapping]) -> str:
    letter = {v: k for k, v in KINDS.items()}
    return ".".join(f"{letter[d['kind']]}{int(d['token_id'])}" for d in steps)


def unpack_appended(text: str) -> tuple[tuple[str, int], ...]:
    """ValueError for anything else than up to MAX_APPENDED entries of s/c + a token id."""
    parts = text.split(".")
    if len(parts) > MAX_APPENDED:
        raise ValueError(f"more than {MAX_APPENDED} appended tokens")
    out = []
    for part in parts:
        kind, digits = part[:1], part[1:]
        if kind not in KINDS or not digits.isascii() or not digits.isdigit() or len(digits) > 7:
            raise ValueError("the appended tokens are not in the form s123.c456")
        out.append((KINDS[kind], int(digits)))
    return tuple(out)


# --- the whole state ---------------------------------------------------------------------------

def to_params(state: Mapping, models: Mapping[str, str], page: str) -> dict[str, str]:
    """The query parameters for `state` on `page` ("" = Next token, "generate", ...).

    models: widget label -> source (ui.controls' choices). A local checkpoint is never put in a link: its
    path means nothing on another machine, and a link must not make the app open a file."""
    out: dict[str, str] = {}
    source = models.get(state.get("model_label", ""))
    if source and source != "local":
        out["m"] = source
    if state.get("prompt_mode", "raw") != "raw":
        out["mode"] = str(state["prompt_mode"])
    packed = pack_prompt(str(state.get("prompt", DEFAULT_PROMPT)))
    if packed:
        out[packed[0]] = packed[1]
    for num in NUMBERS:
        if PAGE_ONLY.get(num.url, page) != page or num.key not in state:
            if num.url in ALWAYS:
                out[num.url] = num.show(num.default)
            continue
        # Generate's own widget holds the newest value on the run right after it changed
        value = state.get("gen_max_tokens", state[num.key]) if num.url == "n" else state[num.key]
        if num.url in ALWAYS or value != num.default:
            out[num.url] = num.show(value)
    if bias := str(state.get("logit_bias_text", "")).strip():
        out["lb"] = bias[:MAX_BIAS_CHARS]
    preset = state.get("order_preset", "transformers")
    if preset != "transformers":
        out["o"] = str(preset)
    if preset == "custom":
        out["oc"] = ",".join(state.get("order_custom", ()))
    if page == "" and (steps := state.get(view.STEPS_KEY)):
        out["a"] = pack_appended(steps[:MAX_APPENDED])
    if page == "generate":
        mode = state.get("prompt_mode", "raw")
        past_end = state.get(f"gen_past_end_{mode}", mode == "raw")
        if past_end != (mode == "raw"):
            out["pe"] = "1" if past_end else "0"
        if state.get("gen_run") is not None and getattr(state["gen_run"], "origin", None) is None:
            out["run"] = "1"
    if state.get("present"):
        out["present"] = "1"
    return out


def from_params(params: Mapping[str, str], models: Mapping[str, str]) -> Restored:
    """What a link asks for, each value checked; a bad value is skipped (its default applies) and named
    in `problems`. Never raises for any input."""
    r = Restored()
    if sum(len(k) + len(v) + 2 for k, v in params.items()) > MAX_QUERY_CHARS:
        r.problems.append(f"the link is longer than {MAX_QUERY_CHARS:,} characters, so none of it was used")
        return r
    unknown = sorted(k for k in params if k not in KNOWN)
    if unknown:
        r.problems.append(f"{len(unknown)} unknown parameter{'s' if len(unknown) > 1 else ''} ignored")
    by_source = {src: label for label, src in models.items() if src != "local"}
    if "m" in params:
        if params["m"] in by_source:
            r.values["model_label"] = by_source[params["m"]]
        else:
            r.problems.append("m is not one of the app's models")
    if "mode" in params:
        if params["mode"] in ("raw", "chat"):
            r.values["prompt_mode"] = params["mode"]
        else:
            r.problems.append("mode must be raw or chat")
    try:
        if "pz" in params:
            r.values["prompt"] = unpack_prompt(params["pz"])
        elif "p" in params:
            r.values["prompt"] = _checked_prompt(params["p"])
    except ValueError as e:
        r.problems.append(str(e))
    for num in NUMBERS:
        if num.url in params:
            try:
                r.values[num.key] = num.parse(params[num.url])
                if num.url == "n":
                    r.values["gen_max_tokens"] = r.values[num.key]
            except ValueError as e:
                r.problems.append(str(e))
    if "lb" in params:
        if len(params["lb"]) <= MAX_BIAS_CHARS:
            r.values["logit_bias_text"] = params["lb"]
        else:
            r.problems.append(f"lb is longer than {MAX_BIAS_CHARS} characters")
    _order(params, r)
    if "a" in params:
        try:
            r.appended = unpack_appended(params["a"])
        except ValueError as e:
            r.problems.append(str(e))
    if "pe" in params:
        if params["pe"] in ("0", "1"):
            mode = r.values.get("prompt_mode", "raw")
            r.values[f"gen_past_end_{mode}"] = params["pe"] == "1"
        else:
            r.problems.append("pe must be 0 or 1")
    r.generate = params.get("run") == "1"
    r.present = params.get("present") == "1"
    return r


def _order(params: Mapping[str, str], r: Restored) -> None:
    if "o" not in params:
        return
    if params["o"] not in ORDER_CHOICES:
        r.problems.append("o is not a known order")
        return
    r.values["order_preset"] = params["o"]
    if params["o"] == "custom":
        stages = [s for s in params.get("oc", "").split(",") if s]
        if all(s in core.STAGE_NAMES for s in stages) and len(set(stages)) == len(stages):
            r.values["order_custom"] = stages
        else:
            r.problems.append("oc is not a list of distinct stage names")


# --- applying a link's appended tokens on the Next-token page --------------------------------------

def replay_appended(state: MutableMapping, wanted: Sequence[tuple[str, int]], context: tuple,
                    prompt_ids: Sequence[int], logits_of: Callable[[tuple[int, ...]], np.ndarray],
                    cfg: core.SamplingConfig, dry_breakers: tuple[tuple[int, ...], ...] | None,
                    tokenizer: core.Tokenizer) -> str | None:
    """Append a link's tokens one by one, each judged under the settings as the page would have (so the
    history reads as it did for the sender). Returns a plain message if a token id is not in this model's
    vocabulary; the tokens before it stay."""
    view.sync_context(state, context)
    view.reset(state)
    for kind, token_id in wanted:
        a = view.current_analysis(state, context, prompt_ids, logits_of, cfg, dry_breakers)
        if token_id >= a.vocab:
            return (f"The link's appended token id {token_id} is outside this model's vocabulary "
                    f"(0 to {a.vocab - 1:,}): the tokens from there on were left out.")
        view.append_pick(state, view.make_pick(a, tokenizer, token_id, kind))
    return None
