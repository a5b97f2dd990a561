"""The sampling chain against transformers' own LogitsProcessors, numerically, on batches of 2+.

transformers is a bench-only dependency (requirements-bench.txt): these tests skip without it.
"""
import pytest
import torch

from core.sampling import SamplingConfig, filter_logits, probabilities

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

VOCAB = 300


def batch(seed: int, rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (rows, VOCAB) with a tie at the 5th place of row 0, and a history per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, VOCAB, generator=g) * 2.5
    top = torch.topk(x[0], 6).indices
    x[0, top[5]] = x[0, top[4]]          # top-k 5 then has a tie at the k-th logit
    history = torch.randint(0, VOCAB, (rows, 40), generator=g)
    return x, history


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Same removed tokens, same remaining logits; returns the largest difference."""
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    finite = torch.isfinite(theirs)
    diff = (ours[finite] - theirs[finite]).abs().max().item()
    assert diff <= 1e-5 * max(1.0, theirs[finite].abs().max().item())
    return diff


CASES = [
    ("repetition_penalty", SamplingConfig(repetition_penalty=1.3), lambda: RepetitionPenaltyLogitsProcessor(1.3)),
    ("repetition_penalty<1", SamplingConfig(repetition_penalty=0.7), lambda: RepetitionPenaltyLogitsProcessor(0.7)),
    ("logit_bias", SamplingConfig(logit_bias={3: -4.0, 17: 2.5}),
     lambda: SequenceBiasLogitsProcessor([[[3], -4.0], [[17], 2.5]])),
    ("temperature", SamplingConfig(temperature=0.6), lambda: TemperatureLogitsWarper(0.6)),
    ("top_k", SamplingConfig(top_k=5), lambda: TopKLogitsWarper(5)),
    ("top_p", SamplingConfig(top_p=0.8), lambda: TopPLogitsWarper(0.8)),
    ("min_p", SamplingConfig(min_p=0.05), lambda: MinPLogitsWarper(0.05)),
    ("typical_p", SamplingConfig(typical_p=0.7), lambda: TypicalLogitsWarper(0.7)),
    ("typical_p small", SamplingConfig(typical_p=0.1), lambda: TypicalLogitsWarper(0.1)),
]


@pytest.mark.parametrize("name, cfg, make", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_sampler_matches_transformers(name, cfg, make, seed):
    x, history = batch(seed)
    theirs = make()(history, x.clone())
    ours = filter_logits(x, cfg, history=history)
    diff = assert_same(ours, theirs)
    print(f"\n{name} (seed {seed}): same kept tokens, max |Δlogit| {diff:.2e}")   # pytest -s shows it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_transformers_chain_matches_transformers(seed):
    # _get_logits_processor's order: sequence bias, repetition penalty, temperature, top-k, top-p, min-p, typical
    x, history = batch(seed)
    cfg = SamplingConfig(logit_bias={int(history[0, 0]): 1.5}, repetition_penalty=1.2, temperature=1.4,
                         top_k=40, top_p=0.95, min_p=0.02, typical_p=0.9)
    chain = LogitsProcessorList([
        SequenceBiasLogitsProcessor([[[int(history[0, 0])], 1.5]]), RepetitionPenaltyLogitsProcessor(1.2),
        TemperatureLogitsWarper(1.4), TopKLogitsWarper(40), TopPLogitsWarper(0.95), MinPLogitsWarper(0.02),
        TypicalLogitsWarper(0.9)])
    theirs = chain(history, x.clone())
    ours = filter_logits(x, cfg, history=history)
    diff = assert_same(ours, theirs)
    dp = (probabilities(x, cfg, history=history) - torch.softmax(theirs, -1)).abs().max().item()
    assert dp <= 1e-6
    print(f"\nwhole transformers chain (seed {seed}): max |Δlogit| {diff:.2e}, max |Δp| {dp:.2e}")
    kept = (torch.softmax(theirs, -1) > 0).sum(-1)
    assert bool((kept > 1).all()) and bool((kept < VOCAB).all())   # the case is not trivial


def test_top_k_keeps_ties_like_transformers_only_under_its_rules():
    x, history = batch(0)
    theirs = TopKLogitsWarper(5)(history, x.clone())
    assert int(torch.isfinite(theirs[0]).sum()) == 6                # transformers keeps the tie
    assert int(torch.isfinite(filter_logits(x, SamplingConfig(top_k=5, order="llama.cpp"))[0]).sum()) == 5
