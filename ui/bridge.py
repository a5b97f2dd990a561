"""The one module that owns Streamlit caching: models (cache_resource) and logits (cache_data).

Keys are plain values (a model source string, a tuple of token ids), as in spacy-streamlit's util.
A cached model is shared by every session, which is safe because `core` models hold no state.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
import torch

import core
from ui.model_view import BusyLoadingError, load_limit

UPLOAD_DIR = Path(tempfile.gettempdir()) / "sampling-lab-uploads"


SERVED_SEP = "|"  # "URL|served model name": a '|' cannot be part of a URL the client accepts
PRELOAD_ENV = "SAMPLING_LAB_PRELOAD"  # "0": no model loads before a page asks for one (the tests set it)
POLL_S = 0.1
# Models cached per process. Locally any choice can be one of them; on a public server the sidebar's list
# (ui.model_view.public_choices) is the whole set, and of it only the bundled SmolLM2 (in this process) and
# its llama.cpp engine hold weights: an inference server holds none here.
MAX_MODELS = 3

_loads_lock = threading.Lock()
_loads_now = 0  # loads in progress in this process (bounded on a public server: load_limit)


def _start_load() -> None:
    """Count a load that is starting; BusyLoadingError where a public server's limit is reached."""
    global _loads_now
    limit = load_limit(os.environ)
    with _loads_lock:
        if limit is not None and _loads_now >= limit:
            raise BusyLoadingError(f"{_loads_now} load{'s' if _loads_now > 1 else ''} in progress, "
                                   f"at most {limit} at once")
        _loads_now += 1


def _load_finished() -> None:
    global _loads_now
    with _loads_lock:
        _loads_now -= 1


@dataclass(eq=False)
class Loading:
    """One model's load on its own thread: no script waits inside a cache lock, every waiting session
    shows the same progress, and the default model starts loading before a page asks for it."""

    source: str
    future: Future = field(default_factory=Future)
    what: str = "Starting"      # written by the loading thread only (one attribute at a time: atomic)
    done: float = 0.0           # 0..1, never decreasing

    def status(self, what: str, done: float) -> None:
        self.what, self.done = what, max(self.done, done)

    def downloaded(self, done: int, total: int | None) -> None:
        if total:  # a download is the first part of a load from the Hub
            self.status(f"Downloading weights… {done / 1e6:.0f} / {total / 1e6:.0f} MB", 0.8 * done / total)

    def run(self) -> None:
        source, _, served = self.source.partition(SERVED_SEP)
        try:
            lm = core.load_model(source, progress=self.downloaded, status=self.status, model=served or None)
        except BaseException as e:  # the waiting script re-raises it (LOAD_ERRORS become a message)
            _load_finished()  # before a waiter wakes: it may start the next load at once
            self.future.set_exception(e)
        else:
            _load_finished()
            self.future.set_result(lm)


@st.cache_resource(show_spinner=False, max_entries=MAX_MODELS)
def loading(source: str) -> Loading:
    """source's load, started once per process on a daemon thread (a cache hit returns it at once).
    On a public server at most load_limit loads run at once: beyond it BusyLoadingError, nothing started
    (and nothing cached: the next call tries again)."""
    _start_load()
    job = Loading(source)
    threading.Thread(target=job.run, name=f"sampling-lab load {source}", daemon=True).start()
    return job


def get_model(source: str, waiting: Callable[[Loading], None] | None = None) -> core.LanguageModel:
    """The loaded model, shared by every session; waiting(job) is called every POLL_S while it loads.
    A failed load raises its error here and is tried again on the next call."""
    job = loading(source)
    while waiting is not None and not job.future.done():
        waiting(job)
        wait([job.future], timeout=POLL_S)
    try:
        return job.future.result()
    except Exception:
        loading.clear(source)  # as before the thread: a missing file can be supplied and the page rerun
        raise


def server_source(url: str, served: str = "") -> str:
    """The model source for an inference server's URL and an optional served model name."""
    return f"{url}{SERVED_SEP}{served}" if served else url


