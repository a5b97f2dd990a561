"""Tests for core.sampling: exact values on tiny hand-built distributions, batch size >= 2."""

import dataclasses
import math

import pytest
import torch

from core.sampling import (
    PRESETS,
    SamplingConfig,
    apply_min_p,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    argmax,
    draw_uniform,
    entropy,
    filter_logits,
    make_generator,
    moot_warnings,
    pipeline,
    probabilities,
    rank_of,
    sample,
)

INF = float("inf")

# The book's toy example (Raschka, "Build a Large Language Model (From Scratch)", ch. 5).
VOCAB = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
BOOK_LOGITS = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
FORWARD = VOCAB.index("forward")


def logits_of(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given (normalised) probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def kept_ids(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row > -INF).flatten().tolist() for row in logits]


# Two rows with different argmaxes and different tails.
ROWS = logits_of([0.5, 0.3, 0.15, 0.05], [0.1, 0.22, 0.28, 0.4])


# --- the book's example ----------------------------------------------------------------------

def test_book_example_temperature_1():
    probs = probabilities(BOOK_LOGITS, SamplingConfig())
    assert probs[FORWARD].item() == pytest.approx(0.5721, abs=1e-4)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_book_example_low_temperature_sharpens():
    probs = probabilities(BOOK_LOGITS, SamplingConfig(temperature=0.1))
    assert probs[FORWARD].item() == pytest.approx(0.9910, abs=1e-4)


def test_book_example_high_temperature_flattens():
    probs = probabilities(BOOK_LOGITS, SamplingConfig(temperature=5.0))
    assert probs[FORWARD].item() == pytest.approx(0.2421, abs=1e-4)
    assert int(probs.argmax()) == FORWARD                       # temperature keeps the order
    assert probs.min().item() > 0.04                            # even "pizza" gets a real share
    temps = [0.1, 1.0, 5.0]
    entropies = [entropy(probabilities(BOOK_LOGITS, SamplingConfig(temperature=t))) for t in temps]
    assert entropies[0] < entropies[1] < entropies[2]


def test_book_example_top_k_3():
    probs = probabilities(BOOK_LOGITS, SamplingConfig(top_k=3))
    expected = torch.tensor([0.0615, 0, 0, 0.5775, 0, 0, 0, 0.3610, 0])
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    assert (probs[expected == 0] == 0).all()                    # exactly zero, not tiny


# --- inputs are never modified ---------------------------------------------------------------

CALLS = {
    "temperature 0.5": lambda x: apply_temperature(x, 0.5),
    "temperature 0": lambda x: apply_temperature(x, 0.0),
    "top-k": lambda x: apply_top_k(x, 2),
    "top-p": lambda x: apply_top_p(x, 0.6),
    "min-p": lambda x: apply_min_p(x, 0.3),
    "filter_logits": lambda x: filter_logits(x, SamplingConfig(0.7, 3, 0.9, 0.05)),
    "probabilities": lambda x: probabilities(x, SamplingConfig(0.7, 3, 0.9, 0.05)),
    "pipeline": lambda x: pipeline(x, SamplingConfig(0.7, 3, 0.9, 0.05)),
    "entropy": lambda x: entropy(x.softmax(-1)),
    "rank_of": lambda x: rank_of(x, torch.tensor([0, 1])),
    "sample": lambda x: sample(x.softmax(-1), make_generator(0)),
}


@pytest.mark.parametrize("name", CALLS)
def test_input_logits_unchanged(name):
    logits = torch.tensor([[0.0, -INF, 2.0, 1.0, 1.0], [3.0, 1.0, -2.0, 0.5, 2.5]])
    before = logits.clone()
    CALLS[name](logits)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_are_computed_in_float32(dtype):
    probs = probabilities(BOOK_LOGITS.to(dtype), SamplingConfig(temperature=0.7, top_p=0.9))
    assert probs.dtype == torch.float32
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


