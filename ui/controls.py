"""The shared sidebar (model, prompt, sampling settings) and the helpers every page uses to read it."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import core
from core.engines import EngineError
from core.engines.llamacpp import LlamaCppServerError
from ui import bridge
from ui.format import plain_text_for_markdown
from ui.model_view import HUB_MODELS, PUBLIC_BUILTIN, BusyLoadingError, load_error_message, public_choices

MODELS: dict[str, str] = {
    "SmolLM2-135M-Instruct (bundled)": "smollm2",
    "GPT-2 124M": "gpt2",
    "GPT-2 355M (medium)": "gpt2-medium",
    "GPT-2 774M (large)": "gpt2-large",
    "GPT-2 1558M (XL)": "gpt2-xl",
    "SmolLM2 on llama.cpp (4-bit, fast)": "llamacpp:smollm2",
    "Inference server (OpenAI-compatible)…": "server",
    "Local checkpoint…": "local",
}
SERVER_HELP = ("The address of an OpenAI-compatible server with log-probabilities: llama.cpp's server, or "
               "vLLM started with --max-logprobs -1 (else it reports only its top 20). An API key is read "
               "from SAMPLING_LAB_API_KEY or OPENAI_API_KEY on the machine that runs this app.")
# Tests and demos can inject a model (e.g. "gpt2-tiny") without touching the UI code.
TEST_MODEL = os.environ.get("SAMPLING_LAB_TEST_MODEL")
DEFAULT_PROMPT = "Every effort moves you"
DEFAULT_SEED = 123


@dataclass(frozen=True)
class Settings:
    """What the sidebar says, as plain values."""

    model: str | None        # a source for bridge.get_model; None while a local checkpoint is not chosen yet
    model_label: str
    mode: str                # "raw" or "chat"
    prompt: str
    sampling: core.SamplingConfig
    model_name: str = ""     # how the user knows the model: the uploaded file's name, the typed path, or the label
    error: str | None = None  # a sampler setting core refused (then `sampling` holds the basic four only)


def _public_choices() -> tuple[dict[str, str] | None, str | None]:
    """(public_choices, None), or the built-in models and why the operator's engine list was refused."""
    try:
        return public_choices(os.environ), None
    except ValueError as e:  # a malformed engine list: render_sidebar says so once, the built-in models stay
        return dict(PUBLIC_BUILTIN), str(e)


def model_choices() -> dict[str, str]:
    """The sidebar's models: all of MODELS locally, only the listed ones on a public server."""
    public, _ = _public_choices()
    models = MODELS if public is None else public
    if TEST_MODEL:
        return {f"Test model ({TEST_MODEL})": TEST_MODEL, **models}
    return models


def _local_checkpoint(state: Mapping) -> tuple[str | None, str, str | None]:
    """(source for bridge.get_model, the name the user gave it, an error about the upload or None)."""
    upload = state.get("ckpt_upload")
    if upload is not None:
        try:
            return bridge.save_upload(upload.name, upload.getvalue()), upload.name, None
        except (core.WeightsError, OSError) as e:
            return None, upload.name, str(e)
    path = (state.get("ckpt_path") or "").strip()
    return path or None, path, None


def current_settings(state: Mapping | None = None) -> Settings:
    """The sidebar's values as they are now, read from session state by widget key.

    The sidebar uses it after drawing its widgets; callbacks use it too, so a click that arrives with
    a sidebar edit acts on the new values, not on those of the previous run.
    """
    state = st.session_state if state is None else state
    choices = model_choices()
    label = state.get("model_label", next(iter(choices)))
    source: str | None = choices.get(label)
    name = label
    if source == "local":
        source, name, _ = _local_checkpoint(state)
    elif source == "server":
        url = (state.get("server_url") or "").strip()
        served = (state.get("server_model") or "").strip()
        source = bridge.server_source(url, served) if url else None
        name = f"{served or 'the model'} at {url}"
    basic = core.SamplingConfig(temperature=float(state.get("temperature", 1.0)),
                                top_k=int(state.get("top_k", 0)) or None, top_p=float(state.get("top_p", 1.0)),
                                min_p=float(state.get("min_p", 0.0)), seed=int(state.get("seed", DEFAULT_SEED)))
    try:
        cfg, error = basic.replace(**more_samplers(state)), None
    except ValueError as e:   # core names the bad value; the page goes on with the four basic samplers
        cfg, error = basic, str(e)
    return Settings(model=source, model_label=label, mode=state.get("prompt_mode", "raw"),
                    prompt=state.get("prompt", DEFAULT_PROMPT), sampling=cfg, model_name=name, error=error)


