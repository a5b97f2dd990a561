"""One decode step for rows of different requests: each row at its own position, in its own KV cache.

numpy_step.py steps the rows of one cache, all at one position. The step scheduler (core/scheduler.py)
gathers the rows of many requests instead, so here every row carries its position and its cache
views. Only what is per position changes: the position embedding or RoPE angles are gathered per row,
each row writes its keys and values into its own cache and attends over its own length. Products,
norms and attention keep numpy_step's per-row bits, so a row gets the bits it gets alone.
"""
from __future__ import annotations

import numpy as np

from ...config import GPTConfig, LlamaConfig
from .numpy_step import DecoderArrays, _plus, attend, gelu, layer_norm, rms_norm, rope, silu_times

# per layer, per row: that row's keys and values (n_kv_heads, max_len, head_dim), views of its cache
RowsKV = list[list[tuple[np.ndarray, np.ndarray]]]


def _write_and_attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: list[tuple[np.ndarray, np.ndarray]],
                      positions: np.ndarray) -> np.ndarray:
    """Store row i's k[i], v[i] (n_kv, hd) at positions[i] of its cache; its query q[i] (H, hd)
    attends over its own positions 0..positions[i]. Returns (rows, H * hd)."""
    out = []
    for i, (keys, values) in enumerate(layer):
        p = int(positions[i])
        keys[:, p] = k[i]
        values[:, p] = v[i]
        out.append(attend(q[i], keys[:, :p + 1], values[:, :p + 1]))
    return np.stack(out)


def llama_step_rows(a: DecoderArrays, cfg: LlamaConfig, tokens: np.ndarray, positions: np.ndarray, kv: RowsKV,
                    cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Logits (b, V) of tokens (b,), row i at positions[i] of its own cache kv[layer][i].
    cos (b, hd) and sin (b, 2, hd/2): each row's RoPE angles (FastCPUBackend's tables, the sin's first half negated)."""
    nh, nkv, hd, hidden, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim, cfg.norm_eps
    x = a.tok_emb[tokens]
    b = len(x)
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    for w, layer in zip(a.blocks, kv):
        qkv = w.qkv(rms_norm(x, w.attn_norm, eps))
        qk = rope(qkv[:, :(nh + nkv) * hd].reshape(b, nh + nkv, hd), cos, sin)  # (b, nh + nkv, hd)
        v = qkv[:, (nh + nkv) * hd:].reshape(b, nkv, hd)
        x = _plus(w.o(_write_and_attend(qk[:, :nh], qk[:, nh:], v, layer, positions)), x)
        gate_up = w.gate_up(rms_norm(x, w.ffn_norm, eps))
        x = _plus(w.down(silu_times(gate_up[:, :hidden], gate_up[:, hidden:])), x)
    return a.head(rms_norm(x, *a.final_norm, eps))


def gpt_step_rows(a: DecoderArrays, cfg: GPTConfig, tokens: np.ndarray, positions: np.ndarray,
                  kv: RowsKV) -> np.ndarray:
    """Logits (b, V) of tokens (b,), row i at positions[i] of its own cache kv[layer][i]."""
    d, h, eps = cfg.emb_dim, cfg.n_heads, cfg.norm_eps
    x = a.tok_emb[tokens] + a.pos_emb[positions]
    b = len(x)
    for w, layer in zip(a.blocks, kv):
        qkv = w.qkv(layer_norm(x, *w.norm1, eps))
        q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(b, h, -1) for i in range(3))  # (b, H, hd)
        x = _plus(w.out(_write_and_attend(q, k, v, layer, positions)), x)
        x = _plus(w.fc_out(gelu(w.fc_in(layer_norm(x, *w.norm2, eps)))), x)
    return a.head(layer_norm(x, *a.final_norm, eps))
