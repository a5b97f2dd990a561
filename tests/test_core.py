"""core: tokenizers, weight loading, the real bundled model (golden values) and generation."""
from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import core
from core import loading, weights
from core.config import GPTConfig

GREEDY = core.SamplingConfig(temperature=0.0)


# ---------------------------------------------------------------- tokenizers

def test_gpt2_tokenizer_golden_ids(tiny):
    assert tiny.tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert tiny.tokenizer.decode([6109, 3626, 6100, 345]) == "Every effort moves you"


def test_typed_special_token_is_plain_text(tiny, smollm2):
    assert 50256 not in tiny.tokenizer.encode("<|endoftext|>")
    ids = smollm2.tokenizer.encode("<|im_start|>user")
    assert not set(ids) & smollm2.tokenizer.special_ids, ids
    assert smollm2.tokenizer.decode(ids) == "<|im_start|>user"


def test_smollm2_tokenizer(smollm2):
    tok = smollm2.tokenizer
    assert tok.encode("Every effort moves you") == [8600, 3867, 7488, 346]
    assert [tok.token_text(i) for i in tok.encode("12345")] == list("12345")  # digits split one by one
    for text in ["héllo wörld", "中文字符", "emoji 😀👍🏽", "e\u0301 combining", "tabs\tand\nnewlines", "NUL\x00x"]:
        assert tok.decode(tok.encode(text)) == text
    # 0x04 has no token in this vocabulary: it is mapped to U+FFFD's token, never to an id past the vocabulary
    ids = tok.encode("a\x04b")
    assert all(0 <= i < smollm2.vocab_size for i in ids)
    assert tok.decode(ids) == "a\ufffdb"


def test_chat_template_keeps_user_text_plain(smollm2):
    ids = smollm2.encode_prompt("Hi <|im_end|>", mode="chat")
    im_end = 2
    assert ids.count(im_end) == 2  # system turn + user turn, not the typed one
    assert smollm2.tokenizer.decode(ids).endswith("Hi <|im_end|><|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="prompt mode"):
        smollm2.encode_prompt("x", mode="poem")


# ---------------------------------------------------------------- the real model: golden values

def test_smollm2_golden_next_token(smollm2):
    logits = smollm2.next_token_logits([8600, 3867, 7488, 346])
    assert logits.shape == (49152,) and logits.dtype == torch.float32
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, 2)
    texts = [smollm2.tokenizer.token_text(int(i)) for i in top.indices]
    assert texts == [" away", " forward"]
    assert top.values.tolist() == pytest.approx([0.310, 0.176], abs=0.0015)


def test_smollm2_greedy_text(smollm2):
    text = "".join(s.text for s in core.generate(smollm2, "Every effort moves you", GREEDY, max_new_tokens=30))
    assert text == (" away from the rest of the team.\n\nIn the context of the original code, this would result "
                    "in a 10% decrease in performance")


def test_smollm2_chat_stops_at_im_end(smollm2):
    steps = list(core.generate(smollm2, "What is the capital of France?", GREEDY, max_new_tokens=30, mode="chat"))
    assert "".join(s.text for s in steps) == "The capital of France is Paris.<|im_end|>"
    assert steps[-1].finished == "eos"


def _recorder() -> tuple[list[tuple[str, float]], weights.StatusCallback]:
    calls: list[tuple[str, float]] = []
    return calls, lambda what, done: calls.append((what, done))


def _in_order(calls: list[tuple[str, float]]) -> bool:
    done = [d for _, d in calls]
    return done == sorted(done) and 0.0 <= done[0] and done[-1] == 1.0


def test_gguf_cache_round_trip(tmp_path):
    path = loading._smollm2_path()
    (cold, status1), (warm, status2) = _recorder(), _recorder()
    cfg1, sd1, vocab1, hit1 = weights.read_gguf_cached(path, tmp_path, status1)
    cfg2, sd2, vocab2, hit2 = weights.read_gguf_cached(path, tmp_path, status2)
    assert (hit1, hit2) == (False, True)
    # a cold read reports each tensor it dequantizes, in order; a warm one only reads the cache
    assert _in_order(cold) and _in_order(warm)
    tensors = [w for w, _ in cold if w.startswith("Converting")]
    assert len(tensors) == len(sd1) and tensors[-1].endswith(f"tensor {len(sd1)} of {len(sd1)}")
    assert not any(w.startswith("Converting") for w, _ in warm)
    assert cfg1 == cfg2 and vocab1 == vocab2
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    # a damaged cache entry is rebuilt, not trusted
    st = next(tmp_path.glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[:1000])
    _, sd3, _, hit3 = weights.read_gguf_cached(path, tmp_path)
    assert not hit3 and torch.equal(sd3["tok_emb.weight"], sd1["tok_emb.weight"])


