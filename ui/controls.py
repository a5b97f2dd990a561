"""The shared sidebar (model, prompt, sampling settings) and the helpers every page uses to read it."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import core
from ui import bridge
from ui.format import plain_text_for_markdown
from ui.model_view import HUB_MODELS, load_error_message

MODELS: dict[str, str] = {
    "SmolLM2-135M-Instruct (bundled)": "smollm2",
    "GPT-2 124M": "gpt2",
    "GPT-2 355M (medium)": "gpt2-medium",
    "GPT-2 774M (large)": "gpt2-large",
    "GPT-2 1558M (XL)": "gpt2-xl",
    "Local checkpoint…": "local",
}
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


def _model_choices() -> dict[str, str]:
    if TEST_MODEL:
        return {f"Test model ({TEST_MODEL})": TEST_MODEL, **MODELS}
    return MODELS


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
    choices = _model_choices()
    label = state.get("model_label", next(iter(choices)))
    source: str | None = choices.get(label)
    name = label
    if source == "local":
        source, name, _ = _local_checkpoint(state)
    cfg = core.SamplingConfig(temperature=float(state.get("temperature", 1.0)), top_k=int(state.get("top_k", 0)) or None,
                              top_p=float(state.get("top_p", 1.0)), min_p=float(state.get("min_p", 0.0)),
                              seed=int(state.get("seed", DEFAULT_SEED)))
    return Settings(model=source, model_label=label, mode=state.get("prompt_mode", "raw"),
                    prompt=state.get("prompt", DEFAULT_PROMPT), sampling=cfg, model_name=name)


def render_sidebar() -> Settings:
    """Draw the sidebar on every page (explicit keys keep values across page switches)."""
    sb = st.sidebar
    sb.header("Model")
    label = sb.selectbox("Model", list(_model_choices()), key="model_label")
    if _model_choices()[label] == "local":
        sb.text_input("Checkpoint path", key="ckpt_path",
                      help="A Hugging Face GPT-2 folder, a .safetensors file or the book's model.pth")
        sb.file_uploader("…or upload .pth / .safetensors", type=["pth", "pt", "safetensors"], key="ckpt_upload")
        _, _, upload_error = _local_checkpoint(st.session_state)
        if upload_error:
            sb.error(plain_text_for_markdown(upload_error))   # names the user's file: shown literally
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
    sb.caption("Order: temperature → top-k → top-p → min-p (as in Hugging Face transformers).")
    return current_settings()


def settings() -> Settings:
    """The sidebar's values for the current run (app.py renders the sidebar before the page)."""
    return st.session_state["_settings"]


def loading_message(s: Settings) -> str:
    """What the app is doing while a model loads (only the first session of a process waits for it)."""
    if s.model == "smollm2":
        return (f"Loading {s.model_label}. The first start after installing converts its 4-bit weights to "
                "float32 and caches them, which takes a while, once per machine; later starts read that cache.")
    if s.model in HUB_MODELS:
        return f"Loading {s.model_label}: from this machine's Hugging Face cache, or downloading it first."
    return f"Loading {s.model_name or s.model_label}…"


LOAD_ERRORS = (core.ModelUnavailableError, core.WeightsError, core.TokenizerError, FileNotFoundError, ValueError)


def load_model(s: Settings) -> tuple[core.LanguageModel | None, str | None]:
    """(model, None), or (None, what went wrong in plain words): loaded once per process by the bridge."""
    if s.model is None:
        return None, "Choose a checkpoint in the sidebar: a path or an upload."
    shown: list = []  # [slot, bar], made on the first wait only: a loaded model shows nothing
    start = time.monotonic()

    def waiting(job: bridge.Loading) -> None:
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
    return lm, None


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
    return lm


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
