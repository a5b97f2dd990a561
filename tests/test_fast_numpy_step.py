"""core/backends/fast/numpy_step.py: the fast backend's numpy one-token step gives the torch model's
logits, piece by piece and whole, and each batch row the bits it gets alone."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core
from core.backends import TorchBackend
from core.backends.fast import FastCPUBackend, numpy_step
from core.backends.fast.cores import LEASE
from core.backends.fast.openblas import BLAS
from core.models import KVCache, RMSNorm, apply_rope, rope_tables

needs_openblas = pytest.mark.skipif(BLAS is None, reason="numpy's BLAS here is not OpenBLAS: no numpy step")
ATOL = 1e-4


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_norms_match_torch() -> None:
    x, w, b = _rand(576), _rand(576, seed=1), _rand(576, seed=2)
    norm = RMSNorm(576, 1e-5)
    norm.weight.data = w
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(numpy_step.rms_norm(x.numpy(), w.numpy(), 1e-5)),
                                   norm(x), atol=1e-6, rtol=1e-5)
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
    signed = torch.cat([-sin[37, :32], sin[37, 32:]])  # as the fast backend stores it
    ours = numpy_step.rope(x.numpy(), cos[37].numpy(), signed.numpy().reshape(2, -1))
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
    return core.load_model(request.param, backend="torch")


@needs_openblas
def test_packed_copies_only_where_they_earn(lm: core.LanguageModel) -> None:
    """Copies for q/k/v, the first MLP product(s) and the head; the output and down projections read the
    model's own memory (a copy of them was no faster: openblas.py, fast/__init__.py)."""
    own = {p.data_ptr() for p in lm.model.parameters()}
    arrays = FastCPUBackend(lm.model).arrays
    blocks = arrays.blocks[0]
    names = ("qkv", "gate_up", "o", "down") if hasattr(blocks, "o") else ("qkv", "fc_in", "out", "fc_out")
    copied, kept = [getattr(blocks, n) for n in names[:2]] + [arrays.head], [getattr(blocks, n) for n in names[2:]]
    assert all(g.gemv.column_major and g.gemv.matrix.ctypes.data not in own for g in copied)
    assert all(not g.gemv.column_major and g.gemv.matrix.ctypes.data in own for g in kept)


@needs_openblas
@pytest.mark.parametrize("pack", [True, False])
def test_numpy_step_matches_the_torch_step(lm: core.LanguageModel, pack: bool) -> None:
    """Step after step past a 300-token prompt: the same logits (float32 rounding aside) and the same
    keys and values written into the cache as the torch model; with packed copies or the model's own weights."""
    fast, plain = FastCPUBackend(lm.model, pack=pack), TorchBackend(lm.model)
    if not pack:  # every product reads the model's own memory
        own = {p.data_ptr() for p in lm.model.parameters()}
        blocks = fast.arrays.blocks[0]
        gemvs = [getattr(blocks, f) for f in ("qkv", "o", "gate_up", "down") if hasattr(blocks, f)] or \
            [blocks.qkv, blocks.out, blocks.fc_in, blocks.fc_out]
        parts = [q for g in gemvs for q in getattr(g, "parts", (g,))]
        assert all(q.gemv.matrix.ctypes.data in own for q in parts + [fast.arrays.head])
    idx = torch.randint(0, lm.vocab_size, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast_cache, torch_cache = fast.new_state(1, 306), plain.new_state(1, 306)
        logits = fast.prefill(idx, fast_cache)
        assert torch.equal(logits, plain.prefill(idx, torch_cache))  # a prompt is read by the torch model
        for _ in range(6):
            token = logits.argmax(-1)
            logits, expected = fast.step(token, fast_cache), plain.step(token, torch_cache)
            diff = (logits - expected).abs().max().item()
            assert diff < ATOL, f"{lm.name}: numpy step vs torch step max |Δlogit| {diff:.2e}"
            assert logits.shape == expected.shape == (1, lm.vocab_size)
    assert fast_cache.pos == torch_cache.pos == 306
    for a, b in zip(fast_cache.k + fast_cache.v, torch_cache.k + torch_cache.v):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@needs_openblas
def test_batched_numpy_step_gives_each_row_its_own_bits(lm: core.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three rows stepped together (the side-by-side page's columns): each row's logits and cache are
    bit for bit what that row gets stepped alone, on one core or two; and the torch model's batch
    gives the same logits, float32 rounding aside."""
    from core.backends.fast.cores import GOVERNOR

    fast, plain = FastCPUBackend(lm.model), TorchBackend(lm.model)
    idx = torch.randint(0, lm.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([11, 2024, 7])

    def prefilled() -> KVCache:
        cache = fast.new_state(1, 43)
        fast.prefill(idx, cache)
        return cache

    with torch.inference_mode():
        prompt = prefilled()
        for mode in ("off", "on"):  # one core, two cores
            monkeypatch.setattr(GOVERNOR, "mode", mode)
            batch, alone = prompt.repeat_batch(3), [prefilled() for _ in range(3)]
            for step in range(2):
                together = fast.step(tokens + step, batch)
                for i, cache in enumerate(alone):
                    one = fast.step(tokens[i:i + 1] + step, cache)
                    assert torch.equal(together[i], one[0]), f"row {i}, step {step}, two cores: {mode}"
            for i, cache in enumerate(alone):
                for keys, values, k, v in zip(batch.k, batch.v, cache.k, cache.v):
                    assert torch.equal(keys[i, :, :42], k[0, :, :42]) and torch.equal(values[i, :, :42], v[0, :, :42])
        ours = fast.step(tokens, prompt.repeat_batch(3))
        expected = plain.step(tokens, prompt.repeat_batch(3))
    assert ours.shape == expected.shape == (3, lm.vocab_size)
    diff = (ours - expected).abs().max().item()
    assert diff < ATOL, f"{lm.name}: batched numpy step vs torch max |Δlogit| {diff:.2e}"


@needs_openblas
def test_fast_step_refuses_what_torch_refuses() -> None:
    lm = core.load_model("llama-tiny", backend="torch")
    fast = FastCPUBackend(lm.model)
    with torch.inference_mode():
        full = fast.new_state(1, 1)
        fast.prefill(torch.tensor([[5]]), full)
        with pytest.raises(ValueError, match="max_len 1"):
            fast.step(torch.tensor([6]), full)
        # a state the numpy step cannot read (float64): the torch model runs it, and refuses the mix
        odd = KVCache(lm.model.cfg.n_layers, 1, lm.model.cfg.n_kv_heads, 8, lm.model.cfg.head_dim, dtype=torch.float64)
        with pytest.raises(RuntimeError):
            fast.step(torch.tensor([6]), odd)


@needs_openblas
def test_lease_keeps_openblas_at_one_thread_outside_two_core_steps() -> None:
    assert BLAS.threads(1) == 1  # every shared step relies on it
    with LEASE.hold(two=True):
        BLAS.threads(2)
    assert BLAS.threads(1) == 1
