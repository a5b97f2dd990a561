"""The one model interface every caller uses: a prompt read (prefill) and a batched one-token step."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..models import DecoderModel, KVCache

ProgressCallback = Callable[[int, int], None]  # (prompt tokens read so far, tokens to read)
PREFILL_CHUNK = 256  # tokens per forward while reading a prompt: progress shows, attention stays small


class BackendUnavailable(RuntimeError):
    """This backend does not apply here (device, dtype or library); the message says why."""


class Backend(ABC):
    """Runs one model for many requests; each request's state (its KV cache) is passed in, never kept.

    `prefill` reads tokens into a state and returns the logits after the last one; `step` advances
    every row of a state by one token. Rows are independent: a row's logits are what it gets alone
    (the fast backend: the same bits; torch's batched matmuls: float32 rounding aside). Logits are
    float32 on the backend's device, one row per state row.
    `top_n` says what a backend reports: None means logits for the whole vocabulary; an engine that
    reports only its top N tokens (an OpenAI-compatible server) says N, and the other entries are -inf.
    """

    name: ClassVar[str]
    top_n: ClassVar[int | None] = None

    def __init__(self, model: DecoderModel) -> None:
        self.model = model  # the plain nn.Module: the reference, and the owner of the weights

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.tok_emb.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    @property
    def context_length(self) -> int:
        return self.model.cfg.context_length

    def new_state(self, batch: int, max_len: int) -> KVCache:
        """An empty per-request state for `batch` rows of up to max_len tokens."""
        return self.model.new_cache(batch, max_len)

    def prefill(self, ids: Tensor, state: KVCache, progress: ProgressCallback | None = None) -> Tensor:
        """Read ids (B, T) after what state holds; logits (B, V) for the token after the last one.
        Long inputs go in chunks that end at multiples of PREFILL_CHUNK (absolute positions), calling
        progress(done, T) after each. So a read resumed at such a multiple runs the very products a
        fresh read runs: whole chunks read from an exact start advance `state.exact`."""
        total = ids.shape[1]
        if total == 0:
            raise ValueError("prefill needs at least one token")
        done = 0
        while done < total:
            start = state.pos
            n = min(PREFILL_CHUNK - start % PREFILL_CHUNK, total - done)
            logits = self.forward(ids[:, done:done + n], state)
            if n == PREFILL_CHUNK and state.exact == start:
                state.exact = state.pos
            done += n
            if progress is not None:
                progress(done, total)
        return logits

    def forward(self, ids: Tensor, state: KVCache) -> Tensor:
        """The torch model on ids (B, T) after state: logits (B, V) for the last position, in float32."""
        return self.model(ids, state, last_only=True)[:, -1].float()

    @abstractmethod
    def step(self, tokens: Tensor, state: KVCache) -> Tensor:
        """One token per state row, tokens (B,) -> logits (B, V); advances state by one position."""

    # whether step_many runs several requests' rows as one batch (each row with its alone bits)
    batches_requests: ClassVar[bool] = False

    def step_many(self, requests: Sequence[tuple[Tensor, KVCache]]) -> list[Tensor | Exception]:
        """`step` for several requests (tokens, state), each state at its own position: per request,
        its logits or the exception its step raised (a failing request never fails the others).
        Here one request after another, so each gets exactly what it gets alone (torch's batched
        matmuls are not batch-invariant on every device); a backend whose rows are batch-invariant
        runs them as one batch (the fast backend)."""
        out: list[Tensor | Exception] = []
        for tokens, state in requests:
            try:
                out.append(self.step(tokens, state))
            except Exception as e:  # noqa: BLE001 - handed to that request's caller
                out.append(e)
        return out
