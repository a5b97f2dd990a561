"""Model configurations: frozen dataclasses with named presets."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2, the architecture of "Build a Large Language Model (From Scratch)"."""

    vocab_size: int = 50257      # Vocabulary size (GPT-2 BPE)
    context_length: int = 1024   # Longest sequence the position embedding covers
    emb_dim: int = 768           # Embedding width
    n_heads: int = 12            # Attention heads
    n_layers: int = 12           # Transformer blocks
    qkv_bias: bool = True        # Query/key/value bias (True for OpenAI's weights)
    norm_eps: float = 1e-5       # LayerNorm epsilon
    tied_head: bool = True       # LM head shares the token embedding

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GPTConfig":
        if name not in GPT_PRESETS:
            raise ValueError(f"unknown GPT-2 preset {name!r}; known: {', '.join(GPT_PRESETS)}")
        return replace(GPT_PRESETS[name], **overrides)


GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt2-tiny": GPTConfig(context_length=256, emb_dim=32, n_heads=4, n_layers=2),
    "gpt2": GPTConfig(emb_dim=768, n_heads=12, n_layers=12),            # 124M
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24),    # 355M
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36),     # 774M
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48),        # 1558M
}

# The book's table: embedding width decides the size, and with it the head count.
HEADS_BY_WIDTH: dict[int, int] = {c.emb_dim: c.n_heads for n, c in GPT_PRESETS.items() if n != "gpt2-tiny"}


@dataclass(frozen=True)
class LlamaConfig:
    """Llama-style decoder (SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU."""

    vocab_size: int = 49152        # Vocabulary size
    context_length: int = 8192     # Longest sequence trained on
    emb_dim: int = 576             # Embedding width
    n_heads: int = 9               # Query heads
    n_kv_heads: int = 3            # Key/value heads (grouped-query attention)
    n_layers: int = 30             # Transformer blocks
    hidden_dim: int = 1536         # SwiGLU inner width
    rope_base: float = 100000.0    # RoPE frequency base
    norm_eps: float = 1e-5         # RMSNorm epsilon
    tied_head: bool = True         # LM head shares the token embedding

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "LlamaConfig":
        if name not in LLAMA_PRESETS:
            raise ValueError(f"unknown Llama preset {name!r}; known: {', '.join(LLAMA_PRESETS)}")
        return replace(LLAMA_PRESETS[name], **overrides)


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "llama-tiny": LlamaConfig(context_length=256, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, hidden_dim=64),
    "smollm2-135m": LlamaConfig(),
}
