"""The fast CPU backend: float32 decode steps in numpy on numpy's OpenBLAS, one core or two.

It owns everything machine-specific: packed weight copies (openblas.py), the numpy step
(numpy_step.py) and the core policy (cores.py). Prompts are read by the torch model, into the same
per-request KV cache the numpy step then extends. Only core.backends.choose imports this package.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...config import GPTConfig
from ...models import DecoderModel, GPTModel, KVCache, rope_tables
from .. import base
from ..base import Backend, BackendUnavailable, ProgressCallback
from .cores import GOVERNOR, LEASE
from .many_step import gpt_step_rows, llama_step_rows
from .numpy_step import DecoderArrays, GPTBlockArrays, LlamaBlockArrays, RowProj, gpt_step, llama_step
from .openblas import BLAS, packed, shared


def _view(t: Tensor) -> np.ndarray:
    return t.detach().numpy()  # the model's own memory, no copy


@dataclass(frozen=True, eq=False)
class Stacked:
    """Several products on one input, their outputs side by side (q/k/v, gate/up without a fused copy)."""

    parts: tuple[RowProj, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([p(x) for p in self.parts], axis=-1)


def _proj(weights: tuple[Tensor, ...], bias: Tensor | None = None, own: bool = False,
          pack: bool = True) -> RowProj | Stacked:
    """A product for the numpy step. pack: one padded column-major copy of the weights stacked (it
    streams faster for the wide outputs); otherwise, and with `own`, the model's own row-major weights
    (no copy). `own` marks the products where a copy earned nothing: the wide-input down projection
    and the square output projection (one thread's CPU time per step, packed against own: GPT-2
    5.7 vs 5.8 ms, SmolLM2 3.2 vs 3.5 ms, for 27 / 40 MiB of copies)."""
    b = None if bias is None else _view(bias)
    if pack and not own:
        return RowProj(packed(*weights), sum(w.shape[0] for w in weights), b)
    parts = tuple(RowProj(shared(w), w.shape[0], b) for w in weights)
    return parts[0] if len(parts) == 1 else Stacked(parts)


def _arrays(model: DecoderModel, pack: bool) -> DecoderArrays:
    proj = functools.partial(_proj, pack=pack)
    head = proj((model.head_weight,))
    norm = tuple(_view(t) for t in model.final_norm.parameters())
    if isinstance(model, GPTModel):
        blocks = tuple(GPTBlockArrays((_view(b.norm1.weight), _view(b.norm1.bias)),
                                      proj((b.att.qkv.weight,), b.att.qkv.bias),
                                      proj((b.att.out_proj.weight,), b.att.out_proj.bias, own=True),
                                      (_view(b.norm2.weight), _view(b.norm2.bias)),
                                      proj((b.ff[0].weight,), b.ff[0].bias),
                                      proj((b.ff[2].weight,), b.ff[2].bias, own=True))
                       for b in model.blocks)
        return DecoderArrays(_view(model.tok_emb.weight), _view(model.pos_emb.weight), blocks, norm, head)
    blocks = tuple(LlamaBlockArrays(_view(b.attn_norm.weight),
                                    proj((b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight)),
                                    proj((b.attn.o_proj.weight,), own=True), _view(b.ffn_norm.weight),
                                    proj((b.mlp.gate_proj.weight, b.mlp.up_proj.weight)),
                                    proj((b.mlp.down_proj.weight,), own=True))
                   for b in model.blocks)
    return DecoderArrays(_view(model.tok_emb.weight), None, blocks, norm, head)


class FastCPUBackend(Backend):
    """float32 on the CPU where numpy has OpenBLAS; raises BackendUnavailable elsewhere.
    pack=False shares every weight with the plain model (no copies, slower products; bench/ compares)."""

    name = "fast"

    def __init__(self, model: DecoderModel, pack: bool = True) -> None:
        super().__init__(model)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise BackendUnavailable(f"the fast backend runs float32 on the CPU, not {self.dtype} on {self.device}")
        if BLAS is None:
            raise BackendUnavailable("numpy here has no OpenBLAS whose threads can be set")
        self._pack, self._arrays, self._packing = pack, None, threading.Lock()
        if not isinstance(model.cfg, GPTConfig):
            cos, sin = rope_tables(model.cfg.head_dim, model.cfg.rope_base, model.cfg.context_length)
            half = sin.shape[1] // 2
            self._cos = cos.numpy()
            self._sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=1).reshape(len(sin), 2, half).numpy()

    @property
    def arrays(self) -> DecoderArrays:
        """The numpy step's weights, packed on first use (a prompt is read by the torch model, so a
        first chart never waits for the copies, ~1-3 s of new memory here; the first generated token does)."""
        if self._arrays is None:
            with self._packing:
                if self._arrays is None:
                    with LEASE.hold(two=True):  # checking each shape's two-thread bits changes the thread count
                        self._arrays = _arrays(self.model, self._pack)
        return self._arrays

    def prefill(self, ids: Tensor, state: KVCache, progress: ProgressCallback | None = None) -> Tensor:
        # one token after a stored prefix (an appended token): a decode step. Not on the chunk grid,
        # where exact reads resume (a fresh read runs the torch forward there)
        if ids.shape[1] == 1 and state.pos % base.PREFILL_CHUNK:
            logits = self.step(ids[:, 0], state)
            if progress is not None:
                progress(1, 1)
            return logits
        GOVERNOR.begin(id(state))  # a prompt being read takes a core: other requests' steps use one
        try:
            return super().prefill(ids, state, progress)
        finally:
            GOVERNOR.finish(id(state))

    def step(self, tokens: Tensor, state: KVCache) -> Tensor:
        pos = state.pos
        if pos + 1 > min(state.max_len, self.context_length):
            raise ValueError(f"sequence of {pos + 1} tokens exceeds the context length {self.context_length} "
                             f"or the cache's max_len {state.max_len}")
        if state.k[0].dtype != torch.float32 or state.k[0].device.type != "cpu":
            return super().forward(tokens.view(-1, 1), state)  # a state made elsewhere: the torch model reads it
        kv = [(k.numpy(), v.numpy()) for k, v in zip(state.k, state.v)]
        toks = tokens.reshape(-1).numpy()
        arrays = self.arrays  # outside the lease: packing takes it itself
        with LEASE.hold(GOVERNOR.allow(id(state))):  # same bits on one core or two
            if isinstance(self.model, GPTModel):
                logits = gpt_step(arrays, self.model.cfg, toks, pos, kv)
            else:
                logits = llama_step(arrays, self.model.cfg, toks, pos, kv, self._cos[pos], self._sin[pos])
        state.pos = pos + 1
        return torch.from_numpy(logits)

    batches_requests = True

    def step_many(self, requests: Sequence[tuple[Tensor, KVCache]]) -> list[Tensor | Exception]:
        """Every row of every request in one numpy step (rows at their own positions, each in its own
        cache), each row with the bits it gets alone; a request that cannot step gets its exception.
        One request alone takes `step`, its very path."""
        out: list[Tensor | Exception | None] = [None] * len(requests)
        ready: list[int] = []
        for i, (tokens, state) in enumerate(requests):
            if state.pos + 1 > min(state.max_len, self.context_length) or state.k[0].dtype != torch.float32 \
                    or state.k[0].device.type != "cpu" or tokens.numel() != state.batch:
                out[i] = Backend.step_many(self, [(tokens, state)])[0]  # step's own check and message
            else:
                ready.append(i)
        if len(ready) == 1:
            out[ready[0]] = Backend.step_many(self, [requests[ready[0]]])[0]
        elif ready:
            try:
                for i, logits in zip(ready, self._step_rows([requests[i] for i in ready])):
                    out[i] = logits
            except Exception:  # noqa: BLE001 - should not happen; then each alone, so only the culprit fails
                for i in ready:
                    out[i] = Backend.step_many(self, [requests[i]])[0]
        return out  # type: ignore[return-value]

    def _step_rows(self, requests: Sequence[tuple[Tensor, KVCache]]) -> list[Tensor]:
        toks = np.concatenate([t.reshape(-1).numpy() for t, _ in requests])
        positions = np.concatenate([np.full(s.batch, s.pos, np.int64) for _, s in requests])
        kv = [[(k[r], v[r]) for _, s in requests for k, v in [(s.k[layer].numpy(), s.v[layer].numpy())]
               for r in range(s.batch)] for layer in range(len(self.model.blocks))]
        arrays = self.arrays
        with LEASE.hold(GOVERNOR.allow(id(self))):  # the scheduler's steps count as one request
            if isinstance(self.model, GPTModel):
                logits = gpt_step_rows(arrays, self.model.cfg, toks, positions, kv)
            else:
                logits = llama_step_rows(arrays, self.model.cfg, toks, positions, kv, self._cos[positions],
                                         self._sin[positions])
        out, start = [], 0
        for _, state in requests:
            state.pos += 1
            out.append(torch.from_numpy(logits[start:start + state.batch]))
            start += state.batch
        return out