# --- temperature -----------------------------------------------------------------------------

def test_temperature_divides_logits():
    out = apply_temperature(torch.tensor([[2.0, -1.0], [0.5, 4.0]]), 0.5)
    assert torch.equal(out, torch.tensor([[4.0, -2.0], [1.0, 8.0]]))


def test_temperature_0_is_one_hot_at_first_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 2.0, 5.0]])
    out = apply_temperature(logits, 0)
    assert torch.equal(out, torch.tensor([[-INF, 0.0, -INF, -INF], [0.0, -INF, -INF, -INF]]))
    probs = probabilities(logits, SamplingConfig(temperature=0))
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("seed", [0, 1, 123, 2**40, None])
def test_temperature_0_samples_the_argmax_for_any_seed(seed):
    cfg = SamplingConfig(temperature=0, seed=seed)
    probs = probabilities(torch.stack([BOOK_LOGITS, -BOOK_LOGITS]), cfg)
    generator = make_generator(cfg.seed)
    for _ in range(20):
        assert sample(probs, generator).tolist() == [FORWARD, VOCAB.index("effort")]


@pytest.mark.parametrize("temperature", [1e-6, 1e6])
def test_extreme_temperatures_give_finite_probabilities(temperature):
    logits = torch.stack([BOOK_LOGITS, torch.tensor([1e4, -1e4, 0, 0, 0, 0, 0, 0, 3.0])])
    probs = probabilities(logits, SamplingConfig(temperature=temperature))
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2), atol=1e-6, rtol=0)
    if temperature == 1e-6:
        assert probs.argmax(-1).tolist() == [FORWARD, 0]
        assert probs.max(-1).values.min().item() == pytest.approx(1.0, abs=1e-6)
    else:
        torch.testing.assert_close(probs[0], torch.full((9,), 1 / 9), atol=1e-4, rtol=0)


# --- top-k -----------------------------------------------------------------------------------

def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [4.0, 0.0, -1.0, 6.0]])
    out = apply_top_k(logits, 2)
    assert kept_ids(out) == [[1, 2], [0, 3]]
    assert torch.equal(out[out > -INF], logits[out > -INF])     # survivors keep their values


@pytest.mark.parametrize("top_k", [None, 0])
def test_top_k_off(top_k):
    assert apply_top_k(ROWS, top_k) is ROWS


@pytest.mark.parametrize("top_k", [4, 5, 10**9])
def test_top_k_is_clamped_to_vocabulary(top_k):
    assert torch.equal(apply_top_k(ROWS, top_k), ROWS)


def test_top_k_1_keeps_the_argmax_and_ties_keep_exactly_k():
    logits = torch.tensor([[2.0, 2.0, 1.0, 0.0], [1.0, 3.0, 3.0, 3.0]])
    assert kept_ids(apply_top_k(logits, 1)) == [[0], [1]]
    assert kept_ids(apply_top_k(logits, 2)) == [[0, 1], [1, 2]]


def test_top_k_with_existing_minus_inf():
    logits = torch.tensor([[0.0, -INF, 1.0, -INF], [-INF, 2.0, 1.0, 0.0]])
    out = apply_top_k(logits, 3)
    assert kept_ids(out) == [[0, 2], [1, 2, 3]]
    assert not probabilities(logits, SamplingConfig(top_k=3)).isnan().any()


# --- top-p -----------------------------------------------------------------------------------

def test_top_p_keeps_the_smallest_nucleus_per_row():
    # Row 0: 0.5 + 0.3 = 0.8 >= 0.7.  Row 1: 0.4 + 0.28 = 0.68 < 0.7, so 0.22 joins.
    assert kept_ids(apply_top_p(ROWS, 0.7)) == [[0, 1], [1, 2, 3]]
    assert kept_ids(apply_top_p(ROWS, 0.45)) == [[0], [2, 3]]


