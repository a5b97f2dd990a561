"""The one-token decode step in numpy, for one cache row or several: the fast backend's every token.

A decode step is four GEMVs per block and about twenty small ops around them. In torch each small
op cost 5-20 us (dispatch, and caches the GEMVs had just flushed by streaming megabytes of
weights): about a quarter of a SmolLM2 step. numpy runs the same small ops for a fraction of that.
The GEMVs are openblas.py's (one core or two), and the KV cache is the request's own (numpy views
of its tensors), so a prefill in torch and the steps after it share one cache. The same bits on one
core or two; float32 rounding aside, the same logits as the torch model (tests compare them).
Several rows (the side-by-side page's columns) step together, each with the bits it gets alone:
the elementwise ops run on all rows at once, while norms, attention and every product run row by row.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...config import GPTConfig, LlamaConfig
from .openblas import BLAS, Gemv, row_product, two_cores


@dataclass(frozen=True, eq=False)  # eq would compare arrays
class RowProj:
    """A linear layer for rows (b, in) or one row: the weight's OpenBLAS view, its output width, its bias."""

    gemv: Gemv
    out: int
    bias: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return row_product(self.gemv, x, self.out, self.bias)


@dataclass(frozen=True, eq=False)
class LlamaBlockArrays:
    attn_norm: np.ndarray
    qkv: RowProj
    o: RowProj
    ffn_norm: np.ndarray
    gate_up: RowProj
    down: RowProj


@dataclass(frozen=True, eq=False)
class GPTBlockArrays:
    norm1: tuple[np.ndarray, np.ndarray]  # LayerNorm weight, bias
    qkv: RowProj
    out: RowProj
    norm2: tuple[np.ndarray, np.ndarray]
    fc_in: RowProj
    fc_out: RowProj


@dataclass(frozen=True, eq=False)
class DecoderArrays:
    """A whole model's weights as numpy views (no copies) for `llama_step` / `gpt_step`."""

    tok_emb: np.ndarray                    # (V, D), any strides
    pos_emb: np.ndarray | None             # GPT-2's learned positions (context, D); None for Llama
    blocks: tuple[LlamaBlockArrays, ...] | tuple[GPTBlockArrays, ...]
    final_norm: tuple[np.ndarray, ...]     # RMSNorm (weight,) or LayerNorm (weight, bias)
    head: RowProj


KV = list[tuple[np.ndarray, np.ndarray]]  # per layer: keys, values (batch, n_kv_heads, max_len, head_dim)


