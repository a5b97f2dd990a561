"""The shared sidebar (model, prompt, sampling settings) and the helpers every page uses to read it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

import core
from ui import bridge
from ui.format import plain_text_for_markdown
from ui.model_view import load_error_message

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


def _local_checkpoint() -> tuple[str | None, str]:
    """(source for bridge.get_model, the name the user gave it)."""
    path = st.sidebar.text_input("Checkpoint path", key="ckpt_path",
                                 help="A Hugging Face GPT-2 folder, a .safetensors file or the book's model.pth")
    upload = st.sidebar.file_uploader("…or upload .pth / .safetensors", type=["pth", "pt", "safetensors"],
                                      key="ckpt_upload")
    if upload is not None:
        try:
            return bridge.save_upload(upload.name, upload.getvalue()), upload.name
        except (core.WeightsError, OSError) as e:
            st.sidebar.error(plain_text_for_markdown(str(e)))   # names the user's file: shown literally
            return None, upload.name
    return path.strip() or None, path.strip()


def render_sidebar() -> Settings:
    """Draw the sidebar on every page (explicit keys keep values across page switches)."""
    sb = st.sidebar
    sb.header("Model")
    choices = _model_choices()
    label = sb.selectbox("Model", list(choices), key="model_label")
    source: str | None = choices[label]
    name = label
    if source == "local":
        source, name = _local_checkpoint()
    mode = sb.radio("Prompt mode", ["raw", "chat"], key="prompt_mode", horizontal=True,
                    format_func={"raw": "Raw text", "chat": "Chat (instruct template)"}.get,
                    help="Chat wraps your text in the model's chat template (SmolLM2 only).")
    sb.header("Prompt")
    prompt = sb.text_area("Prompt", value=DEFAULT_PROMPT, key="prompt", height=110, label_visibility="collapsed")
    sb.header("Sampling")
    t = sb.slider("Temperature", 0.0, 5.0, 1.0, 0.05, key="temperature",
                  help="0 = always the top token. Below 1 sharpens, above 1 flattens.")
    k = sb.number_input("Top-k (0 = off)", min_value=0, max_value=200_000, value=0, step=1, key="top_k",
                        help="Keep only the k most likely tokens.")
    p = sb.slider("Top-p", 0.01, 1.0, 1.0, 0.01, key="top_p",
                  help="Keep the smallest set of top tokens whose probabilities add up to p. 1 = off.")
    mp = sb.slider("Min-p", 0.0, 0.99, 0.0, 0.01, key="min_p",
                   help="Drop tokens less likely than min-p × the top token's probability. 0 = off.")
    seed = sb.number_input("Seed", min_value=0, max_value=2**31 - 1, value=123, step=1, key="seed")
    sb.caption("Order: temperature → top-k → top-p → min-p (as in Hugging Face transformers).")
    cfg = core.SamplingConfig(temperature=float(t), top_k=int(k) or None, top_p=float(p), min_p=float(mp),
                              seed=int(seed))
    return Settings(model=source, model_label=label, mode=mode, prompt=prompt, sampling=cfg, model_name=name)


def settings() -> Settings:
    """The sidebar's values for the current run (app.py renders the sidebar before the page)."""
    return st.session_state["_settings"]


def require_model(s: Settings) -> core.LanguageModel:
    """The chosen model, loaded once per process; on failure a plain message and the page stops."""
    if s.model is None:
        st.info("Choose a checkpoint in the sidebar: a path or an upload.")
        st.stop()
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if total:
            bar = bar or st.progress(0.0, text="Downloading weights…")
            bar.progress(min(done / total, 1.0), text=f"Downloading weights… {done / 1e6:.0f} / {total / 1e6:.0f} MB")

    try:
        with st.spinner(f"Loading {s.model_label}…"):
            lm = bridge.get_model(s.model, progress)
    except (core.ModelUnavailableError, core.WeightsError, core.TokenizerError, FileNotFoundError, ValueError) as e:
        # The message quotes a user-typed path or file name: Markdown must show it literally.
        message = load_error_message(e, s.model, s.model_name or s.model_label, s.model_label)
        st.error(plain_text_for_markdown(message), icon="⚠️")
        st.stop()
    if bar is not None:
        bar.empty()
    return lm


def require_prompt_ids(s: Settings, lm: core.LanguageModel) -> tuple[int, ...]:
    """Token ids of the prompt (chat mode only where the model has a template); stops with a message if empty."""
    mode = s.mode if lm.has_chat else "raw"
    if s.mode == "chat" and not lm.has_chat:
        st.caption(f"{lm.name} has no chat template: the prompt is used as raw text.")
    if not s.prompt.strip():
        st.info("Type a prompt in the sidebar to see what the model predicts next.")
        st.stop()
    ids = bridge.encode_prompt(s.model, s.prompt, mode)
    if len(ids) > lm.context_length:
        st.warning(f"The prompt has {len(ids):,} tokens; the model reads only the last {lm.context_length:,}.")
    return ids
