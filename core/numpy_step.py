"""The one-token decode step for a batch of one, in numpy: the path every generated token takes.

A decode step is four GEMVs per block and about twenty small ops around them. In a real step each
small torch op cost 5-20 us (dispatch, and caches the GEMVs had just flushed by streaming megabytes
of weights): about a quarter of a SmolLM2 step. numpy runs the same small ops for a fraction of
that. The GEMVs are core.parallel's (OpenBLAS, one core or two), and the KV cache is the request's
own (numpy views of its tensors), so a prefill in torch and the steps after it share one cache.
The same bits on one core or two; float32 rounding aside, the same logits as the torch forward
(tests/test_numpy_step.py compares them). The models build these arrays only for float32 weights
on the CPU where numpy has OpenBLAS; otherwise their torch forward runs every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import GPTConfig, LlamaConfig
from .parallel import BLAS, Gemv, row_product


@dataclass(frozen=True, eq=False)  # eq would compare arrays
class RowProj:
    """A linear layer for one row: the weight's OpenBLAS view, its output width, its bias."""

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


KV = list[tuple[np.ndarray, np.ndarray]]  # per layer: keys, values (n_kv_heads, max_len, head_dim)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Hugging Face's RMSNorm of one row: weight * (x / sqrt(mean(x^2) + eps))."""
    y = x * np.float32(1.0 / math.sqrt(float(np.dot(x, x)) / x.size + eps))
    y *= weight
    return y


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm of one row (biased variance, as torch's)."""
    d = x - np.float32(float(np.add.reduce(x)) / x.size)
    y = d * np.float32(1.0 / math.sqrt(float(np.dot(d, d)) / x.size + eps))
    y *= weight
    y += bias
    return y


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of x (heads, hd) at one position: models.apply_rope's math. cos (hd,) and
    sin (2, hd/2), the sin's first half negated as `rope_tables` stores it."""
    n, hd = x.shape
    y = x * cos
    y += (x.reshape(n, 2, hd // 2)[:, ::-1] * sin).reshape(n, hd)  # [x2, x1] * [-sin, sin]
    return y


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One query per head, q (H, hd), over every cached position, k and v (H_kv, T, hd); heads
    grouped as Llama's grouped-query attention groups them. Returns the heads' outputs, (H * hd,)."""
    n_kv, _, hd = k.shape
    # small GEMMs: on one thread, whatever count the last GEMV left (bits must not depend on it)
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
    """The residual y + x, into y (a GEMV's fresh output); x may be a view of the embedding table."""
    y += x
    return y


def llama_step(a: DecoderArrays, cfg: LlamaConfig, token: int, pos: int, kv: KV,
               cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Logits (V,) of `token` at position `pos`; writes its keys and values into kv at pos.
    cos, sin: this position's rows of models.rope_tables, sin as (2, hd/2)."""
    nh, nkv, hd, hidden, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim, cfg.norm_eps
    x = a.tok_emb[token]
    for w, (keys, values) in zip(a.blocks, kv):
        qkv = w.qkv(rms_norm(x, w.attn_norm, eps))
        qk = rope(qkv[:(nh + nkv) * hd].reshape(nh + nkv, hd), cos, sin)  # q and k rotated together
        keys[:, pos] = qk[nh:]
        values[:, pos] = qkv[(nh + nkv) * hd:].reshape(nkv, hd)
        x = _plus(w.o(attend(qk[:nh], keys[:, :pos + 1], values[:, :pos + 1])), x)
        gate_up = w.gate_up(rms_norm(x, w.ffn_norm, eps))
        x = _plus(w.down(silu_times(gate_up[:hidden], gate_up[hidden:])), x)
    return a.head(rms_norm(x, *a.final_norm, eps))


def gpt_step(a: DecoderArrays, cfg: GPTConfig, token: int, pos: int, kv: KV) -> np.ndarray:
    """Logits (V,) of `token` at position `pos`; writes its keys and values into kv at pos."""
    d, h, eps = cfg.emb_dim, cfg.n_heads, cfg.norm_eps
    x = a.tok_emb[token] + a.pos_emb[pos]
    for w, (keys, values) in zip(a.blocks, kv):
        qkv = w.qkv(layer_norm(x, *w.norm1, eps))
        keys[:, pos] = qkv[d:2 * d].reshape(h, -1)
        values[:, pos] = qkv[2 * d:].reshape(h, -1)
        x = _plus(w.out(attend(qkv[:d].reshape(h, -1), keys[:, :pos + 1], values[:, :pos + 1])), x)
        x = _plus(w.fc_out(gelu(w.fc_in(layer_norm(x, *w.norm2, eps)))), x)
    return a.head(layer_norm(x, *a.final_norm, eps))
