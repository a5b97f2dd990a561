"""GPT-2 and Llama (SmolLM2) as small PyTorch modules: the reference every backend is checked against.

Written to be read next to "Build a Large Language Model (From Scratch)" and nanoGPT: one module per
idea, shape comments where a tensor changes shape. A loaded model is shared by every browser
session, so it holds no per-request state: the `KVCache` is created for each request and passed
into `forward`. Every tensor is made on the device of the model's weights, in their dtype, so
`model.to("cuda")` or `.to(torch.bfloat16)` is all it takes to run elsewhere.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GPTConfig, LlamaConfig


class KVCache:
    """One request's keys and values, preallocated: per layer (B, n_kv_heads, max_len, head_dim).

    `pos` counts the positions already written; every row of the batch is at the same position.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # written before read
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0
        # leading positions a fresh read of the same tokens gives bit for bit (core.backends.base.prefill)
        self.exact = 0

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def repeat_batch(self, batch: int) -> KVCache:
        """A copy with each row of this batch-1 cache repeated `batch` times (several continuations of one prompt)."""
        if batch == 1:
            return self
        out = KVCache.__new__(KVCache)
        out.k = [k.expand(batch, -1, -1, -1).clone() for k in self.k]
        out.v = [v.expand(batch, -1, -1, -1).clone() for v in self.v]
        out.max_len, out.pos, out.exact = self.max_len, self.pos, self.exact
        return out

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, n_kv, T, hd) at the current position; return the keys/values so far (B, n_kv, pos+T, hd)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q (B, H, T, hd) attends over k, v (B, H_kv, past+T, hd): each query sees itself and what came before."""
    t, total = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if t == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if t == total:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(t, total, dtype=torch.bool, device=q.device).tril(diagonal=total - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _embedding(n: int, dim: int) -> nn.Embedding:
    """nn.Embedding without its random init on the meta device (where weights.load_checked builds
    models): normal_ there imports torch._dynamo, about a second of every cold start."""
    weight = torch.empty(n, dim)
    return nn.Embedding(n, dim, _weight=weight if weight.is_meta else None)


class Decoder(nn.Module):
    """What GPT-2 and Llama share: token embedding, blocks, final norm, LM head (tied to the embedding or not)."""

    cfg: GPTConfig | LlamaConfig

    def __init__(self, cfg: GPTConfig | LlamaConfig, blocks: list[nn.Module], final_norm: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = _embedding(cfg.vocab_size, cfg.emb_dim)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        # tied: the head is the embedding matrix itself, so the state dict holds it once
        self.out_head = None if cfg.tied_head else nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)

    @property
    def head_weight(self) -> Tensor:
        return self.tok_emb.weight if self.out_head is None else self.out_head.weight

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache for `batch` rows of up to max_len tokens, on the weights' device and dtype."""
        c, w = self.cfg, self.tok_emb.weight
        return KVCache(c.n_layers, batch, getattr(c, "n_kv_heads", c.n_heads), max_len, c.head_dim,
                       dtype=w.dtype, device=w.device)

    def embed(self, idx: Tensor, start: int) -> Tensor:
        raise NotImplementedError

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """idx (B, T) token ids -> logits (B, T, V), or (B, 1, V) with last_only; advances cache by T."""
        start = 0 if cache is None else cache.pos
        if start + idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"sequence of {start + idx.shape[1]} tokens exceeds the context length "
                             f"{self.cfg.context_length}")
        x = self.embed(idx, start)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, i, cache, start)
        if cache is not None:
            cache.pos += idx.shape[1]
        if last_only:
            x = x[:, -1:]  # the LM head is the costliest matmul: skip positions nobody reads
        return F.linear(self.final_norm(x), self.head_weight)  # (B, T, V)


# ---------------------------------------------------------------- GPT-2

class GPTAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection (as GPT-2's checkpoints store it)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, past+T, hd)
        y = causal_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.att = GPTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.ff = nn.Sequential(nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), nn.GELU(approximate="tanh"),
                                nn.Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, start: int) -> Tensor:
        x = x + self.att(self.norm1(x), layer, cache)
        return x + self.ff(self.norm2(x))


class GPTModel(Decoder):
    """GPT-2 as in the book: learned positions, pre-norm blocks, GELU MLP, LM head tied to the embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__(cfg, [GPTBlock(cfg) for _ in range(cfg.n_layers)], nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps))
        self.pos_emb = _embedding(cfg.context_length, cfg.emb_dim)

    def embed(self, idx: Tensor, start: int) -> Tensor:
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, D)


# ---------------------------------------------------------------- Llama

@functools.lru_cache(maxsize=8)
def rope_tables(head_dim: int, base: float, length: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """cos and sin tables (length, head_dim) for "rotate half" RoPE, in float32 as Hugging Face
    computes them (so logits match transformers); cached per device and never mutated."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.int64, device=device).float(), inv_freq)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on x's last dim: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RMSNorm(nn.Module):
    """Hugging Face's RMSNorm: weight * x / sqrt(mean(x^2) + eps), computed in float32 (or float64)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE: n_heads queries share n_kv_heads keys/values."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.emb_dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.emb_dim, bias=False)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, start: int) -> Tensor:
        b, t, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.k_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = self.v_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = rope_tables(c.head_dim, c.rope_base, c.context_length, str(x.device))
        cos, sin = cos[start:start + t].to(x.dtype), sin[start:start + t].to(x.dtype)  # (T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, past+T, hd)
        y = causal_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.n_heads * c.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, start: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), layer, cache, start)
        return x + self.mlp(self.ffn_norm(x))


class LlamaModel(Decoder):
    """Llama (SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU; no position embedding."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__(cfg, [LlamaBlock(cfg) for _ in range(cfg.n_layers)], RMSNorm(cfg.emb_dim, cfg.norm_eps))

    def embed(self, idx: Tensor, start: int) -> Tensor:
        return self.tok_emb(idx)  # (B, T, D)


DecoderModel = GPTModel | LlamaModel


def build_model(cfg: GPTConfig | LlamaConfig) -> DecoderModel:
    return GPTModel(cfg) if isinstance(cfg, GPTConfig) else LlamaModel(cfg)