def test_top_p_tiny_keeps_exactly_one_and_one_keeps_all():
    logits = torch.cat([ROWS, logits_of([0.5, 0.5, 0.0, 0.0])])
    assert kept_ids(apply_top_p(logits, 1e-9)) == [[0], [3], [0]]
    assert apply_top_p(ROWS, 1.0) is ROWS


def test_top_p_with_existing_minus_inf():
    logits = logits_of([0.0, 0.6, 0.4, 0.0], [0.3, 0.0, 0.0, 0.7])
    assert kept_ids(apply_top_p(logits, 0.5)) == [[1], [3]]
    assert kept_ids(apply_top_p(logits, 0.7)) == [[1, 2], [3]]
    assert kept_ids(apply_top_p(logits, 0.71)) == [[1, 2], [0, 3]]


def _hf_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Hugging Face TopPLogitsWarper.__call__ (min_tokens_to_keep=1), copied for comparison."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
    sorted_indices_to_remove[..., -1:] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, -INF)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_top_p_matches_hugging_face(top_p):
    logits = torch.randn(6, 100, generator=make_generator(0)) * 3
    assert torch.equal(apply_top_p(logits, top_p), _hf_top_p(logits, top_p))


# --- min-p -----------------------------------------------------------------------------------

def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    # Thresholds: 0.2 * 0.5 = 0.1 and 0.2 * 0.4 = 0.08; then 0.25 and 0.2.
    assert kept_ids(apply_min_p(ROWS, 0.2)) == [[0, 1, 2], [0, 1, 2, 3]]
    assert kept_ids(apply_min_p(ROWS, 0.5)) == [[0, 1], [1, 2, 3]]


def test_min_p_off_and_near_one():
    assert apply_min_p(ROWS, 0.0) is ROWS
    assert kept_ids(apply_min_p(ROWS, 0.999999)) == [[0], [3]]


def test_min_p_with_existing_minus_inf():
    logits = logits_of([0.0, 0.6, 0.4, 0.0], [0.3, 0.0, 0.0, 0.7])
    assert kept_ids(apply_min_p(logits, 0.5)) == [[1, 2], [3]]


# --- the whole chain -------------------------------------------------------------------------

