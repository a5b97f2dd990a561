"""The remote backend against a real llama.cpp server (xllamacpp) started here on the bundled model's
float32 copy: the same distribution as the in-process model, seeded generation, top-N engines, faults."""
from __future__ import annotations

import json

import pytest
import torch

import core
from core.engines import EngineError, TokenizerMismatchError, llamacpp
from core.loading import _smollm2_path
from engine_fault_proxy import FaultProxy

pytest.importorskip("xllamacpp")

PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"


@pytest.fixture(scope="module")
def server():
    return llamacpp.serve(llamacpp.f32_gguf(_smollm2_path()))


@pytest.fixture(scope="module")
def remote(server) -> core.LanguageModel:
    return core.load_model(server.url)  # a plain URL: tokenizer found and checked against /tokenize


def texts(lm: core.LanguageModel, configs, n: int = 6, seed: int = 7) -> list[list[str | None]]:
    return [[s.text if s else None for s in step] for step in core.generate_many(lm, PROMPT, configs, n, seed=seed)]


def test_url_model_matches_in_process(remote, smollm2) -> None:
    assert remote.backend == "remote" and remote.engine.top_n is None and remote.vocab_size == 49152
    assert remote.tokenizer.encode("Every effort moves you") == PROMPT
    p = remote.next_token_logits(PROMPT).softmax(-1)
    q = smollm2.next_token_logits(PROMPT).softmax(-1)
    tv = 0.5 * (p.double() - q.double()).abs().sum().item()
    print(f"\nremote (llama.cpp F32) vs in-process: TV {tv:.5f}, ' away' {p[2025]:.4f} vs {q[2025]:.4f}")
    assert tv < 5e-3
    assert p.topk(5).indices.tolist() == q.topk(5).indices.tolist() == [2025, 3703, 5567, 2258, 970]


def test_seeded_generation_is_reproducible(remote) -> None:
    cfgs = [core.SamplingConfig(temperature=0.9, seed=1), core.SamplingConfig(temperature=1.3, top_p=0.9, seed=1)]
    a, b = texts(remote, cfgs), texts(remote, cfgs)
    assert a == b and len(a) == 6
    alone = texts(remote, cfgs[:1])
    assert [row[0] for row in a] == [row[0] for row in alone]  # common random numbers: a column as alone
    greedy = [s.token_id for s in core.generate(remote, PROMPT, core.SamplingConfig(temperature=0), 4)]
    assert greedy[0] == 2025  # " away"


def test_llamacpp_choice_runs_the_4bit_file(smollm2) -> None:
    lm = core.load_model("llamacpp:smollm2")
    assert "Q4_1" in lm.name and lm.has_chat
    p = lm.next_token_logits(PROMPT).softmax(-1)
    q = smollm2.next_token_logits(PROMPT).softmax(-1)
    tv = 0.5 * (p.double() - q.double()).abs().sum().item()
    print(f"\nQ4_1 engine vs in-process F32: ' away' {p[2025]:.3f} vs {q[2025]:.3f}, TV {tv:.3f}")
    assert p.argmax() == 2025 and 0.01 < tv < 0.25


def test_top_n_engine_reports_only_n(server) -> None:
    top = core.loading.load_url(server.url, top_n=5)
    logits = top.next_token_logits(PROMPT)
    finite = torch.isfinite(logits)
    assert int(finite.sum()) == 5 and top.engine.top_n == 5
    mass = logits[finite].exp().sum().item()
    assert 0.5 < mass < 0.61  # what the engine did not report is missing, not spread over the five
    steps = list(core.generate(top, PROMPT, core.SamplingConfig(temperature=1.0, seed=3), 3))
    assert len(steps) == 3 and all(s.rank <= 5 for s in steps)


def test_a_different_tokenizer_is_refused(server) -> None:
    fake = json.dumps({"tokens": [1, 2, 3]}).encode()
    with FaultProxy(upstream=server.url, routes={("POST", "/tokenize"): (200, fake)}) as proxy:
        with pytest.raises(TokenizerMismatchError, match="splits text differently"):
            core.loading.load_url(proxy.url, tokenizer=core.loading.smollm2_tokenizer())


def test_server_down_is_an_engine_error() -> None:
    port = llamacpp.free_loopback_port()
    with pytest.raises(EngineError, match="connection refused"):
        core.load_model(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(core.ModelUnavailableError, match="unknown llama.cpp model"):
        core.load_model("llamacpp:nope")