def test_truncated_gguf_is_reported(tmp_path):
    bad = tmp_path / "cut.gguf"
    with open(loading._smollm2_path(), "rb") as f:
        bad.write_bytes(f.read(2_000_000))
    with pytest.raises(core.WeightsError, match="cut.gguf"):
        core.load_model(str(bad))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(core.WeightsError, match="not a readable GGUF"):
        core.load_model(str(junk))


# ---------------------------------------------------------------- checkpoints users bring

def _tiny_state() -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    cfg = GPTConfig.from_name("gpt2-tiny")
    return cfg, weights.random_state(cfg, seed=7)


def _to_hf(cfg: GPTConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hf = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
          "transformer.ln_f.weight": sd["final_norm.weight"], "transformer.ln_f.bias": sd["final_norm.bias"]}
    for i in range(cfg.n_layers):
        for ours, theirs, t in [("norm1", "ln_1", False), ("norm2", "ln_2", False), ("att.qkv", "attn.c_attn", True),
                                ("att.out_proj", "attn.c_proj", True), ("ff.0", "mlp.c_fc", True),
                                ("ff.2", "mlp.c_proj", True)]:
            w = sd[f"blocks.{i}.{ours}.weight"]
            hf[f"transformer.h.{i}.{theirs}.weight"] = (w.t() if t else w).contiguous()  # Conv1D layout
            hf[f"transformer.h.{i}.{theirs}.bias"] = sd[f"blocks.{i}.{ours}.bias"]
    return hf


