"""The default (float32) mode's logits are exact: compared with a straightforward float32 reference.

The reference is the textbook math written out with no cache, no fusion, no SDPA and row-major
weights, fed the very same parameter values; for GPT-2 also transformers' GPT2LMHeadModel when
transformers is installed (a bench-only dependency).
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import core
from core.models import GPTModel, LlamaModel
from core.runtime import approximate, configure_threads

ATOL = 1e-4


def _plain_gpt2(m: GPTModel, idx: torch.Tensor) -> torch.Tensor:
    c = m.cfg
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}  # row-major copies
    b, t = idx.shape
    x = sd["tok_emb.weight"][idx] + sd["pos_emb.weight"][:t]
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (c.emb_dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], c.norm_eps)
        qkv = h @ sd[p + "att.qkv.weight"].T + sd[p + "att.qkv.bias"]
        q, k, v = (z.view(b, t, c.n_heads, c.head_dim).transpose(1, 2) for z in qkv.split(c.emb_dim, -1))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
        y = att.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + y.transpose(1, 2).reshape(b, t, c.emb_dim) @ sd[p + "att.out_proj.weight"].T + sd[p + "att.out_proj.bias"]
        h = F.layer_norm(x, (c.emb_dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], c.norm_eps)
        h = F.gelu(h @ sd[p + "ff.0.weight"].T + sd[p + "ff.0.bias"], approximate="tanh")
        x = x + h @ sd[p + "ff.2.weight"].T + sd[p + "ff.2.bias"]
    x = F.layer_norm(x, (c.emb_dim,), sd["final_norm.weight"], sd["final_norm.bias"], c.norm_eps)
    return x @ sd.get("out_head.weight", sd["tok_emb.weight"]).T


def _plain_llama(m: LlamaModel, idx: torch.Tensor) -> torch.Tensor:
    c = m.cfg
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    b, t = idx.shape
    hd = c.head_dim

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps))

    inv = 1.0 / (c.rope_base ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(t).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(z: torch.Tensor) -> torch.Tensor:
        return z * cos + torch.cat([-z[..., hd // 2:], z[..., :hd // 2]], -1) * sin

    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    rep = c.n_heads // c.n_kv_heads
    x = sd["tok_emb.weight"][idx]
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "attn_norm.weight"])
        q = (h @ sd[p + "attn.q_proj.weight"].T).view(b, t, c.n_heads, hd).transpose(1, 2)
        k = (h @ sd[p + "attn.k_proj.weight"].T).view(b, t, c.n_kv_heads, hd).transpose(1, 2)
        v = (h @ sd[p + "attn.v_proj.weight"].T).view(b, t, c.n_kv_heads, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        y = att.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + y.transpose(1, 2).reshape(b, t, c.n_heads * hd) @ sd[p + "attn.o_proj.weight"].T
        h = rms(x, sd[p + "ffn_norm.weight"])
        g = F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
        x = x + g @ sd[p + "mlp.down_proj.weight"].T
    return rms(x, sd["final_norm.weight"]) @ sd.get("out_head.weight", sd["tok_emb.weight"]).T


@pytest.fixture(scope="module")
def gpt2() -> core.LanguageModel:
    return core.load_model("random:gpt2")


@pytest.fixture(scope="module")
def smollm2_random() -> core.LanguageModel:
    return core.load_model("random:smollm2-135m")


IDS = [6109, 3626, 6100, 345, 11, 290, 262, 4252, 318, 257, 1332, 13]


def _check_exact(lm: core.LanguageModel, reference: torch.Tensor, ids: list[int]) -> None:
    ours = lm.next_token_logits(ids)
    assert ours.dtype == torch.float32
    diff = (ours - reference).abs().max().item()
    assert diff < ATOL, f"{lm.name}: max |Δlogit| {diff:.2e} vs the float32 reference (allowed {ATOL:g})"
    assert int(ours.argmax()) == int(reference.argmax()), f"{lm.name}: top-1 differs from the reference"
    p, q = torch.softmax(ours, -1), torch.softmax(reference, -1)
    assert (p - q).abs().max().item() < 1e-5


@pytest.mark.parametrize("threads", [1, 2])
def test_gpt2_logits_match_plain_float32(gpt2: core.LanguageModel, threads: int) -> None:
    configure_threads(threads)
    with torch.inference_mode():
        ref = _plain_gpt2(gpt2.model, torch.tensor([IDS]))[0, -1]
    _check_exact(gpt2, ref, IDS)


def test_llama_logits_match_plain_float32(smollm2_random: core.LanguageModel) -> None:
    with torch.inference_mode():
        ref = _plain_llama(smollm2_random.model, torch.tensor([IDS]))[0, -1]
    _check_exact(smollm2_random, ref, IDS)


def test_gpt2_logits_match_transformers(gpt2: core.LanguageModel) -> None:
    pytest.importorskip("transformers")
    from bench.run import hf_gpt2_from_ours

    hf = hf_gpt2_from_ours(gpt2)
    with torch.inference_mode():
        ref = hf(torch.tensor([IDS])).logits[0, -1]
    _check_exact(gpt2, ref, IDS)


@pytest.mark.parametrize("name", ["random:gpt2", "random:smollm2-135m"])
def test_every_position_matches_without_cache(name: str, gpt2: core.LanguageModel,
                                              smollm2_random: core.LanguageModel) -> None:
    """Cached decoding (prefill + one token at a time) gives the logits of a full uncached forward."""
    lm = gpt2 if name == "random:gpt2" else smollm2_random
    idx = torch.tensor([IDS])
    with torch.inference_mode():
        full = lm.model(idx)[0]
        cache = lm.model.new_cache(1, len(IDS))
        stepped = [lm.model(idx[:, :4], cache)[0]]
        stepped += [lm.model(idx[:, i:i + 1], cache)[0] for i in range(4, len(IDS))]
    diff = (torch.cat(stepped) - full).abs().max().item()
    assert diff < ATOL, f"{name}: cached vs uncached max |Δlogit| {diff:.2e}"


@pytest.mark.parametrize("name", ["random:gpt2", "random:smollm2-135m"])
def test_cached_generation_equals_uncached(name: str, gpt2: core.LanguageModel,
                                           smollm2_random: core.LanguageModel) -> None:
    lm = gpt2 if name == "random:gpt2" else smollm2_random
    greedy = core.SamplingConfig(temperature=0)
    cached = [s.token_id for s in core.generate(lm, IDS[:4], greedy, 12, stop_at_eos=False)]
    plain = [s.token_id for s in core.generate(lm, IDS[:4], greedy, 12, stop_at_eos=False, use_cache=False)]
    assert cached == plain


def test_approximate_mode_is_bf16_and_close(gpt2: core.LanguageModel) -> None:
    approx = approximate(gpt2)
    assert approx.model.tok_emb.weight.dtype == torch.bfloat16
    assert gpt2.model.tok_emb.weight.dtype == torch.float32  # the exact model is untouched
    assert "approximate" in approx.name
    ours, exact = approx.next_token_logits(IDS), gpt2.next_token_logits(IDS)
    assert ours.dtype == torch.float32
    diff = (ours - exact).abs().max().item()
    assert 0 < diff < 0.5, f"bf16 logits differ by {diff:.3g}: expected small but non-zero"
    steps = list(core.generate(approx, IDS[:4], core.SamplingConfig(temperature=0), 5, stop_at_eos=False))
    assert len(steps) == 5


def test_configure_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SAMPLING_LAB_THREADS", "1")
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("SAMPLING_LAB_THREADS")
        assert configure_threads() == 1  # the safe default
        monkeypatch.setenv("SAMPLING_LAB_THREADS", "lots")
        with pytest.raises(ValueError, match="SAMPLING_LAB_THREADS"):
            configure_threads()
        with pytest.raises(ValueError, match=">= 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not os.environ.get("SAMPLING_LAB_SLOW_TESTS"),
                    reason="slow (~1 min): set SAMPLING_LAB_SLOW_TESTS=1")
def test_smollm2_logits_match_transformers_gguf() -> None:
    """The real bundled model against transformers' own GGUF loader (slow: both dequantise the file)."""
    pytest.importorskip("transformers")
    from bench.run import hf_smollm2

    lm = core.load_model("smollm2")
    ids = [8600, 3867, 7488, 346]
    with torch.inference_mode():
        ref = hf_smollm2()(torch.tensor([ids])).logits[0, -1]
    _check_exact(lm, ref, ids)


