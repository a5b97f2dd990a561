"""What a user reads when a model does not load: core's precise messages in the user's words.

Core names files by the path it opened (for an upload, an internal file under the temp folder) and
speaks to Python callers (`load_model('/path')`); a browser user needs the name they gave and the
control to use. Pure functions, no Streamlit import.
"""
from __future__ import annotations

import core
from ui.format import plain_text_for_markdown

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
LOCAL_CHOICE = "Local checkpoint…"

# (what core says, what the user reads after "Could not load NAME: "); "it" is the user's file.
_PLAIN = (
    ("holds Python objects other than tensors",
     "it holds more than plain weights (pickled Python objects), and opening it could run code, so it was "
     "refused. Save only the weights, e.g. torch.save(model.state_dict(), \"model.pth\")."),
    ("not a PyTorch checkpoint, or a damaged one",
     "it is not a PyTorch checkpoint (.pth), or the file is damaged."),
    ("does not hold a state_dict", "it opens, but holds no named model weights (a state_dict)."),
    ("is not a readable safetensors file", "it is not a .safetensors file, or the file is damaged."),
    ("is not a readable GGUF file", "it is not a GGUF file, or the file is truncated or damaged."),
)


def load_error_message(error: Exception, source: str, shown_name: str, model_label: str) -> str:
    """Plain text (escape it before Markdown) saying which model failed and what to do about it.

    source is what core was asked to load; shown_name is how the user knows it: the uploaded file's
    name, the path they typed, or the sidebar label.
    """
    if isinstance(error, core.ModelUnavailableError) and source in HUB_MODELS:
        return (f"{model_label} downloads its weights from the Hugging Face Hub, which cannot be reached from "
                f"here. If you have its config.json and model.safetensors, choose “{LOCAL_CHOICE}” in the Model "
                "menu and type the folder's path or upload the .safetensors file; the book's model.pth works too.")
    text = str(error).replace(source, shown_name)
    for core_words, plain in _PLAIN:
        if core_words in text:
            return f"Could not load {shown_name}: {plain}"
    if text.endswith(f"{shown_name} does not exist"):
        return f"Could not load {shown_name}: there is no such file or folder on the machine that runs this app."
    for prefix in (f"{shown_name}: ", f"{shown_name} "):
        if text.startswith(prefix):
            return f"Could not load {shown_name}: {text.removeprefix(prefix)}"
    return f"Could not load {shown_name}: {text}"


def engine_failure_message(error: Exception) -> str:
    """Markdown-safe: an inference server failed while a page used it (its message quotes the server)."""
    return plain_text_for_markdown(
        f"The inference server failed: {str(error).rstrip('.')}. Your prompt, settings and the tokens generated so far are "
        "kept; rerun the page (or press Generate again) once the server answers.")