def test_filter_logits_runs_temperature_top_k_top_p_min_p_in_order():
    cfg = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05)
    logits = torch.stack([BOOK_LOGITS, BOOK_LOGITS.flip(0)])
    by_hand = apply_min_p(apply_top_p(apply_top_k(apply_temperature(logits, 0.7), 5), 0.9), 0.05)
    assert torch.equal(filter_logits(logits, cfg), by_hand)
    assert torch.equal(probabilities(logits, cfg), torch.softmax(by_hand, dim=-1))


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("temperature", -1.0, r"temperature must be a finite number >= 0, got -1\.0"),
    ("temperature", math.nan, r"temperature .* got nan"),
    ("temperature", math.inf, r"temperature .* got inf"),
    ("temperature", True, r"temperature .* got True"),
    ("temperature", "0.7", r"temperature .* got '0\.7'"),
    ("top_p", 0, r"top_p must be a finite number in \(0, 1\], got 0"),
    ("top_p", 1.5, r"top_p .* got 1\.5"),
    ("top_p", math.nan, r"top_p .* got nan"),
    ("min_p", 1, r"min_p must be a finite number in \[0, 1\), got 1"),
    ("min_p", -0.1, r"min_p .* got -0\.1"),
    ("min_p", math.inf, r"min_p .* got inf"),
    ("top_k", -1, r"top_k must be None or an int >= 0, got -1"),
    ("top_k", 2.5, r"top_k .* got 2\.5"),
    ("top_k", True, r"top_k .* got True"),
    ("seed", True, r"seed must be None or an int, got True"),
    ("seed", 1.5, r"seed .* got 1\.5"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        SamplingConfig().replace(**{field: value})


@pytest.mark.parametrize("call, message", [
    (lambda: apply_temperature(ROWS, -0.5), r"temperature .* got -0\.5"),
    (lambda: apply_top_k(ROWS, -2), r"top_k .* got -2"),
    (lambda: apply_top_p(ROWS, 0.0), r"top_p .* got 0\.0"),
    (lambda: apply_min_p(ROWS, 1.0), r"min_p .* got 1\.0"),
    (lambda: make_generator(False), r"seed .* got False"),
])
def test_functions_validate_their_settings(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_config_accepts_edge_values():
    cfg = SamplingConfig(temperature=2, top_k=0, top_p=1, min_p=0.0, seed=-5)
    assert cfg.replace(top_k=3).top_k == 3
    assert SamplingConfig(seed=None).seed is None
    assert SamplingConfig(seed=2**70).seed == 2**70
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 0.5


def test_presets():
    assert {"default", "greedy"} <= set(PRESETS)
    assert SamplingConfig.from_preset("default") == SamplingConfig()
    assert SamplingConfig.from_preset("greedy").greedy
    assert not SamplingConfig.from_preset("default").greedy
    for name, cfg in PRESETS.items():
        assert SamplingConfig.from_preset(name) is cfg
        assert probabilities(BOOK_LOGITS, cfg).sum().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; known presets: default, greedy"):
        SamplingConfig.from_preset("nope")


# --- pipeline --------------------------------------------------------------------------------

# At T=2 these logits give exactly the probabilities q; at T=1 they give q**2 (renormalised).
Q = [[0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.25, 0.05]]
PIPE_LOGITS = 2 * logits_of(*Q)
PIPE_CFG = SamplingConfig(temperature=2.0, top_k=3, top_p=0.75, min_p=0.5)


def test_pipeline_has_five_stages_and_ends_with_probabilities():
    stages = pipeline(PIPE_LOGITS, PIPE_CFG)
    assert [s.name for s in stages] == ["raw", "temperature", "top-k", "top-p", "min-p"]
    assert [s.label for s in stages] == [
        "raw logits", "temperature 2", "top-k 3", "top-p 0.75", "min-p 0.5"]
    assert [s.active for s in stages] == [False, True, True, True, True]
    assert torch.equal(stages[-1].probs, probabilities(PIPE_LOGITS, PIPE_CFG))
    assert torch.equal(stages[-1].logits, filter_logits(PIPE_LOGITS, PIPE_CFG))


@pytest.mark.parametrize("cfg", [SamplingConfig(), *PRESETS.values(),
                                 SamplingConfig(temperature=0, top_k=2, top_p=0.5, min_p=0.5),
                                 SamplingConfig(temperature=1e-6, top_p=0.3)])
def test_pipeline_last_stage_equals_probabilities_exactly(cfg):
    logits = torch.stack([BOOK_LOGITS, BOOK_LOGITS.flip(0)])
    assert torch.equal(pipeline(logits, cfg)[-1].probs, probabilities(logits, cfg))
    assert torch.equal(pipeline(BOOK_LOGITS, cfg)[-1].probs, probabilities(BOOK_LOGITS, cfg))


def test_pipeline_kept_counts_and_masses():
    stages = pipeline(PIPE_LOGITS, PIPE_CFG)
    assert [s.kept.tolist() for s in stages] == [[4, 4], [4, 4], [3, 3], [2, 2], [2, 1]]
    assert all(s.kept.dtype == torch.int64 for s in stages)
    assert kept_ids(stages[-1].logits) == [[0, 1], [1]]
    raw_total = [sum(p * p for p in q) for q in Q]
    expected_mass = [[1.0, 1.0], [1.0, 1.0], [0.9, 0.95], [0.7, 0.85], [0.7, 0.6]]
    expected_raw = [[1.0, 1.0], [1.0, 1.0],
                    [0.29 / raw_total[0], 1 - 0.05**2 / raw_total[1]],
                    [0.25 / raw_total[0], (0.36 + 0.0625) / raw_total[1]],
                    [0.25 / raw_total[0], 0.36 / raw_total[1]]]
    for stage, mass, raw in zip(stages, expected_mass, expected_raw):
        assert stage.mass_kept.tolist() == pytest.approx(mass, abs=1e-6), stage.name
        assert stage.raw_mass_kept.tolist() == pytest.approx(raw, abs=1e-6), stage.name
    # Stages that remove nothing report exactly 1, not a float sum like 0.99999994.
    assert stages[0].mass_kept.tolist() == stages[1].raw_mass_kept.tolist() == [1.0, 1.0]


def test_pipeline_defaults_are_all_off():
    stages = pipeline(BOOK_LOGITS, SamplingConfig())
    assert [s.label for s in stages] == [
        "raw logits", "temperature 1 (off)", "top-k off", "top-p 1 (off)", "min-p 0 (off)"]
    assert not any(s.active for s in stages)
    assert all(s.kept.shape == () and int(s.kept) == 9 for s in stages)
    assert moot_warnings(stages) == []


def test_pipeline_top_k_at_vocabulary_is_off():
    stage = pipeline(BOOK_LOGITS, SamplingConfig(top_k=9))[2]
    assert stage.label == "top-k 9 (off: vocabulary is 9)" and not stage.active


def test_pipeline_greedy():
    stages = pipeline(PIPE_LOGITS, SamplingConfig(temperature=0))
    assert stages[1].label == "temperature 0 (greedy)" and stages[1].active
    assert stages[1].kept.tolist() == [1, 1]
    assert stages[1].mass_kept.tolist() == [1.0, 1.0]
    raw_total = [sum(p * p for p in q) for q in Q]
    assert stages[1].raw_mass_kept.tolist() == pytest.approx(
        [0.16 / raw_total[0], 0.36 / raw_total[1]], abs=1e-6)


# --- moot warnings ---------------------------------------------------------------------------

def test_moot_warning_top_k_1_then_top_p():
    stages = pipeline(BOOK_LOGITS, SamplingConfig(top_k=1, top_p=0.9))
    assert moot_warnings(stages) == ["top-p 0.9 removes nothing: top-k 1 already kept only 1 token."]


def test_moot_warnings_per_row():
    stages = pipeline(PIPE_LOGITS, PIPE_CFG)
    assert moot_warnings(stages, row=0) == [
        "min-p 0.5 removes nothing: top-p 0.75 already kept only 2 tokens."]
    assert moot_warnings(stages, row=1) == []


def test_moot_warning_for_greedy():
    stages = pipeline(BOOK_LOGITS, SamplingConfig(temperature=0, top_k=3, top_p=0.9, min_p=0.1))
    assert moot_warnings(stages) == ["top-k 3, top-p 0.9 and min-p 0.1 have no effect: "
                                     "temperature 0 is greedy and always picks the top token."]
    assert moot_warnings(pipeline(BOOK_LOGITS, SamplingConfig(temperature=0))) == []


def test_no_moot_warning_when_each_filter_cuts():
    stages = pipeline(BOOK_LOGITS, SamplingConfig(top_k=5, top_p=0.9))
    assert [int(s.kept) for s in stages] == [9, 9, 5, 2, 2]
    assert moot_warnings(stages) == []


# --- sampling --------------------------------------------------------------------------------

def test_sample_inverse_cdf_over_descending_probabilities():
    # Descending order is ids 1 (0.5), 2 (0.3), 0 (0.2): cumulative 0.5, 0.8, 1.0.
    probs = torch.tensor([0.2, 0.5, 0.3])
    picks = [int(sample(probs, uniform=torch.tensor(u))) for u in [0.0, 0.49, 0.5, 0.79, 0.81]]
    assert picks == [1, 1, 2, 2, 0]
    # Ties go to the lower id first: order 2, 0, 1.
    tied = torch.tensor([0.25, 0.25, 0.5])
    assert [int(sample(tied, uniform=torch.tensor(u))) for u in [0.4, 0.6, 0.8]] == [2, 0, 1]


def test_sample_shape_and_dtype():
    probs = probabilities(torch.stack([BOOK_LOGITS] * 3), SamplingConfig())
    ids = sample(probs, make_generator(0))
    assert ids.shape == (3,) and ids.dtype == torch.int64
    one = sample(probs[0], make_generator(0))
    assert one.shape == () and one.dtype == torch.int64


def test_same_seed_same_tokens():
    probs = probabilities(torch.stack([BOOK_LOGITS, BOOK_LOGITS.flip(0)]),
                          SamplingConfig(temperature=1.5))
    runs = []
    for _ in range(2):
        generator = make_generator(42)
        runs.append([sample(probs, generator).tolist() for _ in range(50)])
    assert runs[0] == runs[1]
    other = make_generator(43)
    assert [sample(probs, other).tolist() for _ in range(50)] != runs[0]


def test_common_uniform_gives_same_draw():
    generator = make_generator(7)
    probs = probabilities(BOOK_LOGITS, SamplingConfig(temperature=1.3))
    batch = torch.stack([probs, probs, probs])
    for _ in range(50):
        u = draw_uniform(generator)
        ids = sample(batch, uniform=u.expand(3))
        assert ids.tolist() == [int(sample(probs, uniform=u))] * 3
        assert torch.equal(sample(batch, uniform=u), ids)       # one u broadcasts to every row


def test_common_uniform_across_temperatures_picks_nearby_ranks():
    temps = [0.5, 1.0, 2.0]
    batch = torch.stack([probabilities(BOOK_LOGITS, SamplingConfig(temperature=t)) for t in temps])
    assert sample(batch, uniform=torch.tensor(0.0)).tolist() == [FORWARD] * 3
    ids = sample(batch, uniform=torch.tensor(0.9))
    ranks = rank_of(BOOK_LOGITS.expand(3, -1), ids).tolist()
    assert ranks == sorted(ranks)                               # hotter never picks a better rank


def test_sample_never_picks_a_zero_probability_token():
    # Total is below 1 (as float rounding can make it), and zeros sit between real tokens.
    probs = torch.tensor([[0.3, 0.0, 0.6999, 0.0], [0.0, 0.5, 0.0, 0.4999]])
    us = torch.cat([torch.linspace(0, 0.999, 1000, dtype=torch.float64),
                    torch.tensor([0.9999, 0.99995, 0.999999999, 1 - 2**-53], dtype=torch.float64)])
    for u in us:
        ids = sample(probs, uniform=u.expand(2))
        assert (probs.gather(-1, ids.unsqueeze(-1)) > 0).all(), float(u)
    near_one = torch.tensor([0.999999999, 0.999999999], dtype=torch.float64)   # float32 would be 1.0
    assert sample(probs, uniform=near_one).tolist() == [0, 3]


def test_sample_frequencies_match_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    draws = sample(probs.expand(20_000, -1), make_generator(2024))
    freq = torch.bincount(draws, minlength=5).float() / 20_000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert freq[4] == 0


def test_sample_rejects_bad_input():
    probs = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"uniform values must be in \[0, 1\)"):
        sample(probs, uniform=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"uniform must have shape \(2,\), got \(3,\)"):
        sample(probs, uniform=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="at least one token with probability > 0"):
        sample(torch.tensor([[0.5, 0.5], [0.0, 0.0]]), make_generator(0))


# --- generators and uniforms -----------------------------------------------------------------

def test_make_generator_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    assert torch.equal(draw_uniform(make_generator(5), 4), draw_uniform(make_generator(5), 4))
    for seed in [-1, 2**64 + 3, 2**70]:
        make_generator(seed)
    a, b = draw_uniform(make_generator(None), 4), draw_uniform(make_generator(None), 4)
    assert not torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_draw_uniform():
    u = draw_uniform(make_generator(1), 1000)
    assert u.shape == (1000,) and u.dtype == torch.float64
    assert ((u >= 0) & (u < 1)).all()
    assert draw_uniform(make_generator(1)).shape == (1,)


# --- measurements ----------------------------------------------------------------------------

def test_entropy_in_bits():
    probs = torch.stack([torch.full((8,), 1 / 8), torch.tensor([1.0] + [0.0] * 7),
                         torch.tensor([0.5, 0.5] + [0.0] * 6)])
    assert entropy(probs).tolist() == pytest.approx([3.0, 0.0, 1.0], abs=1e-6)
    assert not entropy(probs).isnan().any()


def test_entropy_matches_the_formula_on_any_shape():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 50257, generator=gen) * 4, -1)
    probs[1, 100:] = 0  # zeros add exactly nothing
    probs[1] /= probs[1].sum()
    exact = -(probs.double() * probs.double().clamp_min(1e-300).log()).sum(-1) / math.log(2)
    assert entropy(probs).dtype == torch.float32 and entropy(probs).shape == (3,)
    assert entropy(probs).double().tolist() == pytest.approx(exact.tolist(), rel=1e-5)
    assert entropy(probs[2]).shape == () and float(entropy(probs[2])) == pytest.approx(float(exact[2]), rel=1e-5)
    assert entropy(probs.double()).tolist() == pytest.approx(exact.tolist(), rel=1e-5)
    assert entropy(probs.bfloat16()).tolist() == pytest.approx(exact.tolist(), rel=1e-2)  # torch's own path
    grad = probs[0].clone().requires_grad_()
    entropy(grad).backward()  # a tensor that needs gradients keeps torch's path
    assert grad.grad is not None and float(entropy(grad).detach()) == pytest.approx(float(exact[0]), rel=1e-5)


