"""core/numpy_step.py: the numpy one-token decode step gives the torch forward's logits, piece by
piece and whole, and runs only where it applies (one row, a cache, no gradients, OpenBLAS)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core
from core import numpy_step
from core.models import KVCache, apply_rope, rms_norm, rope_tables
from core.parallel import BLAS, two_way
from core.weights import load_checked, random_state

needs_openblas = pytest.mark.skipif(BLAS is None, reason="numpy's BLAS here is not OpenBLAS: no numpy step")
ATOL = 1e-4


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_norms_match_torch() -> None:
    x, w, b = _rand(576), _rand(576, seed=1), _rand(576, seed=2)
    torch.testing.assert_close(torch.from_numpy(numpy_step.rms_norm(x.numpy(), w.numpy(), 1e-5)),
                               rms_norm(x, w, 1e-5), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(numpy_step.layer_norm(x.numpy() + 3, w.numpy(), b.numpy(), 1e-5)),
                               F.layer_norm(x + 3, (576,), w, b, 1e-5), atol=1e-5, rtol=1e-5)
    assert np.array_equal(numpy_step.rms_norm(x.numpy()[::2], w.numpy()[:288], 1e-5),
                          numpy_step.rms_norm(x.numpy()[::2].copy(), w.numpy()[:288], 1e-5))  # strided row


def test_activations_match_torch() -> None:
    gate, up = _rand(1536) * 4, _rand(1536, seed=1)
    gate_np = gate.numpy().copy()
    torch.testing.assert_close(torch.from_numpy(numpy_step.silu_times(gate_np, up.numpy())), F.silu(gate) * up,
                               atol=1e-6, rtol=1e-5)
    assert np.array_equal(gate_np, gate.numpy())  # input untouched
    assert torch.equal(torch.from_numpy(numpy_step.gelu(gate.numpy())), F.gelu(gate, approximate="tanh"))


def test_rope_is_apply_ropes_math_bit_for_bit() -> None:
    cos, sin = rope_tables(64, 10000.0, 100)
    x = _rand(12, 64)
    ours = numpy_step.rope(x.numpy(), cos[37].numpy(), sin[37].numpy().reshape(2, -1))
    assert torch.equal(torch.from_numpy(ours), apply_rope(x, cos[37], sin[37]))
    assert torch.equal(x, _rand(12, 64))  # input untouched


@pytest.mark.parametrize("heads,kv_heads", [(12, 12), (9, 3), (4, 1)])
def test_attend_matches_sdpa(heads: int, kv_heads: int) -> None:
    q, k, v = _rand(heads, 64), _rand(kv_heads, 300, 64, seed=1), _rand(kv_heads, 300, 64, seed=2)
    ours = numpy_step.attend(q.numpy(), k.numpy()[:, :250], v.numpy()[:, :250])  # strided: a cache's prefix
    assert torch.equal(q, _rand(heads, 64))  # input untouched
    expected = F.scaled_dot_product_attention(q.view(1, heads, 1, 64), k[None, :, :250], v[None, :, :250],
                                              enable_gqa=heads != kv_heads).reshape(-1)
    torch.testing.assert_close(torch.from_numpy(ours), expected, atol=1e-5, rtol=1e-5)
    scores = (q.view(kv_heads, -1, 64) @ k[:, :250].transpose(1, 2)) / math.sqrt(64)
    by_hand = (scores.softmax(-1) @ v[:, :250]).reshape(-1)
    torch.testing.assert_close(torch.from_numpy(ours), by_hand, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=["random:gpt2", "random:smollm2-135m"])
def lm(request: pytest.FixtureRequest) -> core.LanguageModel:
    return core.load_model(request.param)


@needs_openblas
def test_numpy_step_matches_the_torch_step(lm: core.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step after step past a 300-token prompt: the same logits (float32 rounding aside) and the same
    keys and values written into the cache as the torch forward."""
    m = lm.model
    arrays = m.arrays
    assert arrays is not None, "OpenBLAS is here, so the numpy step should be built"
    calls = []
    original = type(m)._numpy_step
    monkeypatch.setattr(type(m), "_numpy_step", lambda self, *a: calls.append(1) or original(self, *a))
    idx = torch.randint(0, lm.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast_cache, torch_cache = m.new_cache(1, 306), m.new_cache(1, 306)
        m(idx, fast_cache, last_only=True)
        logits = m(idx, torch_cache, last_only=True)
        assert not calls  # a prompt goes through torch
        for _ in range(6):
            token = logits[:, -1].argmax(-1, keepdim=True)
            logits = m(token, fast_cache, last_only=True)
            m.arrays = None
            try:
                expected = m(token, torch_cache, last_only=True)
            finally:
                m.arrays = arrays
            diff = (logits - expected).abs().max().item()
            assert diff < ATOL, f"{lm.name}: numpy step vs torch step max |Δlogit| {diff:.2e}"
            assert logits.shape == expected.shape == (1, 1, lm.vocab_size)
    assert len(calls) == 6 and fast_cache.pos == torch_cache.pos == 306
    for fast, slow in zip(fast_cache.k + fast_cache.v, torch_cache.k + torch_cache.v):
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


@needs_openblas
def test_batched_numpy_step_gives_each_row_its_own_bits(lm: core.LanguageModel) -> None:
    """Three rows stepped together (the side-by-side page's columns): each row's logits and cache are
    bit for bit what that row gets stepped alone, on one core or two; and the torch forward's batch
    gives the same logits, float32 rounding aside."""
    m = lm.model
    idx = torch.randint(0, lm.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[11], [2024], [7]])

    def prefilled() -> KVCache:
        cache = m.new_cache(1, 43)
        m(idx, cache, last_only=True)
        return cache

    with torch.inference_mode():
        prompt = prefilled()
        for two in (False, True):
            batch, alone = prompt.repeat_batch(3), [prefilled() for _ in range(3)]
            for step in range(2):
                with two_way(two):
                    together = m(tokens + step, batch, last_only=True)
                    for i, cache in enumerate(alone):
                        one = m(tokens[i:i + 1] + step, cache, last_only=True)
                        assert torch.equal(together[i], one[0]), f"row {i}, step {step}, two cores: {two}"
            for i, cache in enumerate(alone):
                for keys, values, k, v in zip(batch.k, batch.v, cache.k, cache.v):
                    assert torch.equal(keys[i], k[0]) and torch.equal(values[i], v[0])
        ours = m(tokens, prompt.repeat_batch(3), last_only=True)
        arrays, m.arrays = m.arrays, None
        try:
            expected = m(tokens, prompt.repeat_batch(3), last_only=True)
        finally:
            m.arrays = arrays
    assert ours.shape == expected.shape == (3, 1, lm.vocab_size)
    diff = (ours - expected).abs().max().item()
    assert diff < ATOL, f"{lm.name}: batched numpy step vs torch max |Δlogit| {diff:.2e}"