def _to_book(cfg: GPTConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    book = {"tok_emb.weight": sd["tok_emb.weight"], "pos_emb.weight": sd["pos_emb.weight"],
            "final_norm.scale": sd["final_norm.weight"], "final_norm.shift": sd["final_norm.bias"],
            "out_head.weight": sd["tok_emb.weight"].clone()}
    for i in range(cfg.n_layers):
        p, q = f"trf_blocks.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            for name, chunk in zip(("W_query", "W_key", "W_value"), sd[f"{q}att.qkv.{part}"].chunk(3)):
                book[f"{p}att.{name}.{part}"] = chunk.clone()
            book[f"{p}att.out_proj.{part}"] = sd[f"{q}att.out_proj.{part}"]
            book[f"{p}ff.layers.0.{part}"] = sd[f"{q}ff.0.{part}"]
            book[f"{p}ff.layers.2.{part}"] = sd[f"{q}ff.2.{part}"]
        for n in ("norm1", "norm2"):
            book[f"{p}{n}.scale"], book[f"{p}{n}.shift"] = sd[f"{q}{n}.weight"], sd[f"{q}{n}.bias"]
        book[f"{p}att.mask"] = torch.triu(torch.ones(cfg.context_length, cfg.context_length), diagonal=1)
    return book


def _reference_logits(cfg: GPTConfig, sd: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    model = weights.load_checked(cfg, sd)
    with torch.inference_mode():
        return model(torch.tensor([ids]), last_only=True)[0, -1]


def test_hf_folder_round_trip(tmp_path):
    cfg, sd = _tiny_state()
    save_file(_to_hf(cfg, sd), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(
        {"vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.emb_dim,
         "n_head": cfg.n_heads, "n_layer": cfg.n_layers, "layer_norm_epsilon": 1e-5}))
    lm = core.load_model(str(tmp_path))
    ids = lm.tokenizer.encode("Every effort moves you")
    # same weights; only float rounding may differ (kernels depend on memory alignment)
    assert torch.allclose(lm.next_token_logits(ids), _reference_logits(cfg, sd, ids), atol=1e-6, rtol=0)


def test_book_state_dict_round_trip(tmp_path):
    cfg, sd = _tiny_state()
    path = tmp_path / "model.pth"
    torch.save(_to_book(cfg, sd), path)
    # the tiny width is not in the book's table, so heads must be given (and a wrong guess is refused)
    with pytest.raises(core.WeightsError, match="embedding width 32"):
        core.load_model(str(path))
    lm = core.load_checkpoint(path, n_heads=cfg.n_heads)
    assert lm.model.cfg.n_layers == 2 and not lm.model.cfg.tied_head
    ids = lm.tokenizer.encode("Every effort moves you")
    assert torch.allclose(lm.next_token_logits(ids), _reference_logits(cfg, sd, ids), atol=1e-5)


def test_book_config_inferred_from_shapes():
    cfg = GPTConfig.from_name("gpt2")
    shapes = {"tok_emb.weight": torch.empty(50257, 768), "pos_emb.weight": torch.empty(1024, 768),
              **{f"trf_blocks.{i}.att.W_query.bias": torch.empty(768) for i in range(12)}}
    inferred = weights.gpt2_config_from_book(shapes)
    assert (inferred.emb_dim, inferred.n_heads, inferred.n_layers, inferred.qkv_bias) == (768, 12, 12, True)
    assert weights.gpt2_config_from_book(shapes, n_heads=8).n_heads == 8
    assert cfg.n_heads == 12


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("blocks.1.ff.0.weight"), "missing tensor 'blocks.1.ff.0.weight'"),
    (lambda sd: sd.__setitem__("blocks.0.att.qkv.weight", torch.zeros(5, 32)), r"'blocks.0.att.qkv.weight' has shape \(5, 32\)"),
    (lambda sd: sd["pos_emb.weight"].__setitem__((3, 4), float("nan")), "'pos_emb.weight' contains NaN"),
    (lambda sd: sd["final_norm.bias"].__setitem__(0, float("inf")), "'final_norm.bias' contains NaN or infinite"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)), "unexpected tensor 'extra.weight'"),
])
def test_bad_state_dict_names_the_key(damage, message):
    cfg, sd = _tiny_state()
    damage(sd)
    with pytest.raises(core.WeightsError, match=message):
        weights.load_checked(cfg, sd)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sampling_lab_pwned",))


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = Path("/tmp/sampling_lab_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"tok_emb.weight": _Evil()}, f)
    with pytest.raises(core.WeightsError, match="refused without running"):
        core.load_model(str(path))
    assert not marker.exists()


def test_files_that_are_no_checkpoint(tmp_path):
    txt = tmp_path / "notes.pth"
    txt.write_text("hello")
    with pytest.raises(core.WeightsError, match="notes.pth"):
        core.load_model(str(txt))
    cut = tmp_path / "cut.safetensors"
    cfg, sd = _tiny_state()
    save_file(_to_hf(cfg, sd), str(cut))
    cut.write_bytes(cut.read_bytes()[:5000])
    with pytest.raises(core.WeightsError, match="not a readable safetensors"):
        core.load_model(str(cut))
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(core.WeightsError, match="unknown checkpoint type '.npz'"):
        core.load_model(str(other))
    with pytest.raises(core.WeightsError, match="does not exist"):
        core.load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(core.WeightsError, match="missing"):
        core.load_model(str(tmp_path))  # a folder without config.json


def test_offline_hub_model_says_how_to_supply_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(core.ModelUnavailableError, match="config.json and model.safetensors"):
        core.load_model("gpt2")
    with pytest.raises(core.ModelUnavailableError, match="unknown model 'gpt5'"):
        core.load_model("gpt5")


# ---------------------------------------------------------------- generation

def _text(lm, cfg, prompt="Every effort moves you", n=12, **kw) -> str:
    return "".join(s.text for s in core.generate(lm, prompt, cfg, max_new_tokens=n, **kw))


def test_same_seed_same_text_and_greedy_ignores_seed(tiny):
    cfg = core.SamplingConfig(temperature=1.0, seed=42)
    assert _text(tiny, cfg) == _text(tiny, cfg)
    assert _text(tiny, cfg) != _text(tiny, cfg.replace(seed=43))  # random weights: near-uniform, many choices
    assert _text(tiny, GREEDY.replace(seed=1)) == _text(tiny, GREEDY.replace(seed=2))


def test_cache_matches_no_cache(tiny, smollm2):
    for lm in (tiny, smollm2):
        cached = [s.token_id for s in core.generate(lm, "Every effort moves you", GREEDY, 12)]
        uncached = [s.token_id for s in core.generate(lm, "Every effort moves you", GREEDY, 12, use_cache=False)]
        assert cached == uncached
    cfg = core.SamplingConfig(temperature=1.0, top_k=50, seed=5)
    a = [(s.token_id, round(s.prob, 5)) for s in core.generate(tiny, "Hello there", cfg, 15)]
    b = [(s.token_id, round(s.prob, 5)) for s in core.generate(tiny, "Hello there", cfg, 15, use_cache=False)]
    assert a == b


def test_step_data(smollm2):
    steps = list(core.generate(smollm2, "Every effort moves you", GREEDY, 3, top_n=5))
    first = steps[0]
    assert first.token_id == smollm2.tokenizer.encode(" away")[0] and first.rank == 1 and first.was_top_choice
    assert first.raw_prob == pytest.approx(0.310, abs=0.0015) and first.prob == 1.0 and first.entropy == 0.0
    assert [c.text for c in first.top_before[:2]] == [" away", " forward"]
    assert len(first.top_after) == 1  # greedy keeps one token
    assert first.raw_entropy > 0 and first.truncated == 0 and first.prompt_tokens == 4
    assert [s.finished for s in steps] == [None, None, "length"]


def test_steps_match_probabilities(tiny):
    cfg = core.SamplingConfig(temperature=0.8, top_p=0.9, seed=3)
    ids = tiny.tokenizer.encode("Every effort moves you")
    first = next(core.generate(tiny, ids, cfg, 1))
    probs = core.probabilities(tiny.next_token_logits(ids), cfg)
    assert first.prob == pytest.approx(float(probs[first.token_id]), rel=1e-6)
    assert probs[first.token_id] > 0


def test_step_ranks_are_rank_of_with_ties_and_beyond_the_top_n(tiny):
    from core.generation import _candidates, _rank

    logits = torch.tensor([1.0, 3.0, 3.0, 0.5, 2.0, 3.0, -1.0, 2.0])
    probs = torch.softmax(logits, -1)
    before, after = _candidates(tiny, logits, probs, probs.where(logits >= 2.0, 0.0), 4)
    assert len(after) == 4 and all(c.prob > 0 for c in after)  # 5 tokens kept, 4 shown
    for token in range(8):  # in the top 4 (a three-way tie at the top), at its edge (a tie), and far below
        assert _rank(logits, token, before) == int(core.sampling.rank_of(logits, torch.tensor(token))), token
    steps = list(core.generate(tiny, "Every effort", core.SamplingConfig(temperature=3.0, seed=1), 12, top_n=3))
    full = [int(core.sampling.rank_of(tiny.next_token_logits(tiny.tokenizer.encode("Every effort")), torch.tensor(
        steps[0].token_id)))]
    assert steps[0].rank == full[0] and any(s.rank > 3 for s in steps)  # hot draws land past the top 3


def test_filtered_candidates_are_the_top_n_of_the_filtered_distribution(smollm2):
    """The filtered top-n is read off the raw top-n where that is the same answer: checked against
    topk over the filtered probabilities for every kind of filter, and for a tie cut at the edge."""
    from core.generation import _candidates

    def by_topk(probs: torch.Tensor, n: int) -> list[tuple[int, float]]:
        top = torch.topk(probs, n)
        return [(int(i), float(v)) for i, v in zip(top.indices, top.values) if v > 0]

    logits = smollm2.next_token_logits(smollm2.tokenizer.encode("Every effort moves you"))
    raw = torch.softmax(logits, -1)
    configs = [core.SamplingConfig(temperature=t) for t in (0, 0.5, 1, 2)] + \
        [core.SamplingConfig(top_k=k) for k in (1, 3, 10, 11, 500)] + \
        [core.SamplingConfig(top_p=p) for p in (0.3, 0.9)] + [core.SamplingConfig(min_p=m) for m in (0.05, 0.5)] + \
        [core.SamplingConfig(temperature=1.5, top_k=40, top_p=0.95, min_p=0.02)]
    for cfg in configs:
        probs = core.probabilities(logits, cfg)
        _, after = _candidates(smollm2, logits, raw, probs, 10)
        assert [(c.token_id, c.prob) for c in after] == by_topk(probs, 10), cfg
        assert all(c.raw_prob == float(raw[c.token_id]) and c.logit == float(logits[c.token_id]) for c in after)
    # top-k keeps the lower id of a tie at its edge; topk over the logits may list the other one
    tied = torch.tensor([5.0, 4.0, 3.0, 3.0, 3.0, 1.0])
    for k in (3, 4):
        probs = core.probabilities(tied, core.SamplingConfig(top_k=k))
        for n in (2, 3, 4, 6):
            _, after = _candidates(smollm2, tied, torch.softmax(tied, -1), probs, n)
            kept = [i for i in range(6) if probs[i] > 0]
            # ties in probability may list either token, as topk may; removed ones never
            assert [c.prob for c in after] == [float(probs[i]) for i in kept][:n], (k, n)
            assert {c.token_id for c in after} <= set(kept) and len({c.token_id for c in after}) == len(after)


def test_long_prompt_keeps_last_tokens(tiny):
    ids = list(range(1000, 1300))  # 300 tokens > the tiny context of 256
    steps = list(core.generate(tiny, ids, GREEDY, 10))
    assert steps[0].truncated == 300 - (256 - 10) and steps[0].prompt_tokens == 246
    assert tiny.next_token_logits(ids).shape == (50257,)  # reads the last 256


def test_generation_input_errors(tiny):
    with pytest.raises(core.EmptyPromptError):
        next(core.generate(tiny, "", GREEDY, 5))
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(core.generate(tiny, "hi", GREEDY, 0))
    with pytest.raises(ValueError, match="token id 99999"):
        tiny.next_token_logits([1, 99999])


def test_side_by_side_common_random_numbers(tiny):
    cfgs = [core.SamplingConfig(temperature=1.0), core.SamplingConfig(temperature=1.0),
            core.SamplingConfig(temperature=0.0)]
    rows = list(core.generate_many(tiny, "Every effort moves you", cfgs, 10, seed=9))
    a = [r[0].token_id for r in rows]
    b = [r[1].token_id for r in rows]
    assert a == b  # same settings + same uniform numbers => same text
    alone = [s.token_id for s in core.generate(tiny, "Every effort moves you", cfgs[0].replace(seed=9), 10)]
    assert a == alone  # batching does not change a column
    greedy_alone = [s.token_id for s in core.generate(tiny, "Every effort moves you", GREEDY, 10)]
    assert [r[2].token_id for r in rows] == greedy_alone


def test_generate_many_per_row_seeds(tiny):
    """Each row gets the bits it gets alone; rows with equal seeds keep common random numbers."""
    prompt = "Every effort moves you"
    t1 = core.SamplingConfig(temperature=1.0)
    xtc = core.SamplingConfig(temperature=1.0, xtc_threshold=0.001, xtc_probability=0.5)
    cfgs, seeds = [t1, t1, t1.replace(temperature=1.5), xtc], [5, 6, 5, 5]
    rows = list(zip(*core.generate_many(tiny, prompt, cfgs, 10, seeds=seeds, stop_at_eos=False)))
    for cfg, s, row in zip(cfgs, seeds, rows):
        alone = list(core.generate(tiny, prompt, cfg.replace(seed=s), 10, stop_at_eos=False))
        assert [(x.token_id, x.uniform, x.prob) for x in row] == [(x.token_id, x.uniform, x.prob) for x in alone]
    assert [x.uniform for x in rows[0]] == [x.uniform for x in rows[2]]    # seed 5 twice: the same numbers
    assert [x.uniform for x in rows[0]] != [x.uniform for x in rows[1]]    # seeds 5 and 6: different ones
    assert [x.token_id for x in rows[0]] != [x.token_id for x in rows[1]]
    # seeds=None keeps the one seed for every row
    same = list(zip(*core.generate_many(tiny, prompt, [t1, t1], 6, seed=5, stop_at_eos=False)))
    assert [x.uniform for x in same[0]] == [x.uniform for x in same[1]] == [x.uniform for x in rows[0][:6]]
    with pytest.raises(ValueError, match="seeds has 1 values for 2 configs"):
        next(core.generate_many(tiny, prompt, [t1, t1], 3, seeds=[1]))


def test_shared_model_is_thread_safe(tiny):
    cfg = core.SamplingConfig(temperature=1.0, seed=11)
    expected = {p: _text(tiny, cfg, p, 20) for p in ("one two", "three four", "five six", "seven")}
    results: dict[str, str] = {}

    def run(p: str) -> None:
        results[p] = _text(tiny, cfg, p, 20)

    threads = [threading.Thread(target=run, args=(p,)) for p in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


@pytest.mark.parametrize("source", ["gpt2-tiny", "smollm2"])
def test_load_model_reports_its_status_in_order(source: str) -> None:
    calls, status = _recorder()
    lm = core.load_model(source, status=status)
    assert _in_order(calls) and calls[-1] == ("Model ready", 1.0)
    assert lm.next_token_logits(lm.encode_prompt("Every effort moves you")).shape == (lm.vocab_size,)


def test_status_part_maps_a_part_onto_its_share() -> None:
    calls, status = _recorder()
    part = weights.status_part(status, 0.5, 0.75)
    part("a", 0.0), part("b", 0.5), part("c", 1.0), part("d", 2.0)
    assert calls == [("a", 0.5), ("b", 0.625), ("c", 0.75), ("d", 0.75)]
    assert weights.status_part(None, 0.0, 1.0) is None
