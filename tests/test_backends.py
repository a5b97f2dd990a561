"""core/backends and core/prefix_cache.py: choosing a backend, the plain model against the fast one,
the plain model's PyTorch behaviour (.to, state_dict, devices), prefix reuse, and concurrency."""
from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

import core
from core import backends
from core.backends import base
from core.models import build_model
from core.prefix_cache import PrefixStore
from core.weights import load_checked, random_state

ATOL = 1e-4
GREEDY = core.SamplingConfig(temperature=0)
PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def plain_smollm2() -> core.LanguageModel:
    return core.load_model("smollm2", backend="torch")


def _text(lm: core.LanguageModel, prompt: str | list[int], n: int = 20, **kw) -> str:
    return "".join(s.text for s in core.generate(lm, prompt, GREEDY, n, stop_at_eos=False, **kw))


# ---------------------------------------------------------------- choosing

def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    model = core.load_model("gpt2-tiny", backend="torch").model
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    assert backends.choose(model).name == "fast"            # float32 on the CPU with OpenBLAS
    assert backends.choose(model, "torch").name == "torch"  # the argument wins
    monkeypatch.setenv(backends.BACKEND_ENV, "torch")
    assert backends.choose(model).name == "torch"
    assert core.load_model("gpt2-tiny").backend == "torch"
    assert backends.choose(model, "fast").name == "fast"    # the argument wins over the environment
    monkeypatch.setenv(backends.BACKEND_ENV, "turbo")
    with pytest.raises(ValueError, match="SAMPLING_LAB_BACKEND must be one of torch, fast, got 'turbo'"):
        backends.choose(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        core.load_model("gpt2-tiny", backend="gpu")


def test_fast_backend_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    lm = core.load_model("gpt2-tiny", dtype=torch.float64)
    assert lm.backend == "torch" and lm.model.tok_emb.weight.dtype == torch.float64  # falls back
    with pytest.raises(backends.BackendUnavailable, match="float32 on the CPU"):
        core.load_model("gpt2-tiny", dtype=torch.bfloat16, backend="fast")
    with pytest.raises(ValueError, match="floating-point"):
        core.load_model("gpt2-tiny", dtype=torch.int32)
    with pytest.raises(ValueError, match="MPS has no float64"):
        core.load_model("gpt2-tiny", device="mps", dtype=torch.float64)
    lm = core.load_model("gpt2-tiny", device="auto")
    assert lm.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lm.engine.top_n is None  # both local backends report the whole vocabulary


# ---------------------------------------------------------------- plain against fast

def test_plain_and_fast_backends_agree_on_the_bundled_model(smollm2: core.LanguageModel,
                                                            plain_smollm2: core.LanguageModel) -> None:
    assert smollm2.backend == "fast" and plain_smollm2.backend == "torch"
    ids = smollm2.tokenizer.encode(PROMPT)
    with torch.inference_mode():
        states = [lm.engine.new_state(1, len(ids) + 8) for lm in (smollm2, plain_smollm2)]
        logits = [lm.engine.prefill(torch.tensor([ids]), s) for lm, s in zip((smollm2, plain_smollm2), states)]
        for step in range(8):
            token = logits[1].argmax(-1)
            logits = [lm.engine.step(token, s) for lm, s in zip((smollm2, plain_smollm2), states)]
            diff = (logits[0] - logits[1]).abs().max().item()
            assert diff < ATOL, f"step {step}: fast vs plain max |Δlogit| {diff:.2e}"
            assert int(logits[0].argmax()) == int(logits[1].argmax())
    smollm2.prefixes.clear()
    assert _text(smollm2, PROMPT) == _text(plain_smollm2, PROMPT)


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_golden_smollm2_on_both_backends(backend: str, smollm2: core.LanguageModel,
                                         plain_smollm2: core.LanguageModel) -> None:
    lm = smollm2 if backend == "fast" else plain_smollm2
    lm.prefixes.clear()
    probs = torch.softmax(lm.next_token_logits(lm.tokenizer.encode(PROMPT)), -1)
    top = torch.topk(probs, 2)
    assert [lm.tokenizer.token_text(int(i)) for i in top.indices] == [" away", " forward"]
    assert abs(float(top.values[0]) - 0.310) < 5e-4 and abs(float(top.values[1]) - 0.176) < 5e-4


def test_float64_run_of_the_plain_backend() -> None:
    lm32 = core.load_model("llama-tiny", backend="torch")
    lm64 = core.load_model("llama-tiny", dtype=torch.float64)
    assert lm64.backend == "torch" and lm64.model.blocks[0].attn.q_proj.weight.dtype == torch.float64
    ids = [6109, 3626, 6100, 345, 11, 290]
    a, b = lm32.next_token_logits(ids), lm64.next_token_logits(ids)
    assert b.dtype == torch.float32  # logits are float32 whatever the weights
    assert (a - b).abs().max().item() < ATOL and int(a.argmax()) == int(b.argmax())
    assert _text(lm32, ids, 8) == _text(lm64, ids, 8)


# ---------------------------------------------------------------- the plain model as PyTorch users expect

@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_state_dict_saves_with_safetensors_and_loads_back(preset: str, tmp_path) -> None:
    lm = core.load_model(preset)
    path = tmp_path / "model.safetensors"
    save_file(lm.model.state_dict(), str(path))
    again = load_checked(lm.model.cfg, load_file(str(path)))
    ids = [1, 2, 3, 4, 5]
    with torch.inference_mode():
        assert torch.equal(again(torch.tensor([ids])), lm.model(torch.tensor([ids])))


def test_to_is_cheap_and_changes_nothing_else() -> None:
    cfg = core.load_model("llama-tiny").model.cfg
    model = load_checked(cfg, random_state(cfg))
    before = {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()}
    params = list(model.parameters())
    assert model.to(torch.float32) is model and model.to("cpu") is model
    assert list(model.parameters()) == params  # the very same Parameters, not copies
    assert {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()} == before
    assert all(v.is_contiguous() for v in model.state_dict().values())  # no layout tricks to save
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        ref = model(idx)
        model.to(torch.bfloat16)
        diff = (model(idx).float() - ref).abs().max().item()
    assert 0 < diff < 0.1, f"bf16 logits differ by {diff:.3g}: stale float32 tensors, or wrong ones"


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_every_tensor_is_made_on_the_models_device(preset: str) -> None:
    """On the meta device (no data): a tensor made on a hard-coded device would fail to mix with it."""
    cfg = core.load_model(preset).model.cfg
    with torch.device("meta"):
        model = build_model(cfg)
    engine = backends.TorchBackend(model)
    assert engine.device.type == "meta"
    with torch.inference_mode():
        state = engine.new_state(2, 8)
        assert state.k[0].device.type == "meta"
        logits = engine.prefill(torch.zeros(2, 5, dtype=torch.long, device="meta"), state)
        assert logits.shape == (2, cfg.vocab_size) and logits.device.type == "meta"
        assert engine.step(torch.zeros(2, dtype=torch.long, device="meta"), state).device.type == "meta"
        assert state.pos == 6


# ---------------------------------------------------------------- batched steps

@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_batched_step_rows_match_each_row_alone(backend: str) -> None:
    """One step advances several requests' rows; each row is what it gets alone: the same bits on the
    fast backend, float32 rounding aside on the plain one (torch's batched matmuls)."""
    lm = core.load_model("llama-tiny", backend=backend)
    ids = torch.tensor([[5, 6, 7, 8]])
    tokens = torch.tensor([11, 2024, 7])
    with torch.inference_mode():
        prompt = lm.engine.new_state(1, 6)
        lm.engine.prefill(ids, prompt)
        together = lm.engine.step(tokens, prompt.repeat_batch(3))
        for i in range(3):
            alone = lm.engine.new_state(1, 6)
            lm.engine.prefill(ids, alone)
            one = lm.engine.step(tokens[i:i + 1], alone)[0]
            if backend == "fast":
                assert torch.equal(together[i], one), f"row {i}"
            else:
                assert (together[i] - one).abs().max().item() < 1e-5, f"row {i}"


# ---------------------------------------------------------------- prefix reuse

def _spy_prefill(lm: core.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read: list[int] = []
    prefill = lm.engine.prefill

    def spy(ids, state, progress=None):
        read.append(ids.shape[1])
        return prefill(ids, state, progress)

    monkeypatch.setattr(lm.engine, "prefill", spy)
    return read


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_appending_a_token_reads_only_that_token(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = core.load_model("llama-tiny", backend=backend)
    read = _spy_prefill(lm, monkeypatch)
    ids = torch.randint(0, lm.vocab_size, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    lm.next_token_logits(ids)
    reused = lm.next_token_logits(ids + [42])
    edited = lm.next_token_logits(ids[:150] + [7, 8])      # an edit near the end: the shared start is kept
    shorter = lm.next_token_logits(ids[:100])             # a prefix of what is stored
    assert read == [200, 1, 2, 1]
    with torch.inference_mode():
        for got, seq in ((reused, ids + [42]), (edited, ids[:150] + [7, 8]), (shorter, ids[:100])):
            fresh = lm.model(torch.tensor([seq]))[0, -1]
            diff = (got - fresh).abs().max().item()
            assert diff < ATOL, f"prefix reuse vs a fresh forward: max |Δlogit| {diff:.2e}"
            assert int(got.argmax()) == int(fresh.argmax())


def test_a_second_generate_rereads_only_the_last_partial_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "PREFILL_CHUNK", 16)
    lm = core.load_model("gpt2-tiny")
    read = _spy_prefill(lm, monkeypatch)
    cfg = core.SamplingConfig(temperature=0.8, seed=3)
    ids = list(range(300, 350))   # chunks [0, 16) [16, 32) [32, 48) whole, [48, 50) partial
    first = [s.token_id for s in core.generate(lm, ids, cfg, 10)]
    again = [s.token_id for s in core.generate(lm, ids, cfg, 10)]
    lm.prefixes.clear()
    fresh = [s.token_id for s in core.generate(lm, ids, cfg, 10)]
    assert read == [50, 2, 50] and first == again == fresh
    columns = list(core.generate_many(lm, ids, [cfg, GREEDY], 5))  # several columns share one prompt read
    assert read[-1] == 2 and len(columns) == 5


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_same_seed_same_bits_whatever_the_prefix_store_holds(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation reuses only what a fresh read gives bit for bit: states stored by the approximate
    path (an appended token as one step, a read resumed mid-chunk) never change a generated text."""
    monkeypatch.setattr(base, "PREFILL_CHUNK", 16)
    ids = torch.randint(0, 50257, (45,), generator=torch.Generator().manual_seed(1)).tolist()
    cfg = core.SamplingConfig(temperature=1.0, seed=11)

    def run(lm: core.LanguageModel) -> list[tuple[int, float, tuple[float, ...]]]:
        return [(s.token_id, s.raw_prob, tuple(c.logit for c in s.top_before))
                for s in core.generate(lm, ids, cfg, 12, stop_at_eos=False)]

    fresh = run(core.load_model("llama-tiny", backend=backend))
    lm = core.load_model("llama-tiny", backend=backend)
    for n in (21, 22, 40, 41, 44):   # reads resumed mid-chunk, and single appended tokens
        lm.next_token_logits(ids[:n])
    assert run(lm) == fresh
    assert run(lm) == fresh   # and again, now that generation stored its own state


def test_stopping_early_keeps_the_state_and_errors_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    lm = core.load_model("gpt2-tiny")
    gen = core.generate(lm, PROMPT, GREEDY, 10, stop_at_eos=False)
    steps = [next(gen) for _ in range(3)]
    gen.close()
    n = len(lm.tokenizer.encode(PROMPT))
    assert [len(k) for k in lm.prefixes._entries] == [n + 2]  # the prompt and the two tokens fed back
    assert list(lm.prefixes._entries)[0][n:] == tuple(s.token_id for s in steps[:2])
    lm.prefixes.clear()

    def broken(tokens, state):
        raise RuntimeError("boom")

    monkeypatch.setattr(lm.engine, "step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        list(core.generate(lm, PROMPT, GREEDY, 5))
    assert len(lm.prefixes) == 0  # a half-written state is never stored


def test_prefix_store_is_bounded_by_bytes() -> None:
    lm = core.load_model("gpt2-tiny")
    per_state = lm.engine.new_state(1, 40).nbytes
    lm = core.LanguageModel(lm.name, lm.model, lm.tokenizer, engine=lm.engine, prefixes=PrefixStore(2 * per_state))
    with torch.inference_mode():
        for first in (1, 2, 3):
            state, _ = lm.read_prompt([first] * 40, 40)
            lm.prefixes.put([first] * 40, state)
    assert len(lm.prefixes) == 2 and lm.prefixes.nbytes <= 2 * per_state
    assert [k[0] for k in lm.prefixes._entries] == [2, 3]  # the least recently used went first


def test_progress_is_reported_while_a_prompt_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "PREFILL_CHUNK", 16)
    lm = core.load_model("gpt2-tiny")
    seen: list[tuple[int, int]] = []
    ids = list(range(100, 150))
    chunked = lm.next_token_logits(ids, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(16, 50), (32, 50), (48, 50), (50, 50)]
    with torch.inference_mode():
        assert (chunked - lm.model(torch.tensor([ids]))[0, -1]).abs().max().item() < ATOL
    seen.clear()
    steps = list(core.generate(lm, ids + [7, 8, 9], GREEDY, 2, progress=lambda d, t: seen.append((d, t))))
    assert seen == [(5, 5)] and len(steps) == 2  # from the last whole chunk (48) on


# ---------------------------------------------------------------- concurrency

def test_concurrent_requests_give_what_each_gives_alone(smollm2: core.LanguageModel) -> None:
    """Threads share one model, its prefix store and the fast backend's OpenBLAS lease."""
    prompts = ["The capital of France is", "Every effort moves you", "Once upon a time", "The capital of France"]
    cfgs = [GREEDY, core.SamplingConfig(temperature=0.9, seed=1), GREEDY, core.SamplingConfig(top_k=5, seed=2)]
    smollm2.prefixes.clear()
    alone = [[s.token_id for s in core.generate(smollm2, p, c, 12)] for p, c in zip(prompts, cfgs)]
    logits_alone = [smollm2.next_token_logits(smollm2.tokenizer.encode(p)) for p in prompts]
    together: dict[int, list[int]] = {}
    logits: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            together[i] = [s.token_id for s in core.generate(smollm2, prompts[i], cfgs[i], 12)]
            logits[i] = smollm2.next_token_logits(smollm2.tokenizer.encode(prompts[i]) + [11])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    for _ in range(2):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert [together[i] for i in range(len(prompts))] == alone
    smollm2.prefixes.clear()
    for i, p in enumerate(prompts):
        fresh = smollm2.next_token_logits(smollm2.tokenizer.encode(p) + [11])
        assert (logits[i] - fresh).abs().max().item() < ATOL
    assert all(torch.isfinite(x).all() for x in logits_alone)


def test_fast_backend_packs_once_on_first_use() -> None:
    """Packing waits for the first decode step; a prompt is read without it, and threads that ask at
    once share one set of copies."""
    lm = core.load_model("llama-tiny", backend="fast")
    engine = lm.engine
    assert engine._arrays is None
    lm.next_token_logits([1, 2, 3])
    assert engine._arrays is None  # a prompt of several tokens is read by the torch model
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(engine.arrays)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 3 and all(a is seen[0] for a in seen)
    state = engine.new_state(1, 8)
    engine.prefill(torch.tensor([[1, 2, 3]]), state)
    engine.step(torch.tensor([4]), state)
    assert engine.arrays is seen[0]
