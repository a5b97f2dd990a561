"""Backends: who runs the model. One interface (`Backend`: prefill, a batched one-token step over a
per-request state, device, dtype, what it reports), chosen once per loaded model by `choose`.

- `torch` (torch_backend.py): the plain model in core/models.py, on any device and dtype; the reference.
- `fast` (fast/): float32 on the CPU with numpy's OpenBLAS, its own packed weights and core policy;
  chosen by default where it applies. Nothing else imports it.
"""
from __future__ import annotations

import os

from ..models import DecoderModel
from .base import PREFILL_CHUNK, Backend, BackendUnavailable, ProgressCallback
from .torch_backend import TorchBackend

BACKEND_ENV = "SAMPLING_LAB_BACKEND"
NAMES = ("torch", "fast")


def choose(model: DecoderModel, name: str | None = None) -> Backend:
    """The backend for model: `name` ("torch" or "fast"), else $SAMPLING_LAB_BACKEND, else the fast
    one where it applies (float32 on the CPU, OpenBLAS found) and the plain one everywhere else.
    Asking for "fast" where it does not apply raises BackendUnavailable with the reason."""
    asked = name if name is not None else (os.environ.get(BACKEND_ENV, "").strip().lower() or None)
    if asked is not None and asked not in NAMES:
        source = "backend" if name is not None else BACKEND_ENV
        raise ValueError(f"{source} must be one of {', '.join(NAMES)}, got {asked!r}")
    if asked == "torch":
        return TorchBackend(model)
    from .fast import FastCPUBackend  # the only import of the fast path
    try:
        return FastCPUBackend(model)
    except BackendUnavailable:
        if asked == "fast":
            raise
        return TorchBackend(model)


__all__ = ["BACKEND_ENV", "PREFILL_CHUNK", "Backend", "BackendUnavailable", "ProgressCallback", "TorchBackend",
           "choose"]