def forget_model(source: str) -> None:
    """Drop source's cached load (a remote model holds only a connection): the next get_model asks again."""
    loading.clear(source)


def preload(source: str = core.DEFAULT_MODEL) -> None:
    """Start loading the default model (returns at once), unless $SAMPLING_LAB_PRELOAD is "0"."""
    if os.environ.get(PRELOAD_ENV, "1").strip() != "0":
        try:
            loading(source)
        except (BusyLoadingError, ValueError):  # a visitor's load runs, or $SAMPLING_LAB_MAX_LOADS is
            pass                                # malformed: the page that asks for the model says so


@st.cache_data(show_spinner=False, max_entries=512)
def next_token_logits(source: str, ids: tuple[int, ...]) -> np.ndarray:
    """Raw logits for the token after ids: depends on model + prompt only, never on a slider."""
    return get_model(source).next_token_logits(list(ids)).cpu().numpy()  # the UI edge: to the CPU


def read_prompt(source: str, ids: tuple[int, ...]) -> None:
    """Read a long prompt the model has not read yet, with a progress bar: the calls after this one
    (cached logits, generation) then find it in the model's prefix store and read only what follows."""
    lm = get_model(source)
    ids = ids[-lm.context_length:]
    if len(ids) <= core.backends.PREFILL_CHUNK or lm.prefixes.longest(ids) >= len(ids) - 1:
        return
    progress, done = reading_progress()
    lm.next_token_logits(list(ids), progress=progress)
    done()


def reading_progress() -> tuple[core.backends.ProgressCallback, Callable[[], None]]:
    """(progress, done) for core's prompt reads: a bar appears once a read spans more than one chunk
    (a short read shows nothing); done() removes it."""
    bar: list = []

    def progress(done: int, total: int) -> None:
        if total <= core.backends.PREFILL_CHUNK:
            return
        if not bar:
            bar.append(st.progress(0.0, text="Reading the prompt…"))
        bar[0].progress(done / total, text=f"Reading the prompt… {done:,} of {total:,} tokens")

    def done() -> None:
        if bar:
            bar[0].empty()

    return progress, done


def prompt_logits(source: str, ids: tuple[int, ...]) -> np.ndarray:
    """`next_token_logits`, with a progress bar first where a long prompt has not been read yet."""
    read_prompt(source, ids)
    return next_token_logits(source, ids)


@st.cache_data(show_spinner=False, max_entries=32)
def dry_breakers(source: str, breakers: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """DRY's sequence breakers as token-id sequences for this model (a scan of the whole vocabulary)."""
    tok = get_model(source).tokenizer
    return core.dry_breaker_ids(breakers, tok.token_text, tok.encode, tok.vocab_size)


def dry_breakers_for(source: str, cfg: core.SamplingConfig) -> tuple[tuple[int, ...], ...] | None:
    """`dry_breakers` where DRY is on, else None (no scan)."""
    return dry_breakers(source, cfg.dry_sequence_breakers) if cfg.dry_multiplier else None


@st.cache_data(show_spinner=False, max_entries=64)
def temperature_sweep(source: str, ids: tuple[int, ...], cfg: core.SamplingConfig, temperatures: tuple[float, ...],
                      request: tuple[tuple[str, object], ...]) -> core.TemperatureSweep:
    """core.temperature_sweep on the cached logits after ids; `request` as pipeline's keywords, as pairs."""
    logits = torch.from_numpy(next_token_logits(source, ids).copy())
    return core.temperature_sweep(logits, cfg, temperatures, **dict(request))


@st.cache_data(show_spinner=False, max_entries=256)
def encode_prompt(source: str, text: str, mode: str) -> tuple[int, ...]:
    return tuple(get_model(source).encode_prompt(text, mode))


def save_upload(name: str, data: bytes) -> str:
    """Store an uploaded checkpoint under its content hash; return the path to load it from."""
    suffix = Path(name).suffix.lower()
    if suffix not in (".pth", ".pt", ".safetensors"):
        raise core.WeightsError(f"{name}: only .pth, .pt and .safetensors files can be uploaded")
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_DIR / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)

