"""Stateless decoder models (GPT-2 and Llama) with a per-request KV cache.

A loaded model is shared by every browser session, so it holds no per-request state: the
`KVCache` is created by the caller for each request and passed into `forward`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GPTConfig, LlamaConfig
from .parallel import Gemv, linear, padded_width, prepare


def column_major(w: Tensor) -> nn.Parameter:
    """Same values and shape (out, in), stored (in, out) with zero columns up to a multiple of
    `parallel.ALIGN`: one-row GEMVs stream this layout up to 2x faster than row-major when out is
    the wide side (measured in bench/), and the padding lets OpenBLAS split it evenly in two."""
    return nn.Parameter(_padded_column_major(w.detach()), requires_grad=False)


def row_major(w: Tensor) -> nn.Parameter:
    """(out, in) stored row by row: the faster layout for the GEMVs whose input is the wide side."""
    return nn.Parameter(w.detach().contiguous(), requires_grad=False)


def _padded_column_major(w: Tensor) -> Tensor:
    out, inn = w.shape
    buf = w.new_zeros(inn, padded_width(out))
    buf[:, :out].copy_(w.t())
    return buf[:, :out].t()


def _fuse_column_major(*linears: nn.Linear) -> Tensor:
    """One (sum of outs, in) column-major weight; each Linear's weight becomes a view into it."""
    fused = _padded_column_major(torch.cat([lin.weight.detach() for lin in linears], dim=0))
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start:start + n], requires_grad=False)
        start += n
    return fused


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose one-token steps run on OpenBLAS, on one
    core or two, once `prepare()` has viewed its weight for numpy (see core/parallel.py)."""

    gemv: Gemv | None = None

    def prepare(self) -> None:
        self.gemv = prepare(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.gemv)


def _after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.prepare_for_inference()


class KVCache:
    """Preallocated keys/values for one request: (B, n_kv_heads, max_len, head_dim) per layer."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0  # tokens already stored

    def repeat_batch(self, batch: int) -> "KVCache":
        """Share one batch-1 prefill between several continuations (one copy per row)."""
        if batch == 1:
            return self
        out = KVCache.__new__(KVCache)
        out.k = [k.expand(batch, -1, -1, -1).clone() for k in self.k]
        out.v = [v.expand(batch, -1, -1, -1).clone() for v in self.v]
        out.max_len, out.pos = self.max_len, self.pos
        return out

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, n_kv, T, hd) at the current position; return all keys/values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        keys, values = self.k[layer], self.v[layer]
        keys.narrow(2, self.pos, k.shape[2]).copy_(k)
        values.narrow(2, self.pos, v.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


def _attend(q: Tensor, k: Tensor, v: Tensor, past: int, gqa: bool) -> Tensor:
    """Causal attention of q (B, H, T, hd) over k, v (B, H_kv, past+T, hd)."""
    t = q.shape[2]
    if t == 1:  # one new token sees everything before it
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(t, past + t, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _embedding(n: int, dim: int) -> nn.Embedding:
    """nn.Embedding, without init on the meta device (where load_checked builds models): normal_
    there imports torch._dynamo, about a second of every cold start."""
    weight = torch.empty(n, dim)
    return nn.Embedding(n, dim, _weight=weight if weight.is_meta else None)


class _Decoder(nn.Module):
    """What GPT-2 and Llama share: embedding + tied LM head, the per-request cache, the forward's ends."""

    cfg: GPTConfig | LlamaConfig

    def __init__(self, cfg: GPTConfig | LlamaConfig, final_norm: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = _embedding(cfg.vocab_size, cfg.emb_dim)
        self.final_norm = final_norm
        self.out_head = Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tied_head:
            self.out_head.weight = self.tok_emb.weight
        self.register_load_state_dict_post_hook(_after_load)

    def _layout_head(self) -> None:
        head = column_major(self.out_head.weight)
        self.out_head.weight = head
        if self.cfg.tied_head:
            self.tok_emb.weight = head
        self.out_head.prepare()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.cfg
        return KVCache(c.n_layers, batch, getattr(c, "n_kv_heads", c.n_heads), max_len, c.head_dim,
                       dtype=self.tok_emb.weight.dtype, device=self.tok_emb.weight.device)

    def _start(self, idx: Tensor, cache: KVCache | None) -> int:
        """Position of idx's first token; refuses sequences longer than the context window."""
        start = cache.pos if cache is not None else 0
        if start + idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"sequence of {start + idx.shape[1]} tokens exceeds the context length "
                             f"{self.cfg.context_length}")
        return start

    def _logits(self, x: Tensor, cache: KVCache | None, last_only: bool) -> Tensor:
        if cache is not None:
            cache.pos += x.shape[1]
        if last_only:
            x = x[:, -1:]  # the LM head is the costliest matmul: skip positions nobody reads
        return self.out_head(self.final_norm(x))


# ---------------------------------------------------------------- GPT-2

class GPTAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        b, t, d = x.shape
        h, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)
        y = _attend(q, k, v, past, gqa=False)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.att = GPTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.ff = nn.Sequential(Linear(cfg.emb_dim, 4 * cfg.emb_dim), nn.GELU(approximate="tanh"),
                                Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def forward(self, x: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        x = x + self.att(self.norm1(x), layer, cache)
        return x + self.ff(self.norm2(x))


class GPTModel(_Decoder):
    """GPT-2 as in the book (pre-norm blocks, learned positions, GELU MLP), with a fused qkv."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__(cfg, nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps))
        self.pos_emb = _embedding(cfg.context_length, cfg.emb_dim)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))

    @torch.no_grad()
    def prepare_for_inference(self) -> None:
        """Re-lay out weights for fast one-token decoding (values unchanged; runs after load_state_dict)."""
        if self.tok_emb.weight.is_meta:
            return
        for block in self.blocks:
            block.att.qkv.weight = column_major(block.att.qkv.weight)
            block.ff[0].weight = column_major(block.ff[0].weight)
            block.att.out_proj.weight = row_major(block.att.out_proj.weight)
            block.ff[2].weight = row_major(block.ff[2].weight)
            for lin in (block.att.qkv, block.att.out_proj, block.ff[0], block.ff[2]):
                lin.prepare()
        self._layout_head()

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with last_only."""
        start = self._start(idx, cache)
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, i, cache)
        return self._logits(x, cache, last_only)


# ---------------------------------------------------------------- Llama

@functools.lru_cache(maxsize=8)
def rope_tables(head_dim: int, base: float, length: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """cos and signed sin tables (length, head_dim) for "rotate half" RoPE, the sin's first half
    negated so that `apply_rope` needs no slicing; cached and never mutated."""
    # float32 throughout, as Hugging Face computes it, so logits match transformers exactly
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.int64).float(), inv_freq)  # (L, hd/2)
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos().to(device), torch.cat([-sin, sin], dim=-1).to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE, [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin], on x's last dim; cos and sin
    from `rope_tables`, broadcastable to x. Same bits as -x2 * sin: IEEE negation is exact."""
    return x * cos.to(x.dtype) + x.roll(x.shape[-1] // 2, dims=-1) * sin.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Hugging Face's formula, computed in float32; fewer dispatched ops than F.rms_norm
        xf = x if x.dtype == torch.float32 else x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (xf if x.dtype == torch.float32 else xf.to(x.dtype))


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = Linear(cfg.emb_dim, cfg.n_heads * hd, bias=False)
        self.k_proj = Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = Linear(cfg.n_heads * hd, cfg.emb_dim, bias=False)
        # q, k, v in one matmul; set by prepare_for_inference (not saved: the state dict keeps q/k/v)
        self.register_buffer("qkv_weight", None, persistent=False)
        self.qkv_gemv: Gemv | None = None

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        c = self.cfg
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        if self.qkv_weight is not None:
            qkv = linear(x, self.qkv_weight, None, self.qkv_gemv)
        else:
            qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        # q and k rotated together: one RoPE instead of two
        qk = apply_rope(qkv[..., :nq + nkv].view(b, t, c.n_heads + c.n_kv_heads, c.head_dim), cos, sin)
        q = qk[:, :, :c.n_heads].transpose(1, 2)   # (B, H, T, hd)
        k = qk[:, :, c.n_heads:].transpose(1, 2)   # (B, H_kv, T, hd)
        v = qkv[..., nq + nkv:].view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)
        y = _attend(q, k, v, past, gqa=c.n_heads != c.n_kv_heads)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.n_heads * c.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up_proj = Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down_proj = Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.register_buffer("gate_up_weight", None, persistent=False)  # see LlamaAttention.qkv_weight
        self.gate_up_gemv: Gemv | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_weight is not None:
            gate, up = linear(x, self.gate_up_weight, None, self.gate_up_gemv).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: Tensor, layer: int, cache: KVCache | None, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), layer, cache, cos, sin)
        return x + self.mlp(self.ffn_norm(x))


class LlamaModel(_Decoder):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__(cfg, RMSNorm(cfg.emb_dim, cfg.norm_eps))
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))

    @torch.no_grad()
    def prepare_for_inference(self) -> None:
        """Fuse q/k/v and gate/up into one column-major matmul each and lay out the LM head for
        fast decoding (values unchanged; runs after load_state_dict, safe to call again)."""
        if self.tok_emb.weight.is_meta:
            return
        for block in self.blocks:
            att, mlp = block.attn, block.mlp
            att.qkv_weight = _fuse_column_major(att.q_proj, att.k_proj, att.v_proj)
            mlp.gate_up_weight = _fuse_column_major(mlp.gate_proj, mlp.up_proj)
            att.qkv_gemv, mlp.gate_up_gemv = prepare(att.qkv_weight), prepare(mlp.gate_up_weight)
            att.o_proj.weight = row_major(att.o_proj.weight)
            mlp.down_proj.weight = row_major(mlp.down_proj.weight)
            att.o_proj.prepare()
            mlp.down_proj.prepare()
        self._layout_head()

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with last_only."""
        start = self._start(idx, cache)
        end = start + idx.shape[1]
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope_base, self.cfg.context_length, str(idx.device))
        cos, sin = cos[start:end, None], sin[start:end, None]  # (T, 1, hd): broadcast over heads
        x = self.tok_emb(idx)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, i, cache, cos, sin)
        return self._logits(x, cache, last_only)


DecoderModel = GPTModel | LlamaModel


def build_model(cfg: GPTConfig | LlamaConfig) -> DecoderModel:
    return GPTModel(cfg) if isinstance(cfg, GPTConfig) else LlamaModel(cfg)
