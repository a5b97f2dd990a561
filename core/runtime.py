"""Process-wide runtime settings: torch threads, and the optional bfloat16 (approximate) mode.

Measured on the project's 2-core CPU (bench/RESULTS.md): with the other core busy (the Streamlit
server, a second session, a browser), two torch threads wait on each other and decode is about 2x
slower than with one, and MKL's one-row matmuls gain nothing from a second thread anyway. So the
default is one thread, overridable with SAMPLING_LAB_THREADS; decode steps get the second core
through core/parallel.py (numpy's OpenBLAS), only while it is free.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from .loading import LanguageModel

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
    with torch.device("meta"):  # no random init: every tensor comes from lm
        model = type(lm.model)(lm.model.cfg)
    # load_state_dict's post-hook re-runs prepare_for_inference (fusion, layout) on the new weights
    model.load_state_dict({k: v.to(dtype) for k, v in lm.model.state_dict().items()}, strict=True, assign=True)
    return replace(lm, model=model.eval().requires_grad_(False), name=f"{lm.name} (bfloat16, approximate)")
