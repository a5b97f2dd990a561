"""Stateless decoder models (GPT-2 and Llama) with a per-request KV cache.

A loaded model is shared by every browser session, so it holds no per-request state: the
`KVCache` is created by the caller for each request and passed into `forward`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GPTConfig, LlamaConfig
from .numpy_step import KV, DecoderArrays, GPTBlockArrays, LlamaBlockArrays, RowProj, gpt_step, llama_step
from .parallel import Gemv, linear, padded_width, prepare


def column_major(w: Tensor) -> nn.Parameter:
    """Same values and shape (out, in), stored (in, out) with zero columns up to a multiple of
    `parallel.ALIGN`: OpenBLAS's one-row GEMV streams this layout faster than row-major unless the
    input is the wide side (e.g. 29 against 24 GB/s for 576 -> 3072, 16 against 13 for 576 -> 576),
    and the padding lets it split the outputs evenly in two."""
    return nn.Parameter(_padded_column_major(w.detach()), requires_grad=False)


def row_major(w: Tensor) -> nn.Parameter:
    """(out, in) stored row by row: the faster layout for the GEMVs whose input is the wide side
    (27 against 24 GB/s for 1536 -> 576)."""
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


@dataclass(frozen=True, eq=False)  # eq would compare tensors
class Proj:
    """A linear layer's tensors for the forward pass: weight (out, in), bias, and the weight's
    OpenBLAS view for one-token steps (None: torch computes every product; see core/parallel.py)."""

    weight: Tensor
    bias: Tensor | None = None
    gemv: Gemv | None = None

    @classmethod
    def of(cls, weight: Tensor, bias: Tensor | None = None, *, openblas: bool = True) -> "Proj":
        return cls(weight, bias, prepare(weight) if openblas else None)

    def __call__(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.gemv)

    def row_proj(self) -> RowProj | None:
        """The numpy side for core.numpy_step; None without an OpenBLAS view."""
        if self.gemv is None:
            return None
        return RowProj(self.gemv, self.weight.shape[0], None if self.bias is None else self.bias.detach().numpy())


def _numpy(t: Tensor) -> np.ndarray:
    """numpy's view of a CPU tensor's memory (no copy)."""
    return t.detach().numpy()


def _after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.prepare_for_inference()


class KVCache:
    """Preallocated keys/values for one request: (B, n_kv_heads, max_len, head_dim) per layer;
    torch's forward and core.numpy_step (through `arrays`) read and write the same memory."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0  # tokens already stored
        self._arrays: KV | None = None

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def arrays(self) -> KV:
        """The keys and values as numpy views (batch, n_kv_heads, max_len, head_dim), for core.numpy_step."""
        if self._arrays is None:
            self._arrays = [(k.numpy(), v.numpy()) for k, v in zip(self.k, self.v)]
        return self._arrays

    def repeat_batch(self, batch: int) -> "KVCache":
        """Share one batch-1 prefill between several continuations (one copy per row)."""
        if batch == 1:
            return self
        out = KVCache.__new__(KVCache)
        out.k = [k.expand(batch, -1, -1, -1).clone() for k in self.k]
        out.v = [v.expand(batch, -1, -1, -1).clone() for v in self.v]
        out.max_len, out.pos, out._arrays = self.max_len, self.pos, None
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
    """What GPT-2 and Llama share: embedding + tied LM head, the per-request cache, the forward's ends.

    The forward pass runs on `layers`, one frozen dataclass of tensors per block gathered by
    `prepare_for_inference`, through pure functions (`gpt_block`, `llama_block`): a SmolLM2 decode
    step has ~200 modules' worth of small ops, and nn.Module.__call__ with its attribute lookups
    added about 3 ms to it. The modules hold the parameters and name them in the state dict.
    A one-token step (one token per cache row) runs `_numpy_step` instead (core/numpy_step.py), on numpy
    views of the same weights (`arrays`) and of the request's cache.
    """

    cfg: GPTConfig | LlamaConfig
    blocks: nn.ModuleList

    def __init__(self, cfg: GPTConfig | LlamaConfig, final_norm: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = _embedding(cfg.vocab_size, cfg.emb_dim)
        self.final_norm = final_norm
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tied_head:
            self.out_head.weight = self.tok_emb.weight
        self.layers: tuple[GPTLayer, ...] | tuple[LlamaLayer, ...] = ()
        self.head: Proj | None = None
        self.arrays: DecoderArrays | None = None  # the numpy one-token step's weights (core.numpy_step)
        self.register_load_state_dict_post_hook(_after_load)

    @torch.no_grad()
    def prepare_for_inference(self, openblas: bool = True) -> None:
        """Re-lay out the weights for fast one-token steps and gather `layers` (values unchanged;
        runs after load_state_dict and after .to(), safe to call again). openblas=False leaves every
        product to torch (bench/ compares the two)."""
        if self.tok_emb.weight.is_meta:
            return
        self.layers = tuple(block.prepare(openblas) for block in self.blocks)
        self._layout_head(openblas)
        self.arrays = self._gather_arrays()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> _Decoder:
        out = super()._apply(fn, recurse)
        self.prepare_for_inference()  # .to() and the like replace tensors: gather the new ones
        return out

    def _layout_head(self, openblas: bool) -> None:
        head = column_major(self.out_head.weight)
        self.out_head.weight = head
        if self.cfg.tied_head:
            self.tok_emb.weight = head
        self.head = Proj.of(head, openblas=openblas)

    def _ready(self) -> None:
        if self.head is None:  # built without load_state_dict (whose hook prepares)
            self.prepare_for_inference()

    def _gather_arrays(self) -> DecoderArrays | None:
        """numpy views of every weight for core.numpy_step; None unless every product has OpenBLAS."""
        head = self.head.row_proj()
        blocks = tuple(self._block_arrays(layer) for layer in self.layers)
        if head is None or None in blocks:
            return None
        pos_emb = getattr(self, "pos_emb", None)
        return DecoderArrays(_numpy(self.tok_emb.weight), None if pos_emb is None else _numpy(pos_emb.weight),
                             blocks, tuple(_numpy(t) for t in self.final_norm.parameters()), head)

    def _block_arrays(self, layer: GPTLayer | LlamaLayer) -> GPTBlockArrays | LlamaBlockArrays | None:
        raise NotImplementedError

    def _numpy_step(self, tokens: np.ndarray, pos: int, kv: KV) -> np.ndarray:
        raise NotImplementedError

    def _one_token(self, idx: Tensor, cache: KVCache | None) -> Tensor | None:
        """A one-token decode step (one token per cache row) through core.numpy_step, or None where it
        does not apply (prompts, gradients, models without `arrays`, a full or non-float32 cache, a
        batch that is not the cache's): the torch forward runs then, and raises where it must."""
        if (self.arrays is None or cache is None or idx.shape != (cache.batch, 1) or torch.is_grad_enabled()
                or cache.pos >= cache.max_len or cache.k[0].dtype != torch.float32):
            return None
        logits = self._numpy_step(idx[:, 0].numpy(), cache.pos, cache.arrays())
        cache.pos += 1
        return torch.from_numpy(logits).view(cache.batch, 1, -1)

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
        return self.head(self.final_norm(x))


# ---------------------------------------------------------------- GPT-2

@dataclass(frozen=True, eq=False)
class GPTLayer:
    """One GPT-2 block's tensors, as `gpt_block` reads them."""

    norm1: tuple[Tensor, Tensor]  # LayerNorm weight, bias
    qkv: Proj
    out: Proj
    norm2: tuple[Tensor, Tensor]
    fc_in: Proj
    fc_out: Proj


def gpt_block(x: Tensor, w: GPTLayer, cfg: GPTConfig, layer: int, cache: KVCache | None) -> Tensor:
    """One pre-norm GPT-2 block on x (B, T, D): attention, then the GELU MLP, each with a residual."""
    b, t, d = x.shape
    h, hd = cfg.n_heads, d // cfg.n_heads
    q, k, v = w.qkv(F.layer_norm(x, (d,), *w.norm1, cfg.norm_eps)).split(d, dim=2)
    q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
    past = 0
    if cache is not None:
        past = cache.pos
        k, v = cache.update(layer, k, v)
    y = _attend(q, k, v, past, gqa=False)
    x = x + w.out(y.transpose(1, 2).reshape(b, t, d))
    return x + w.fc_out(F.gelu(w.fc_in(F.layer_norm(x, (d,), *w.norm2, cfg.norm_eps)), approximate="tanh"))


class GPTAttention(nn.Module):
    """Parameters of GPT-2's attention (fused qkv); the math is in `gpt_block`."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)


class GPTBlock(nn.Module):
    """Parameters of one GPT-2 block, named as the state dict names them; the math is in `gpt_block`."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.att = GPTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.ff = nn.Sequential(nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim), nn.GELU(approximate="tanh"),
                                nn.Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def prepare(self, openblas: bool) -> GPTLayer:
        """Lay out the weights for one-token steps: row-major only where the input is the wide side."""
        qkv, out, fc_in, fc_out = self.att.qkv, self.att.out_proj, self.ff[0], self.ff[2]
        for lin in (qkv, out, fc_in):
            lin.weight = column_major(lin.weight)
        fc_out.weight = row_major(fc_out.weight)

        def proj(lin: nn.Linear) -> Proj:
            return Proj.of(lin.weight, lin.bias, openblas=openblas)

        return GPTLayer((self.norm1.weight, self.norm1.bias), proj(qkv), proj(out),
                        (self.norm2.weight, self.norm2.bias), proj(fc_in), proj(fc_out))


class GPTModel(_Decoder):
    """GPT-2 as in the book (pre-norm blocks, learned positions, GELU MLP), with a fused qkv."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__(cfg, nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps))
        self.pos_emb = _embedding(cfg.context_length, cfg.emb_dim)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))

    def _block_arrays(self, layer: GPTLayer) -> GPTBlockArrays | None:
        projs = [p.row_proj() for p in (layer.qkv, layer.out, layer.fc_in, layer.fc_out)]
        if None in projs:
            return None
        qkv, out, fc_in, fc_out = projs
        norm1, norm2 = (tuple(_numpy(t) for t in norm) for norm in (layer.norm1, layer.norm2))
        return GPTBlockArrays(norm1, qkv, out, norm2, fc_in, fc_out)

    def _numpy_step(self, tokens: np.ndarray, pos: int, kv: KV) -> np.ndarray:
        return gpt_step(self.arrays, self.cfg, tokens, pos, kv)

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with last_only."""
        self._ready()
        start = self._start(idx, cache)
        if (logits := self._one_token(idx, cache)) is not None:
            return logits
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = F.embedding(idx, self.tok_emb.weight) + F.embedding(pos, self.pos_emb.weight)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = gpt_block(x, layer, self.cfg, i, cache)
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
    from `rope_tables`, broadcastable to x and of x's dtype. Same bits as -x2 * sin: IEEE negation
    is exact."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Hugging Face's RMSNorm, computed in float32 (F.rms_norm gives its very bits in float32)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


@dataclass(frozen=True, eq=False)
class LlamaLayer:
    """One Llama block's tensors, as `llama_block` reads them: q/k/v and gate/up fused."""

    attn_norm: Tensor
    qkv: Proj
    o: Proj
    ffn_norm: Tensor
    gate_up: Proj
    down: Proj


def llama_block(x: Tensor, w: LlamaLayer, cfg: LlamaConfig, layer: int, cache: KVCache | None,
                cos: Tensor, sin: Tensor) -> Tensor:
    """One Llama block on x (B, T, D): grouped-query attention with RoPE, then the SwiGLU MLP."""
    b, t, _ = x.shape
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    qkv = w.qkv(rms_norm(x, w.attn_norm, cfg.norm_eps))
    # q and k rotated together: one RoPE instead of two
    qk = apply_rope(qkv[..., :(nh + nkv) * hd].view(b, t, nh + nkv, hd), cos, sin)
    q = qk[:, :, :nh].transpose(1, 2)   # (B, H, T, hd)
    k = qk[:, :, nh:].transpose(1, 2)   # (B, H_kv, T, hd)
    v = qkv[..., (nh + nkv) * hd:].view(b, t, nkv, hd).transpose(1, 2)
    past = 0
    if cache is not None:
        past = cache.pos
        k, v = cache.update(layer, k, v)
    y = _attend(q, k, v, past, gqa=nh != nkv)
    x = x + w.o(y.transpose(1, 2).reshape(b, t, nh * hd))
    gate, up = w.gate_up(rms_norm(x, w.ffn_norm, cfg.norm_eps)).chunk(2, dim=-1)
    return x + w.down(F.silu(gate) * up)


class LlamaAttention(nn.Module):
    """Parameters of Llama's attention; the math is in `llama_block`."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.emb_dim, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.emb_dim, bias=False)
        # q, k, v in one matmul; set by prepare (not saved: the state dict keeps q/k/v)
        self.register_buffer("qkv_weight", None, persistent=False)


class LlamaMLP(nn.Module):
    """Parameters of Llama's SwiGLU MLP; the math is in `llama_block`."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.register_buffer("gate_up_weight", None, persistent=False)  # see LlamaAttention.qkv_weight


class LlamaBlock(nn.Module):
    """Parameters of one Llama block, named as the state dict names them; the math is in `llama_block`."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def prepare(self, openblas: bool) -> LlamaLayer:
        """Fuse q/k/v and gate/up into one column-major matmul each; o column-major too; down, whose
        input is the wide side, row-major."""
        att, mlp = self.attn, self.mlp
        att.qkv_weight = _fuse_column_major(att.q_proj, att.k_proj, att.v_proj)
        mlp.gate_up_weight = _fuse_column_major(mlp.gate_proj, mlp.up_proj)
        att.o_proj.weight = column_major(att.o_proj.weight)
        mlp.down_proj.weight = row_major(mlp.down_proj.weight)
        proj = functools.partial(Proj.of, openblas=openblas)
        return LlamaLayer(self.attn_norm.weight, proj(att.qkv_weight), proj(att.o_proj.weight),
                          self.ffn_norm.weight, proj(mlp.gate_up_weight), proj(mlp.down_proj.weight))


class LlamaModel(_Decoder):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__(cfg, RMSNorm(cfg.emb_dim, cfg.norm_eps))
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))

    def _block_arrays(self, layer: LlamaLayer) -> LlamaBlockArrays | None:
        projs = [p.row_proj() for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        if None in projs:
            return None
        qkv, o, gate_up, down = projs
        return LlamaBlockArrays(_numpy(layer.attn_norm), qkv, o, _numpy(layer.ffn_norm), gate_up, down)

    def _numpy_step(self, tokens: np.ndarray, pos: int, kv: KV) -> np.ndarray:
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope_base, self.cfg.context_length)
        return llama_step(self.arrays, self.cfg, tokens, pos, kv, cos.numpy()[pos], sin.numpy()[pos].reshape(2, -1))

    def forward(self, idx: Tensor, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with last_only."""
        self._ready()
        start = self._start(idx, cache)
        if (logits := self._one_token(idx, cache)) is not None:
            return logits
        end = start + idx.shape[1]
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.rope_base, self.cfg.context_length, str(idx.device))
        dtype = self.tok_emb.weight.dtype
        cos, sin = cos[start:end, None].to(dtype), sin[start:end, None].to(dtype)  # (T, 1, hd): over heads
        x = F.embedding(idx, self.tok_emb.weight)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = llama_block(x, layer, self.cfg, i, cache, cos, sin)
        return self._logits(x, cache, last_only)


DecoderModel = GPTModel | LlamaModel


def build_model(cfg: GPTConfig | LlamaConfig) -> DecoderModel:
    return GPTModel(cfg) if isinstance(cfg, GPTConfig) else LlamaModel(cfg)
