"""What a user reads when a model does not load: core's precise messages in the user's words.

Core names files by the path it opened (for an upload, an internal file under the temp folder) and
speaks to Python callers (`load_model('/path')`); a browser user needs the name they gave and the
control to use. Pure functions, no Streamlit import.
"""
from __future__ import annotations

from collections.abc import Mapping

import core
from ui.format import plain_text_for_markdown

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
PUBLIC_ENV = "SAMPLING_LAB_PUBLIC"     # "1": a shared server (see public_choices)
ENGINES_ENV = "SAMPLING_LAB_ENGINES"   # "Name=http://host:port/v1, Other=https://..." : engines visitors may use
LOADS_ENV = "SAMPLING_LAB_MAX_LOADS"   # public mode: models one process may load at the same time (default 1)
PUBLIC_BUILTIN = {"SmolLM2-135M-Instruct (bundled)": "smollm2", "SmolLM2 on llama.cpp (4-bit, fast)": "llamacpp:smollm2"}
LOCAL_CHOICE = "Local checkpoint…"


class BusyLoadingError(RuntimeError):
    """A shared server is already loading as many models as it allows at once; the visitor tries again."""


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
    if isinstance(error, BusyLoadingError):
        return (f"{shown_name} is not loaded yet, and this shared server is busy loading another model ({error}). "
                "Try again in a moment: your prompt and settings are kept.")
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
    text = str(error)
    end = "" if text.endswith((".", "?", "!")) else "."
    return plain_text_for_markdown(
        f"The inference server failed: {text}{end} Your prompt, settings and the tokens generated so far are "
        "kept; rerun the page (or press Generate again) once the server answers.")


def is_public(environ: Mapping[str, str]) -> bool:
    return environ.get(PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes")


def configured_engines(environ: Mapping[str, str]) -> dict[str, str]:
    """SAMPLING_LAB_ENGINES as {sidebar label: URL}; ValueError naming an entry that is not Name=URL."""
    out = {}
    for entry in filter(None, (e.strip() for e in environ.get(ENGINES_ENV, "").split(","))):
        name, sep, url = entry.partition("=")
        if not sep or not name.strip() or not core.loading.is_url(url.strip()):
            raise ValueError(f"{ENGINES_ENV}: {entry!r} is not Name=http(s)://host:port/v1")
        out[f"{name.strip()} (inference server)"] = url.strip()
    return out


def public_choices(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The only models a visitor may choose on a shared server ($SAMPLING_LAB_PUBLIC=1): the bundled one,
    its llama.cpp engine and the configured engines. No checkpoint paths or uploads (a visitor could probe
    the server's files or fill its disk), no Hub downloads (GPT-2 XL holds ~6 GB of RAM), and so a
    bounded set of models in memory. None: local use, every choice open."""
    if not is_public(environ):
        return None
    return {**PUBLIC_BUILTIN, **configured_engines(environ)}


def load_limit(environ: Mapping[str, str]) -> int | None:
    """How many models one process may load at the same time: no bound locally; on a public server
    $SAMPLING_LAB_MAX_LOADS (default 1), so a crowd choosing different models cannot start every load
    (each reads weights or starts an engine) at once. ValueError naming a value that is not a count >= 1."""
    if not is_public(environ):
        return None
    text = environ.get(LOADS_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{LOADS_ENV}: {text!r} is not a whole number of at least 1")
    return int(text)