def test_sample_fast_path_is_the_full_sort() -> None:
    """sample's top-256 shortcut draws exactly the token the full sort would, ties and flat tails included."""
    from core.sampling import _sample_sorted, probabilities, sample

    g = torch.Generator().manual_seed(0)
    cfgs = [core.SamplingConfig(), core.SamplingConfig(temperature=0), core.SamplingConfig(temperature=0.5, top_k=300),
            core.SamplingConfig(top_p=0.9), core.SamplingConfig(temperature=5)]
    fast_path = 0
    for trial in range(60):
        logits = torch.randn(3, 5000, generator=g) * float(torch.rand(1, generator=g) * 12)
        if trial % 4 == 0:
            logits = torch.round(logits * 2) / 2  # many exact ties
        probs = torch.stack([probabilities(logits[i], cfgs[(trial + i) % len(cfgs)]) for i in range(3)])
        for _ in range(4):
            u = torch.rand(1, generator=g, dtype=torch.float64).expand(3)
            assert torch.equal(sample(probs, uniform=u), _sample_sorted(probs, u.unsqueeze(-1).contiguous()).squeeze(-1)), \
                f"trial {trial}"
            fast_path += int(float(probs.sort(-1, descending=True).values[:, :256].sum(-1).min()) > float(u[0]))
    assert fast_path > 50  # the shortcut itself was exercised, not only the fallback