# "More samplers": widget key -> (SamplingConfig field, neutral value); neutral = off.
MORE: dict[str, tuple[str, float | int]] = {
    "rep_penalty": ("repetition_penalty", 1.0), "presence_penalty": ("presence_penalty", 0.0),
    "frequency_penalty": ("frequency_penalty", 0.0), "penalty_last_n": ("penalty_last_n", -1),
    "typical_p": ("typical_p", 1.0), "top_n_sigma": ("top_n_sigma", 0.0), "xtc_threshold": ("xtc_threshold", 0.1),
    "xtc_probability": ("xtc_probability", 0.0), "dry_multiplier": ("dry_multiplier", 0.0),
    "dry_base": ("dry_base", 1.75), "dry_allowed_length": ("dry_allowed_length", 2),
}
ORDER_CHOICES = (*core.ORDERS, "custom")


def parse_logit_bias(text: str) -> tuple[tuple[int, float], ...]:
    """ "198:-5, 13:2.5" -> ((198, -5.0), (13, 2.5)); ValueError quoting the entry that is not id:value."""
    pairs = []
    for entry in filter(None, (e.strip() for e in text.replace(";", ",").split(","))):
        token, sep, bias = entry.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((int(token), float(bias)))
        except ValueError:
            raise ValueError(f"logit bias entry {entry!r} is not token id:value (e.g. 198:-5)") from None
    return tuple(pairs)


def logit_bias_text(bias: tuple[tuple[int, float], ...]) -> str:
    """The text parse_logit_bias reads back: "198:-5, 13:2.5"."""
    return ", ".join(f"{token}:{value:g}" for token, value in bias)


_ESCAPE = {"\n": r"\n", "\t": r"\t", "\r": r"\r", "\\": "\\\\", ",": r"\,"}
_UNESCAPE = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "\\": "\\", ",": ","}


def breakers_text(breakers: tuple[str, ...]) -> str:
    """DRY's sequence breakers as one line: comma-separated; newline \n, tab \t, comma \, backslash \\,
    and a space at either end of a breaker \s."""
    def one(b: str) -> str:
        text = "".join(_ESCAPE.get(ch, ch) for ch in b)
        lead, tail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
        return r"\s" * lead + text.strip(" ") + r"\s" * tail if text.strip(" ") else r"\s" * len(text)
    return ", ".join(one(b) for b in breakers)


def parse_breakers(text: str) -> tuple[str, ...]:
    """breakers_text read back ("\n, :, \", *" -> ("\n", ":", '"', "*")); spaces around an entry are
    dropped, empty entries skipped; ValueError quoting an unknown escape."""
    entries: list[list[tuple[str, bool]]] = [[]]   # (character, escaped)
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt not in _UNESCAPE:
                bad = "\\" + nxt
                raise ValueError(f"DRY sequence breakers: unknown escape {bad!r} "
                                 r"(write \n, \t, \r, \s for a space, \, or \\)")
            entries[-1].append((_UNESCAPE[nxt], True))
        elif ch == ",":
            entries.append([])
        else:
            entries[-1].append((ch, False))
    out = []
    for entry in entries:
        while entry and entry[0][0].isspace() and not entry[0][1]:
            entry.pop(0)
        while entry and entry[-1][0].isspace() and not entry[-1][1]:
            entry.pop()
        if entry:
            out.append("".join(ch for ch, _ in entry))
    return tuple(out)


def order_setting(state: Mapping, prefix: str = "") -> str | tuple[str, ...]:
    """The order picker's value: a preset name, or the custom stages in the order they were picked."""
    preset = state.get(f"{prefix}order_preset", "transformers")
    if preset != "custom":
        return preset
    return tuple(state.get(f"{prefix}order_custom", core.ORDERS["transformers"]))


