"""Process-wide runtime settings, made once at start-up: torch threads; and the bfloat16 (approximate) mode.

With another core busy (the Streamlit server, a second session, a browser), two torch threads wait
on each other (bench/RESULTS.md), so an app sets one, overridable with SAMPLING_LAB_THREADS; the
fast backend's decode steps take the second core through its own policy (core/backends/fast/cores.py).
"""
from __future__ import annotations

import copy
import os
from dataclasses import replace

import torch

from .loading import LanguageModel, place

DEFAULT_THREADS = 1
THREADS_ENV = "SAMPLING_LAB_THREADS"


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads once per process: n, else $SAMPLING_LAB_THREADS, else 1. Returns it."""
    if n is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        try:
            n = int(raw) if raw else DEFAULT_THREADS
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    n = min(n, os.cpu_count() or n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def approximate(lm: LanguageModel, dtype: torch.dtype = torch.bfloat16) -> LanguageModel:
    """A bfloat16 copy of lm for faster, APPROXIMATE decoding: logits differ from float32 by ~1e-2,
    so probabilities are not exact (label it so in the UI). lm itself is left unchanged.
    next_token_logits still returns float32 logits; the KV cache follows the weights' dtype."""
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"approximate mode needs bfloat16 or float16, got {dtype}")
    copied = replace(lm, model=copy.deepcopy(lm.model), name=f"{lm.name} (bfloat16, approximate)")
    return place(copied, lm.device, dtype, backend="torch")
