"""The remote backend: an inference engine (llama.cpp's server, vLLM) behind the one `Backend` interface.

The engine computes the next-token distribution; sampling stays in `core` (seeded generator, common
random numbers across columns). A request's state is its token ids, one list per row: each prefill or
step sends a row's whole sequence, and the engine's prefix cache (llama.cpp `cache_prompt`, vLLM's
automatic prefix caching) reads only what is new. Logits are the engine's raw log-probabilities as
reported: their softmax is the engine's distribution when it reports the whole vocabulary (`top_n`
None); an engine that reports only its top N gives -inf for every other token, and
`1 - exp(logits).sum()` is the probability it did not report (never renormalised here).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import torch
from torch import Tensor

from ..engines.client import EngineClient
from ..prefix_cache import PrefixStore
from .base import Backend, ProgressCallback


class TokenState:
    """One request's state on an engine: the token ids of each row (what a KV cache would hold).
    Duck-types `KVCache` where callers use it (pos, exact, max_len, batch, nbytes, repeat_batch)."""

    def __init__(self, batch: int, max_len: int) -> None:
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.max_len = max_len
        self.exact = 0
        self.k: list[Tensor] = []  # no tensors: a prefix store copies nothing
        self.v: list[Tensor] = []

    @property
    def pos(self) -> int:
        return len(self.rows[0])

    @pos.setter
    def pos(self, n: int) -> None:
        for r in self.rows:
            del r[n:]

    @property
    def batch(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return 0

    def repeat_batch(self, batch: int) -> TokenState:
        if batch == 1:
            return self
        out = TokenState(batch, self.max_len)
        out.rows = [list(self.rows[0]) for _ in range(batch)]
        out.exact = self.exact
        return out

    def append(self, tokens: list[list[int]]) -> None:
        end = self.pos + len(tokens[0])
        if end > self.max_len:
            raise ValueError(f"state overflow: {end} tokens > max_len {self.max_len}")
        for row, new in zip(self.rows, tokens):
            row.extend(new)


class RemoteBackend(Backend):
    """An OpenAI-compatible engine as a backend. `top_n`: None when the engine reports the whole
    vocabulary, else how many tokens it reports per position (the rest are -inf)."""

    name: ClassVar[str] = "remote"

    def __init__(self, client: EngineClient, vocab_size: int, context_length: int, top_n: int | None = None,
                 parallel: int = 2, cache_prompt: bool = False) -> None:
        self.model = None  # no weights in this process
        self.client = client
        self._vocab, self._context = int(vocab_size), int(context_length)
        self.top_n = top_n  # an instance attribute: each engine says its own
        # llama.cpp's prompt cache re-reads only new tokens, in batches whose shapes depend on what a
        # slot held before: ~1e-3 off a cold read, so the same seed could give another text. Off: every
        # request reads its whole sequence (slower on long prompts, reproducible).
        self.cache_prompt = cache_prompt
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="sampling-lab engine")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def context_length(self) -> int:
        return self._context

    def new_state(self, batch: int, max_len: int) -> TokenState:
        return TokenState(batch, max_len)

    def logits_after(self, ids: list[int]) -> Tensor:
        """(V,) float32: the engine's log-probabilities after ids, -inf where it reported nothing."""
        report = self.client.next_token(ids, self.top_n, vocab_size=self._vocab, cache_prompt=self.cache_prompt)
        return report.dense_logprobs(self._vocab)

    def _query(self, state: TokenState) -> Tensor:
        rows = state.rows
        if all(r == rows[0] for r in rows[1:]):  # columns that share their text share one request
            return self.logits_after(rows[0]).expand(len(rows), -1)
        return torch.stack(list(self._pool.map(self.logits_after, rows)))

    def prefill(self, ids: Tensor, state: TokenState, progress: ProgressCallback | None = None) -> Tensor:
        total = ids.shape[1]
        if total == 0:
            raise ValueError("prefill needs at least one token")
        state.append(ids.tolist())
        logits = self._query(state)
        state.exact = state.pos  # the engine reads the whole sequence every time: nothing to re-read
        if progress is not None:
            progress(total, total)
        return logits

    def forward(self, ids: Tensor, state: TokenState) -> Tensor:
        return self.prefill(ids, state)

    def step(self, tokens: Tensor, state: TokenState) -> Tensor:
        state.append([[int(t)] for t in tokens.view(-1).tolist()])
        return self._query(state)


class NoPrefixes(PrefixStore):
    """A remote model's prefix store: empty, as the engine keeps its own prefix cache."""

    def __init__(self) -> None:
        super().__init__(max_bytes=0)

    def put(self, ids, state) -> None:  # noqa: ANN001 - the signature of PrefixStore.put
        return None