def more_samplers(state: Mapping, prefix: str = "") -> dict[str, object]:
    """The SamplingConfig fields beyond the basic four, from the keys sampler_widgets(prefix) drew
    (the sidebar's: no prefix); ValueError on text that does not parse."""
    fields: dict[str, object] = {name: type(neutral)(state.get(prefix + key, neutral))
                                 for key, (name, neutral) in MORE.items()}
    fields["logit_bias"] = parse_logit_bias(state.get(f"{prefix}logit_bias_text", ""))
    breakers = state.get(f"{prefix}dry_breakers_text")
    if breakers is not None:
        fields["dry_sequence_breakers"] = parse_breakers(breakers)
    fields["order"] = order_setting(state, prefix)
    return fields


def rules_text(order: str | tuple[str, ...]) -> str:
    """Which engine's rules settle the details engines disagree on, in sentences (core.RULES)."""
    engine = order if isinstance(order, str) else "transformers"
    lead = f"{engine}'s rules: " if isinstance(order, str) else "A custom order follows transformers' rules: "
    return lead + " ".join(f"{stage} {rule}." for stage, rule in core.RULES[engine].items())


def render_sidebar() -> Settings:
    """Draw the sidebar on every page (explicit keys keep values across page switches)."""
    sb = st.sidebar
    sb.header("Model")
    if (problem := _public_choices()[1]) is not None:
        sb.error(plain_text_for_markdown(problem))
    label = sb.selectbox("Model", list(model_choices()), key="model_label")
    if model_choices()[label] == "local":
        sb.text_input("Checkpoint path", key="ckpt_path",
                      help="A Hugging Face GPT-2 folder, a .safetensors file or the book's model.pth")
        sb.file_uploader("…or upload .pth / .safetensors", type=["pth", "pt", "safetensors"], key="ckpt_upload")
        _, _, upload_error = _local_checkpoint(st.session_state)
        if upload_error:
            sb.error(plain_text_for_markdown(upload_error))   # names the user's file: shown literally
    elif model_choices()[label] == "server":
        _server_fields(sb)
    sb.radio("Prompt mode", ["raw", "chat"], key="prompt_mode", horizontal=True,
             format_func={"raw": "Raw text", "chat": "Chat (instruct template)"}.get,
             help="Chat wraps your text in the model's chat template (SmolLM2 only).")
    sb.header("Prompt")
    sb.text_area("Prompt", value=DEFAULT_PROMPT, key="prompt", height=110, label_visibility="collapsed")
    sb.header("Sampling")
    sb.slider("Temperature", 0.0, 5.0, 1.0, 0.05, key="temperature",
              help="0 = always the top token. Below 1 sharpens, above 1 flattens.")
    sb.number_input("Top-k (0 = off)", min_value=0, max_value=200_000, value=0, step=1, key="top_k",
                    help="Keep only the k most likely tokens.")
    sb.slider("Top-p", 0.01, 1.0, 1.0, 0.01, key="top_p",
              help="Keep the smallest set of top tokens whose probabilities add up to p. 1 = off.")
    sb.slider("Min-p", 0.0, 0.99, 0.0, 0.01, key="min_p",
              help="Drop tokens less likely than min-p × the top token's probability. 0 = off.")
    sb.number_input("Seed", min_value=0, max_value=2**31 - 1, value=DEFAULT_SEED, step=1, key="seed")
    _more_samplers(sb)
    order_widgets(sb)
    s = current_settings()
    if s.error:
        # core's message quotes what the user typed: shown literally
        sb.error(plain_text_for_markdown(f"{s.error}. Until it is fixed, only temperature, top-k, top-p and "
                                         "min-p apply."), icon=":material/error:")
    return s