def _per_row(x: np.ndarray, f: Callable[[np.ndarray], float]) -> np.ndarray | np.float32:
    """f of each row of x (..., D) as float32, shaped to broadcast against x: one row at a time, so a
    row's bits never depend on the rows beside it."""
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) == 1:
        return np.float32(f(rows[0]))  # a scalar: the one-row step, every token's path, stays lean
    return np.array([f(r) for r in rows], np.float32).reshape(*x.shape[:-1], 1)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Hugging Face's RMSNorm of each row of x (..., D): weight * (x / sqrt(mean(x^2) + eps))."""
    y = x * _per_row(x, lambda r: 1.0 / math.sqrt(float(np.dot(r, r)) / r.size + eps))
    y *= weight
    return y


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm of each row of x (..., D) (biased variance, as torch's)."""
    d = x - _per_row(x, lambda r: float(np.add.reduce(r)) / r.size)
    y = d * _per_row(d, lambda r: 1.0 / math.sqrt(float(np.dot(r, r)) / r.size + eps))
    y *= weight
    y += bias
    return y


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of x (..., heads, hd) at one position: core.models.apply_rope's math. cos (hd,)
    and sin (2, hd/2), the sin's first half negated."""
    hd = x.shape[-1]
    y = x * cos
    y += (x.reshape(*x.shape[:-1], 2, hd // 2)[..., ::-1, :] * sin).reshape(x.shape)  # [x2, x1] * [-sin, sin]
    return y


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One query per head, q (H, hd), over every cached position, k and v (H_kv, T, hd); heads
    grouped as Llama's grouped-query attention groups them. Returns the heads' outputs, (H * hd,)."""
    n_kv, _, hd = k.shape
    # small GEMMs: on one thread, whatever count the last GEMV left (bits must not depend on it)
    if two_cores.get():
        BLAS.threads(1)
    # keys times each group's queries, (T, hd) @ (hd, group), batched: OpenBLAS ran this 2x faster
    # than queries times transposed keys for SmolLM2's groups of 3 at 500 keys. The queries are
    # scaled first (hd numbers per head, not T), into a fresh (H_kv, hd, group) array.
    queries = np.multiply(q.reshape(n_kv, -1, hd).transpose(0, 2, 1), np.float32(1.0 / math.sqrt(hd)),
                          out=np.empty((n_kv, hd, q.shape[0] // n_kv), np.float32))
    s = np.ascontiguousarray(np.matmul(k, queries).transpose(0, 2, 1))          # (H_kv, group, T)
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return np.matmul(s, v).reshape(-1)


def silu_times(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU's silu(gate) * up: gate / (1 + exp(-gate)) * up."""
    h = np.negative(gate)
    np.exp(h, out=h)
    h += 1
    np.divide(gate, h, out=h)
    h *= up
    return h


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU, through torch: one op there against about nine in numpy."""
    return F.gelu(torch.from_numpy(x), approximate="tanh").numpy()


def _plus(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The residual y + x, into y (a GEMV's fresh output)."""
    y += x
    return y


def _attend_rows(q: np.ndarray, keys: np.ndarray, values: np.ndarray, end: int) -> np.ndarray:
    """`attend` for each row: q (b, H, hd) over its own cache row's first `end` positions; (b, H * hd)."""
    rows = [attend(q[i], keys[i, :, :end], values[i, :, :end]) for i in range(len(q))]
    return rows[0][None] if len(rows) == 1 else np.stack(rows)  # one row: a view, not a copy


def llama_step(a: DecoderArrays, cfg: LlamaConfig, tokens: np.ndarray, pos: int, kv: KV,
               cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Logits (b, V) of tokens (b,), one per cache row, at position `pos`; writes their keys and values
    into kv at pos. cos (hd,), sin (2, hd/2): this position's RoPE angles, the sin's first half negated."""
    nh, nkv, hd, hidden, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim, cfg.norm_eps
    x = a.tok_emb[tokens]
    b = len(x)
    for w, (keys, values) in zip(a.blocks, kv):
        qkv = w.qkv(rms_norm(x, w.attn_norm, eps))
        qk = rope(qkv[:, :(nh + nkv) * hd].reshape(b, nh + nkv, hd), cos, sin)  # q and k rotated together
        keys[:, :, pos] = qk[:, nh:]
        values[:, :, pos] = qkv[:, (nh + nkv) * hd:].reshape(b, nkv, hd)
        x = _plus(w.o(_attend_rows(qk[:, :nh], keys, values, pos + 1)), x)
        gate_up = w.gate_up(rms_norm(x, w.ffn_norm, eps))
        x = _plus(w.down(silu_times(gate_up[:, :hidden], gate_up[:, hidden:])), x)
    return a.head(rms_norm(x, *a.final_norm, eps))


def gpt_step(a: DecoderArrays, cfg: GPTConfig, tokens: np.ndarray, pos: int, kv: KV) -> np.ndarray:
    """Logits (b, V) of tokens (b,), one per cache row, at position `pos`; writes their keys and values
    into kv at pos."""
    d, h, eps = cfg.emb_dim, cfg.n_heads, cfg.norm_eps
    x = a.tok_emb[tokens] + a.pos_emb[pos]
    b = len(x)
    for w, (keys, values) in zip(a.blocks, kv):
        qkv = w.qkv(layer_norm(x, *w.norm1, eps))
        keys[:, :, pos] = qkv[:, d:2 * d].reshape(b, h, -1)
        values[:, :, pos] = qkv[:, 2 * d:].reshape(b, h, -1)
        x = _plus(w.out(_attend_rows(qkv[:, :d].reshape(b, h, -1), keys, values, pos + 1)), x)
        x = _plus(w.fc_out(gelu(w.fc_in(layer_norm(x, *w.norm2, eps)))), x)
    return a.head(layer_norm(x, *a.final_norm, eps))