def test_argmax_is_torch_argmax_with_ties_to_the_first():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    assert argmax(x).tolist() == x.argmax(-1).tolist() == [1, 0, 2]
    assert argmax(x[2]).dtype == torch.int64 and int(argmax(x[2])) == 2 and argmax(x[2]).shape == ()
    assert argmax(x.t()).tolist() == x.t().argmax(-1).tolist()  # a strided view
    assert argmax(x.bfloat16()).tolist() == [1, 0, 2] and argmax(x.requires_grad_()).tolist() == [1, 0, 2]
    greedy = apply_temperature(x.detach(), 0)
    assert (greedy == 0).nonzero().tolist() == [[0, 1], [1, 0], [2, 2]]


def test_rank_of():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    assert rank_of(logits, torch.tensor([0, 3])).tolist() == [3, 1]
    assert rank_of(logits, torch.tensor([[1, 2, 3], [0, 1, 2]])).tolist() == [[1, 1, 4], [4, 3, 2]]
    assert int(rank_of(BOOK_LOGITS, torch.tensor(VOCAB.index("toward")))) == 2
    assert rank_of(BOOK_LOGITS, torch.tensor([3, 2])).tolist() == [1, 9]
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 9\)"):
        rank_of(BOOK_LOGITS, torch.tensor(9))


def test_greedy_draw_is_the_argmax_of_its_distribution():
    """generate_many skips the draw for greedy rows: every uniform picks the one token of the one-hot."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 300, generator=gen)
    logits[1, 7] = logits[1, 250] = logits[1].max() + 1  # a tie: the lower id wins
    probs = probabilities(logits, SamplingConfig(temperature=0))
    for u in (0.0, 0.3, 0.999999):
        assert torch.equal(sample(probs, uniform=torch.full((4,), u, dtype=torch.float64)), probs.argmax(-1))
    assert probs.argmax(-1)[1] == 7