def _server_fields(sb: DeltaGenerator) -> None:
    """URL, served model name, and a connection check that says what the engine serves and reports."""
    sb.text_input("Server URL", key="server_url", placeholder="http://127.0.0.1:8000/v1", help=SERVER_HELP)
    sb.text_input("Served model name (optional)", key="server_model",
                  help="The first model the server lists is used when empty.")
    s = current_settings()
    if s.model is None:
        sb.caption("Type the server's address, e.g. http://127.0.0.1:8080/v1 for llama.cpp's server.")
        return
    if sb.button("Check connection", key="server_check", icon=":material/lan:"):
        bridge.forget_model(s.model)  # a fresh check: the server may have restarted since the last one
    lm, problem = load_model(s, quiet=True)
    if lm is None:
        sb.error(plain_text_for_markdown(problem or ""), icon=":material/link_off:")
    else:
        sb.success(plain_text_for_markdown(engine_summary(lm)), icon=":material/link:")


def engine_summary(lm: core.LanguageModel) -> str:
    """What a connected engine serves and reports, in words (model text: escape before Markdown)."""
    reports = (f"the whole vocabulary ({lm.vocab_size:,} tokens)" if lm.engine.top_n is None
               else f"only its top {lm.engine.top_n} tokens per position")
    return f"Connected: {lm.name} ({lm.engine.client.info().engine}); it reports {reports}."


def sampler_widgets(prefix: str = "", cfg: core.SamplingConfig | None = None) -> None:
    """Penalties, bias, typical-p, top-nσ, XTC and DRY, drawn where the caller is (the sidebar's "More
    samplers", a Compare column's editor), keyed prefix + name, starting at cfg's values (default: off).
    more_samplers(state, prefix) reads them back."""
    c = cfg or core.SamplingConfig()
    st.slider("Repetition penalty (1 = off)", 1.0, 2.0, c.repetition_penalty, 0.05, key=f"{prefix}rep_penalty",
              help="Tokens already in the text: positive logits are divided by it, negative ones "
                   "multiplied (transformers, llama.cpp). 1.1–1.3 is common.")
    st.slider("Presence penalty (0 = off)", -2.0, 2.0, c.presence_penalty, 0.1, key=f"{prefix}presence_penalty",
              help="Subtracted once from the logit of every token already in the text (OpenAI).")
    st.slider("Frequency penalty (0 = off)", -2.0, 2.0, c.frequency_penalty, 0.1, key=f"{prefix}frequency_penalty",
              help="Subtracted from a token's logit once per time it already appeared (OpenAI).")
    st.number_input("Penalties look back this many tokens (-1 = all)", min_value=-1, max_value=100_000,
                    value=c.penalty_last_n, step=1, key=f"{prefix}penalty_last_n",
                    help="llama.cpp's penalty_last_n; 0 = none.")
    st.text_input("Logit bias (token id:value, …)", logit_bias_text(c.logit_bias), key=f"{prefix}logit_bias_text",
                  placeholder="e.g. 198:-5, 13:2",
                  help="Added to those tokens' logits before anything else: -100 all but bans a token. "
                       "The token ids are in the Next-token table.")
    st.slider("Typical-p (1 = off)", 0.01, 1.0, c.typical_p, 0.01, key=f"{prefix}typical_p",
              help="Keep the tokens whose surprise is closest to the average surprise, until they "
                   "hold this much probability (Meister et al.).")
    st.slider("Top-nσ (0 = off)", 0.0, 5.0, max(0.0, c.top_n_sigma), 0.1, key=f"{prefix}top_n_sigma",
              help="Keep the tokens whose logit is within n standard deviations of the best one.")
    st.slider("XTC probability (0 = off)", 0.0, 1.0, c.xtc_probability, 0.05, key=f"{prefix}xtc_probability",
              help="Exclude Top Choices: with this chance per token, drop every token above the "
                   "threshold except the least likely of them, so the obvious choice gives way.")
    st.slider("XTC threshold", 0.0, 0.5, c.xtc_threshold, 0.01, key=f"{prefix}xtc_threshold")
    st.slider("DRY multiplier (0 = off)", 0.0, 2.0, c.dry_multiplier, 0.05, key=f"{prefix}dry_multiplier",
              help="Don't Repeat Yourself: penalise the token that would extend a repeat of "
                   "earlier text; the penalty grows with the repeat's length. 0.8 is common.")
    st.slider("DRY base", 1.0, 3.0, c.dry_base, 0.05, key=f"{prefix}dry_base")
    st.number_input("DRY allowed length", min_value=0, max_value=50, value=c.dry_allowed_length, step=1,
                    key=f"{prefix}dry_allowed_length", help="Repeats up to this many tokens are free.")
    st.text_input("DRY sequence breakers", breakers_text(c.dry_sequence_breakers), key=f"{prefix}dry_breakers_text",
                  # help is Markdown: "\\," shows as "\,"
                  help=r"A repeat never reaches back past one of these. Comma-separated; write a newline as \n, "
                       r"a comma as \\, and a space at either end as \s. llama.cpp's default: \n, :, \", *")