@needs_openblas
def test_numpy_step_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = core.load_model("llama-tiny").model.cfg
    m = load_checked(cfg, random_state(cfg))
    calls = []
    original = type(m)._numpy_step
    monkeypatch.setattr(type(m), "_numpy_step", lambda self, *a: calls.append(1) or original(self, *a))
    token = torch.tensor([[5]])
    with torch.inference_mode():
        m(token)                                  # no cache
        m(torch.tensor([[5, 6]]), m.new_cache(1, 8))  # two tokens
        with pytest.raises(RuntimeError):         # one row for a cache of two rows: torch refuses it
            m(token, m.new_cache(2, 8))
        assert not calls
        m(token, m.new_cache(1, 8))
        m(token.expand(3, 1), m.new_cache(3, 8))  # a batch: a token per cache row
        assert len(calls) == 2
    with torch.no_grad():
        m(token, m.new_cache(1, 8))
    assert len(calls) == 3
    m(token, m.new_cache(1, 8))                   # gradients on: torch, which can track them
    assert len(calls) == 3
    with torch.inference_mode():
        full = m.new_cache(1, 1)
        m(token, full)
        with pytest.raises(ValueError, match="KV cache overflow: 2 tokens > max_len 1"):
            m(token, full)                        # the same message as torch's forward gives
        with pytest.raises(RuntimeError, match="same dtype"):  # torch's message, not numpy's
            m(token, KVCache(cfg.n_layers, 1, cfg.n_kv_heads, 8, cfg.head_dim, dtype=torch.float64))
    assert len(calls) == 4
    m.prepare_for_inference(openblas=False)       # torch's GEMVs asked for: no numpy step
    assert m.arrays is None
    m.prepare_for_inference()
    assert m.arrays is not None
    m.to(torch.bfloat16)                          # OpenBLAS has no bfloat16
    assert m.arrays is None