def _more_samplers(sb: DeltaGenerator) -> None:
    """The sidebar's "More samplers": each off at its starting value."""
    with sb.expander("More samplers"):
        st.caption("Each starts switched off. Penalties and DRY look at the text so far (prompt + appended "
                   "tokens) and push down tokens that would repeat it.")
        sampler_widgets()


def order_widgets(where: DeltaGenerator, prefix: str = "", order: str | tuple[str, ...] = "transformers") -> None:
    """Which order the stages run in: an engine's, or one the user picks stage by stage (keys prefix +
    "order_preset" / "order_custom", read by order_setting(state, prefix))."""
    preset = where.selectbox("Order of the stages", ORDER_CHOICES, key=f"{prefix}order_preset",
                             index=ORDER_CHOICES.index(order if isinstance(order, str) else "custom"),
                             format_func=lambda o: "custom…" if o == "custom" else o,
                             help="transformers and vLLM apply temperature before the filters; llama.cpp "
                                  "applies it last, after them.")
    if preset == "custom":
        where.multiselect("Stages, in the order they run", core.STAGE_NAMES,
                          default=list(order if isinstance(order, tuple) else core.ORDERS["transformers"]),
                          key=f"{prefix}order_custom", help="Remove stages and add them back in the order you want; "
                                                           "a stage whose setting is on must be in the list.")
    chosen = order_setting(st.session_state, prefix)
    where.caption(" → ".join(core.ORDERS[chosen] if isinstance(chosen, str) else chosen) or "no stages")
    where.caption(rules_text(chosen))


def settings() -> Settings:
    """The sidebar's values for the current run (app.py renders the sidebar before the page)."""
    s: Settings = st.session_state["_settings"]
    if s.error:
        st.warning(plain_text_for_markdown(f"A sampler setting is not valid ({s.error}): this page uses only "
                                           "temperature, top-k, top-p and min-p until it is fixed in the sidebar."),
                   icon=":material/warning:")
    return s


def loading_message(s: Settings) -> str:
    """What the app is doing while a model loads (only the first session of a process waits for it)."""
    if s.model == "llamacpp:smollm2":
        return f"Starting llama.cpp's server on the bundled 4-bit file for {s.model_label} (once per process)."
    if s.model == "smollm2":
        return (f"Loading {s.model_label}. The first start after installing converts its 4-bit weights to "
                "float32 and caches them, which takes a while, once per machine; later starts read that cache.")
    if s.model in HUB_MODELS:
        return f"Loading {s.model_label}: from this machine's Hugging Face cache, or downloading it first."
    return f"Loading {s.model_name or s.model_label}…"


LOAD_ERRORS = (core.ModelUnavailableError, core.WeightsError, core.TokenizerError, FileNotFoundError, ValueError,
               EngineError, LlamaCppServerError, BusyLoadingError)


def load_model(s: Settings, quiet: bool = False) -> tuple[core.LanguageModel | None, str | None]:
    """(model, None), or (None, what went wrong in plain words): loaded once per process by the bridge.
    quiet: no progress shown while it loads (the sidebar's connection check)."""
    if s.model not in (None, *model_choices().values()) and model_choices().get(s.model_label) not in (
            "local", "server"):
        return None, "That model is not offered on this server."  # a public server's list is the whole list
    if s.model is None:
        if s.model_label in MODELS and MODELS[s.model_label] == "server":
            return None, "Type the inference server's address in the sidebar."
        return None, "Choose a checkpoint in the sidebar: a path or an upload."
    shown: list = []  # [slot, bar], made on the first wait only: a loaded model shows nothing
    start = time.monotonic()

    def waiting(job: bridge.Loading) -> None:
        if quiet:
            return
        if not shown:
            slot = st.empty()
            with slot.container():
                st.info(loading_message(s), icon=":material/hourglass_top:")
                shown.extend([slot, st.progress(0.0)])
        shown[1].progress(min(job.done, 1.0),
                          text=f"{job.what} · {job.done:.0%} · {time.monotonic() - start:.0f} s")

    try:
        lm = bridge.get_model(s.model, waiting)
    except LOAD_ERRORS as e:
        return None, load_error_message(e, s.model, s.model_name or s.model_label, s.model_label)
    finally:
        if shown:
            shown[0].empty()
    if problem := bias_problem(s.sampling, lm.tokenizer.vocab_size):
        return None, problem
    return lm, None


def bias_problem(cfg: core.SamplingConfig, vocab: int) -> str | None:
    """Why the logit bias cannot apply to this model (a token id past its vocabulary), or None."""
    outside = [t for t, _ in cfg.logit_bias if t >= vocab]
    if outside:
        return (f"Logit bias: token id {outside[0]} is outside this model's vocabulary (ids 0 to {vocab - 1:,}). "
                "Change it under More samplers in the sidebar.")
    return None


def require_model(s: Settings) -> core.LanguageModel:
    """The chosen model; on failure a plain message and the page stops."""
    lm, problem = load_model(s)
    if lm is None:
        if s.model is None:
            st.info(problem)
        else:
            # The message quotes a user-typed path or file name: Markdown must show it literally.
            st.error(plain_text_for_markdown(problem), icon="⚠️")
        st.stop()
    top_n_caption(lm)
    return lm


def top_n_caption(lm: core.LanguageModel) -> None:
    """On an engine that reports only its top N tokens, say once per page what its probabilities are."""
    if lm.engine.top_n:
        st.caption(f"This engine reports only its top {lm.engine.top_n} tokens per position: on this page, "
                   f"probabilities are shares of those {lm.engine.top_n} tokens (the Next-token page shows how "
                   "much the engine left out).")


def prompt_mode(s: Settings, lm: core.LanguageModel) -> str:
    """The mode actually used: chat only where the model has a chat template."""
    return s.mode if lm.has_chat else "raw"


def continue_past_end(where: DeltaGenerator, mode: str, key: str) -> bool:
    """The "continue past the end-of-text token" switch: on by default for raw text (an instruct model
    ends a plain sentence after a few tokens), off in chat (where the end token closes the answer)."""
    return bool(where.toggle("Continue past the end-of-text token", value=mode == "raw", key=f"{key}_{mode}",
                             help="An instruct model often ends raw text after a few tokens with its end "
                                  "token (<|im_end|>). On: the end token is shown and generation goes on."))


def chat_temperature_hint(s: Settings, mode: str) -> str | None:
    """A nudge where the defaults give poor chat: a 135M model answers sensibly only when fairly cold."""
    if mode == "chat" and s.sampling.temperature > 0.7:
        return (f"Chat at temperature {s.sampling.temperature:g} often rambles with a model this small: "
                "try 0.2–0.5 in the sidebar for a sensible answer.")
    return None


def template_expander(lm: core.LanguageModel, ids: tuple[int, ...], mode: str) -> None:
    """In chat mode the pages show "User: … / Assistant:"; the exact template text is one click away."""
    if mode == "chat":
        with st.expander("The exact text the model reads (its chat template)"):
            st.text(lm.tokenizer.decode(list(ids)))   # st.text: model text shown literally, never as Markdown


def require_prompt_ids(s: Settings, lm: core.LanguageModel) -> tuple[int, ...]:
    """Token ids of the prompt (chat mode only where the model has a template); stops with a message if empty."""
    mode = prompt_mode(s, lm)
    if s.mode == "chat" and not lm.has_chat:
        st.caption(f"{lm.name} has no chat template: the prompt is used as raw text.")
    if not s.prompt.strip():
        st.info("Type a prompt in the sidebar to see what the model predicts next.")
        st.stop()
    ids = bridge.encode_prompt(s.model, s.prompt, mode)
    if len(ids) > lm.context_length:
        st.warning(f"The prompt has {len(ids):,} tokens; the model reads only the last {lm.context_length:,}.")
    return ids
