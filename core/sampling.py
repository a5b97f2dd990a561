"""Turn next-token logits into probabilities and draw tokens from them.

Every function is pure: it never modifies its input, and it works on a single row of logits
(shape (V,)) or a batch (shape (B, V)); the last dimension is always the vocabulary.
The chain's order is a setting (`SamplingConfig.order`): transformers' (the default: penalties, then
temperature -> top-k -> top-p -> min-p -> typical), vLLM's, llama.cpp's (temperature last), or any
tuple of stage names. The samplers beyond the basic four live in `core.samplers`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .samplers import (DEFAULT_DRY_BREAKERS, apply_dry, apply_logit_bias, apply_penalties, apply_top_n_sigma,
                       apply_typical, apply_xtc, history_rows, token_counts)

NEG_INF = float("-inf")
_TINY = torch.finfo(torch.float32).tiny


# --- validation (shared by SamplingConfig and the apply_* functions) -------------------------

def _is_number(value: object) -> bool:
    # bool is an int subclass; True as a temperature is almost certainly a bug.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_temperature(value: object) -> None:
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {value!r}")


def _check_top_k(value: object) -> None:
    ok = value is None or (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
    )
    if not ok:
        raise ValueError(f"top_k must be None or an int >= 0, got {value!r}")


def _check_top_p(value: object) -> None:
    if not (_is_number(value) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"top_p must be a finite number in (0, 1], got {value!r}")


def _check_min_p(value: object) -> None:
    if not (_is_number(value) and math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"min_p must be a finite number in [0, 1), got {value!r}")


def _check_seed(value: object) -> None:
    if not (value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool))):
        raise ValueError(f"seed must be None or an int, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_range(name: str, value: object, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """A finite number within the given bounds, or ValueError naming the field and the value."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            where = ""
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")


def _check_int(name: str, value: object, low: int) -> None:
    if not (_is_int(value) and value >= low):
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _logit_bias_pairs(value: object) -> tuple[tuple[int, float], ...]:
    """logit_bias as sorted (token id, bias) pairs, from a mapping or pairs; ValueError names the bad entry."""
    try:
        items = list(value.items() if isinstance(value, Mapping) else value)
        pairs = [(token, bias) for token, bias in items]
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias must map token ids to numbers, got {value!r}") from None
    for token, bias in pairs:
        if not (_is_int(token) and token >= 0):
            raise ValueError(f"logit_bias token ids must be ints >= 0, got {token!r}")
        if not (_is_number(bias) and math.isfinite(bias)):
            raise ValueError(f"logit_bias for token {token} must be a finite number, got {bias!r}")
    ids = [int(t) for t, _ in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"logit_bias lists a token id twice: {sorted(ids)}")
    return tuple(sorted((int(t), float(b)) for t, b in pairs))


# --- the chain's order -----------------------------------------------------------------------

STAGE_NAMES = ("logit-bias", "penalties", "dry", "temperature", "top-n-sigma", "top-k", "typical", "top-p",
               "min-p", "xtc")

# Each engine's own order (read in its code); samplers an engine lacks sit where llama.cpp puts them
# relative to the truncation filters (after penalties: DRY; before top-k: top-nσ; last filter: XTC).
ORDERS: dict[str, tuple[str, ...]] = {
    # generation/utils.py::_get_logits_processor: sequence_bias, repetition_penalty, then the warpers
    # temperature, top_k, top_p, min_p, typical_p
    "transformers": ("logit-bias", "penalties", "dry", "temperature", "top-n-sigma", "top-k", "top-p", "min-p",
                     "typical", "xtc"),
    # v1/sample/sampler.py: logit bias, penalties; then temperature, min_p, top_k with top_p
    "vllm": ("logit-bias", "penalties", "dry", "temperature", "top-n-sigma", "min-p", "top-k", "top-p", "typical",
             "xtc"),
    # common/sampling.cpp: logit bias, then the default chain
    # penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature
    "llama.cpp": ("logit-bias", "penalties", "dry", "top-n-sigma", "top-k", "typical", "top-p", "min-p", "xtc",
                  "temperature"),
}

# Where the engines disagree on a detail, the chosen preset's engine decides (a custom order uses
# transformers' rules). The page can quote these.
RULES: dict[str, dict[str, str]] = {
    "transformers": {
        "top-k": "keeps every token tied with the k-th logit (TopKLogitsWarper)",
        "typical": "keeps tokens until their total reaches typical_p, ties with the last included",
        "penalties": "count the whole history, prompt included (transformers has only the repetition "
                     "penalty; presence/frequency follow OpenAI's definition)",
    },
    "vllm": {
        "top-k": "keeps every token tied with the k-th logit (apply_top_k_top_p)",
        "typical": "not in vLLM: transformers' rule",
        "penalties": "repetition sees prompt and output; presence and frequency count output tokens only",
    },
    "llama.cpp": {
        "top-k": "keeps exactly k tokens (ties broken by lower token id here; llama.cpp's partial sort "
                 "breaks them arbitrarily)",
        "typical": "keeps tokens until their total exceeds typical_p",
        "penalties": "count the last penalty_last_n accepted tokens",
    },
}


def _check_order(value: object) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if value not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))} or a tuple of stage names, "
                             f"got {value!r}")
        return value
    try:
        stages = tuple(value)
    except TypeError:
        raise ValueError(f"order must be a preset name or a tuple of stage names, got {value!r}") from None
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r} in order; stages: {', '.join(STAGE_NAMES)}")
    twice = sorted({s for s in stages if stages.count(s) > 1})
    if twice:
        raise ValueError(f"order lists {twice[0]!r} more than once")
    return stages


# --- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0        # 0 = greedy (argmax); < 1 sharpens, > 1 flattens
    top_k: int | None = None        # keep the k most likely tokens; None or 0 = off
    top_p: float = 1.0              # keep the smallest set with this much probability; 1 = off
    min_p: float = 0.0              # drop tokens below min_p * top probability; 0 = off
    seed: int | None = 123          # per-request generator seed; None = fresh random seed
    repetition_penalty: float = 1.0     # > 0; seen tokens: positive logits / it, negative * it; 1 = off
    presence_penalty: float = 0.0       # subtracted once from every seen token's logit; 0 = off
    frequency_penalty: float = 0.0      # subtracted per occurrence in the history; 0 = off
    penalty_last_n: int = -1            # history the penalties (not DRY) see: last n tokens; -1 = all, 0 = none
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); a dict is accepted
    typical_p: float = 1.0              # locally typical sampling mass in (0, 1]; 1 = off
    top_n_sigma: float = 0.0            # keep logits >= max - n * std; <= 0 = off
    xtc_threshold: float = 0.1          # XTC: tokens at least this likely are "top choices" (llama.cpp 0.1)
    xtc_probability: float = 0.0        # XTC: chance per step of removing all top choices but the least; 0 = off
    dry_multiplier: float = 0.0         # DRY penalty scale; 0 = off
    dry_base: float = 1.75              # DRY: penalty grows as base ** (repeat - allowed_length)
    dry_allowed_length: int = 2         # DRY: repeats up to this long are free
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_BREAKERS  # DRY: repeats never reach back past these
    order: str | tuple[str, ...] = "transformers"  # "transformers", "vllm", "llama.cpp" or stage names

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        _check_min_p(self.min_p)
        _check_seed(self.seed)
        _check_range("repetition_penalty", self.repetition_penalty, low=0, low_open=True)
        _check_range("presence_penalty", self.presence_penalty)
        _check_range("frequency_penalty", self.frequency_penalty)
        _check_int("penalty_last_n", self.penalty_last_n, -1)
        # frozen: normalise through object.__setattr__ so configs stay hashable and comparable
        object.__setattr__(self, "logit_bias", _logit_bias_pairs(self.logit_bias))
        _check_range("typical_p", self.typical_p, low=0, high=1, low_open=True)
        _check_range("top_n_sigma", self.top_n_sigma)
        _check_range("xtc_threshold", self.xtc_threshold, low=0, high=1)
        _check_range("xtc_probability", self.xtc_probability, low=0, high=1)
        _check_range("dry_multiplier", self.dry_multiplier, low=0)
        _check_range("dry_base", self.dry_base, low=1)
        _check_int("dry_allowed_length", self.dry_allowed_length, 0)
        breakers = self.dry_sequence_breakers
        if isinstance(breakers, str) or not all(isinstance(b, str) for b in breakers):
            raise ValueError(f"dry_sequence_breakers must be a tuple of strings, got {breakers!r}")
        object.__setattr__(self, "dry_sequence_breakers", tuple(breakers))
        object.__setattr__(self, "order", _check_order(self.order))
        if not isinstance(self.order, str):
            left_out = [s for s in STAGE_NAMES if s not in self.order and self.stage_active(s)]
            if left_out:
                raise ValueError(f"order leaves out {left_out[0]!r}, whose setting is on; "
                                 f"add it to the order or turn it off")

    @property
    def greedy(self) -> bool:
        """True when temperature is 0, i.e. the most likely token is always chosen."""
        return self.temperature == 0

    @property
    def stages(self) -> tuple[str, ...]:
        """The chain's stage names in order (a preset's, or the custom tuple)."""
        return ORDERS[self.order] if isinstance(self.order, str) else self.order

    @property
    def rules(self) -> str:
        """The engine whose rules settle details the engines disagree on (see RULES)."""
        return self.order if isinstance(self.order, str) else "transformers"

    @property
    def xtc_needs_draw(self) -> bool:
        """True when XTC is on with a probability strictly between 0 and 1 (so each step draws)."""
        return 0 < self.xtc_probability < 1 and self.xtc_threshold <= 0.5 and "xtc" in self.stages

    def stage_active(self, name: str) -> bool:
        """Whether stage `name` can change anything with these settings."""
        return {
            "logit-bias": bool(self.logit_bias),
            "penalties": self.penalty_last_n != 0 and (
                self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0),
            "dry": self.dry_multiplier != 0,
            "temperature": self.temperature != 1,
            "top-n-sigma": self.top_n_sigma > 0,
            "top-k": bool(self.top_k),
            "typical": self.typical_p != 1,
            "top-p": self.top_p != 1,
            "min-p": self.min_p != 0,
            "xtc": self.xtc_probability > 0 and self.xtc_threshold <= 0.5,
        }[name]

    def replace(self, **changes: object) -> SamplingConfig:
        """Return a copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str) -> SamplingConfig:
        """Look up a named preset; raise ValueError listing the known names."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, SamplingConfig] = {
    "default": SamplingConfig(),                                   # the model's own distribution
    "greedy": SamplingConfig(temperature=0.0),                     # always the top token
    "balanced": SamplingConfig(temperature=0.7, top_p=0.95),       # common chat-model setting
    "creative": SamplingConfig(temperature=1.2, top_p=0.98),       # more variety, tail trimmed
    "book": SamplingConfig(temperature=1.4, top_k=25),             # LLMs-from-scratch ch. 5
}


def _numpy_view(x: Tensor) -> np.ndarray | None:
    """numpy's view of a float CPU tensor (no copy), or None where numpy can't see it."""
    if x.device.type != "cpu" or x.requires_grad or x.dtype not in (torch.float32, torch.float64):
        return None
    return x.numpy()


def argmax(x: Tensor) -> Tensor:
    """Index of the first largest value along the last dimension (int64), as x.argmax(-1)."""
    a = _numpy_view(x)
    if a is None or a.ndim == 0:
        return x.argmax(dim=-1)
    # numpy's argmax is vectorised: ~3 us over 49k floats against ~40 for torch's
    return torch.from_numpy(np.asarray(a.argmax(axis=-1), dtype=np.int64))


def make_generator(seed: int | None) -> torch.Generator:
    """A fresh CPU generator for one request; seed None draws a seed from os.urandom."""
    _check_seed(seed)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    generator = torch.Generator(device="cpu")
    # Generator seeds are 64-bit; fold any Python int into that range.
    generator.manual_seed(seed % 2**64)
    return generator


# --- logits -> filtered logits ---------------------------------------------------------------

def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide logits by the temperature; at 0, keep only the first argmax (0 there, -inf elsewhere).

    Where the division overflows float32 (huge logits, tiny temperature) a row is computed as
    (x - max) / T instead: the same distribution, whose limit is greedy (ties at the max shared).
    """
    _check_temperature(temperature)
    x = logits.float()
    if temperature == 0:
        # Explicit greedy branch: dividing by a tiny epsilon would overflow or tie-break by noise.
        top = argmax(x).unsqueeze(-1)
        return torch.full_like(x, NEG_INF).scatter(-1, top, 0.0)
    if temperature == 1:
        return x
    # -inf stays -inf (a huge T rounds to inf in float32, and -inf / inf is NaN)
    y = torch.where(torch.isneginf(x), x, x / temperature)
    overflow = (torch.isfinite(x) & ~torch.isfinite(y)).any(dim=-1, keepdim=True)
    if not bool(overflow.any()):
        return y
    gap = x - x.amax(dim=-1, keepdim=True)
    # the max itself stays at 0 even when T rounds to 0 in float32 (0 / 0 would be NaN)
    shifted = torch.where(gap == 0, 0.0, gap / temperature)
    return torch.where(overflow, shifted, y)


def apply_top_k(logits: Tensor, top_k: int | None, *, keep_ties: bool = False) -> Tensor:
    """Keep exactly the k largest logits per row (ties go to lower ids); None/0 or k >= V is off.

    keep_ties=True is transformers' and vLLM's rule: every token tied with the k-th logit stays too.
    """
    _check_top_k(top_k)
    x = logits.float()
    if not top_k or top_k >= x.shape[-1]:
        return x
    kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
    if keep_ties:
        return x.masked_fill(x < kth, NEG_INF)
    # Everything above the k-th value, then ties at it by lowest id (like argmax; torch.topk alone
    # picks ties arbitrarily). O(V), where a stable sort of the vocabulary costs a few ms per slider move.
    above = x > kth
    ties = x == kth
    room = top_k - above.sum(dim=-1, keepdim=True)
    keep = above | (ties & (ties.cumsum(dim=-1) <= room))
    return x.masked_fill(~keep, NEG_INF)


def apply_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter: keep the most likely tokens whose total probability reaches top_p (at least 1)."""
    _check_top_p(top_p)
    x = logits.float()
    if top_p == 1:
        return x
    # Hugging Face TopPLogitsWarper: sort ascending and drop the low tail holding <= 1 - top_p.
    # Flipping a stable descending sort puts the lower id last among ties, so it is kept first.
    sorted_x, sorted_idx = torch.sort(x, dim=-1, descending=True, stable=True)
    sorted_x, sorted_idx = sorted_x.flip(-1), sorted_idx.flip(-1)
    cumulative = sorted_x.softmax(dim=-1).cumsum(dim=-1)
    is_last = torch.arange(x.shape[-1], device=x.device) == x.shape[-1] - 1
    sorted_remove = (cumulative <= 1 - top_p) & ~is_last   # the top token always survives
    remove = torch.zeros_like(sorted_remove).scatter(-1, sorted_idx, sorted_remove)
    return x.masked_fill(remove, NEG_INF)


def apply_min_p(logits: Tensor, min_p: float) -> Tensor:
    """Keep tokens whose probability is >= min_p times the top probability in their row."""
    _check_min_p(min_p)
    x = logits.float()
    if min_p == 0:
        return x
    probs = torch.softmax(x, dim=-1)
    # min_p < 1, so the top token always passes this test.
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    return x.masked_fill(probs < threshold, NEG_INF)


History = Sequence[int] | Sequence[Sequence[int]] | Tensor


@dataclass(frozen=True)
class _Request:
    """What a chain needs beyond logits and settings, resolved once per call."""

    rows: list[list[int]]                       # token ids so far (prompt included), one list per logits row,
                                                # empty when no stage reads them
    prompt_length: list[int]                    # leading ids of each row that are the prompt
    dry_breakers: tuple[tuple[int, ...], ...]   # DRY's sequence breakers as token-id sequences
    xtc_uniform: Tensor | None                  # XTC's draw (one for every row), None if not needed


def _request(logits: Tensor, cfg: SamplingConfig, history: History | None = None,
             prompt_length: int | Sequence[int] | None = None, dry_breakers: Sequence[Sequence[int]] | None = None,
             generator: torch.Generator | None = None, xtc_uniform: float | Tensor | None = None) -> _Request:
    # only the penalties and DRY read the history: skip the pass over it when both are off
    uses_history = any(cfg.stage_active(s) for s in ("penalties", "dry") if s in cfg.stages)
    rows = history_rows(history if uses_history else None, logits)
    if prompt_length is None:
        starts = [0] * len(rows)
    elif _is_int(prompt_length):
        starts = [int(prompt_length)] * len(rows)
    else:
        starts = [int(n) for n in prompt_length]
        if len(starts) != len(rows):
            raise ValueError(f"prompt_length has {len(starts)} values for {len(rows)} rows of logits")
    if any(n < 0 for n in starts):
        raise ValueError(f"prompt_length must be >= 0, got {prompt_length!r}")
    if cfg.stage_active("dry") and cfg.dry_sequence_breakers and dry_breakers is None:
        raise ValueError("DRY's sequence breakers are text: pass dry_breakers=dry_breaker_ids(...) "
                         "(token-id sequences, computed once per request with the tokenizer)")
    u = None
    if xtc_uniform is not None:
        u = torch.as_tensor(xtc_uniform, dtype=torch.float64)
        if not bool(((u >= 0) & (u < 1)).all()):
            raise ValueError(f"xtc_uniform must be in [0, 1), got {u.tolist()!r}")
    elif cfg.xtc_needs_draw and generator is not None:
        u = draw_uniform(generator, 1)
    breakers = tuple(tuple(int(t) for t in seq) for seq in (dry_breakers or ()))
    return _Request(rows, starts, breakers, u)


def _chain_input(logits: Tensor) -> Tensor:
    """float32 logits for the chain: NaN is an error, +inf is held at float32's max (its limit: such a
    token takes all the probability, shared with its equals), -inf stays a removed token."""
    x = logits.float()
    if bool(torch.isfinite(x).all()):
        return x
    if bool(torch.isnan(x).any()):
        raise ValueError("logits contain NaN")
    return x.clamp(max=torch.finfo(torch.float32).max)


def _penalise(x: Tensor, cfg: SamplingConfig, req: _Request) -> Tensor:
    last_n = cfg.penalty_last_n
    counts = token_counts(req.rows, x, last_n)
    if cfg.rules != "vllm":
        return apply_penalties(x, counts, cfg.repetition_penalty, cfg.presence_penalty, cfg.frequency_penalty)
    # vLLM: repetition sees prompt and output, presence and frequency count output tokens only
    output = token_counts(req.rows, x, last_n, skip_first=req.prompt_length)
    return apply_penalties(x, output, cfg.repetition_penalty, cfg.presence_penalty, cfg.frequency_penalty,
                           repeated=counts > 0)


def _apply_stage(name: str, x: Tensor, cfg: SamplingConfig, req: _Request) -> Tensor:
    """One stage of the chain; a stage whose setting is off returns x (as float32) unchanged."""
    if not cfg.stage_active(name):
        return x.float()
    if name == "logit-bias":
        return apply_logit_bias(x, cfg.logit_bias)
    if name == "penalties":
        return _penalise(x, cfg, req)
    if name == "dry":
        return apply_dry(x, req.rows, cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length, req.dry_breakers)
    if name == "temperature":
        return apply_temperature(x, cfg.temperature)
    if name == "top-n-sigma":
        return apply_top_n_sigma(x, cfg.top_n_sigma)
    if name == "top-k":
        return apply_top_k(x, cfg.top_k, keep_ties=cfg.rules != "llama.cpp")
    if name == "typical":
        return apply_typical(x, cfg.typical_p, strict=cfg.rules == "llama.cpp")
    if name == "top-p":
        return apply_top_p(x, cfg.top_p)
    if name == "min-p":
        return apply_min_p(x, cfg.min_p)
    return apply_xtc(x, cfg.xtc_threshold, cfg.xtc_probability, req.xtc_uniform)


def filter_logits(logits: Tensor, cfg: SamplingConfig, *, history: History | None = None,
                  prompt_length: int | Sequence[int] | None = None,
                  dry_breakers: Sequence[Sequence[int]] | None = None, generator: torch.Generator | None = None,
                  xtc_uniform: float | Tensor | None = None) -> Tensor:
    """Run the chain in cfg's order (each stage a no-op at its neutral value); see `pipeline` for the arguments."""
    req = _request(logits, cfg, history, prompt_length, dry_breakers, generator, xtc_uniform)
    x = _chain_input(logits)
    for name in cfg.stages:
        x = _apply_stage(name, x, cfg, req)
    return x


def probabilities(logits: Tensor, cfg: SamplingConfig, **request: object) -> Tensor:
    """float32 softmax of the filtered logits: the one tensor both the chart and the sampler use.

    Keyword arguments as `pipeline` (history, prompt_length, dry_breakers, generator, xtc_uniform).
    """
    return torch.softmax(filter_logits(logits, cfg, **request), dim=-1)


# --- the pipeline, stage by stage (for the chart) --------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str                       # "raw" or one of STAGE_NAMES
    label: str                      # for people, e.g. "temperature 0.7", "top-p 1 (off)"
    active: bool                    # False when the setting passes everything through
    logits: Tensor                  # logits after this stage, same shape as the input
    probs: Tensor                   # softmax of logits
    kept: Tensor                    # int64 count of tokens with prob > 0, shape logits.shape[:-1]
    mass_kept: Tensor               # temperature-scaled probability of the kept tokens
    raw_mass_kept: Tensor           # raw (T=1, unfiltered) probability of the kept tokens
    moved: Tensor | None = None     # bias/penalties/DRY: bool, the tokens whose logit this stage changed


_GREEDY_LABEL = "temperature 0 (greedy)"
_BASIC = ("temperature", "top-k", "top-p", "min-p")   # always reported, as before the other samplers existed
FILTERS = ("top-n-sigma", "top-k", "typical", "top-p", "min-p", "xtc")   # stages that only remove tokens
ADJUSTERS = ("logit-bias", "penalties", "dry")   # stages that move logits


def _mass_of_kept(reference: Tensor, probs: Tensor) -> Tensor:
    removed = probs == 0
    kept_sum = torch.where(removed, 0.0, reference).sum(dim=-1)
    # Exactly 1.0 when nothing was removed, rather than a float sum like 0.99999994.
    return torch.where(removed.any(dim=-1), kept_sum, torch.ones_like(kept_sum))


def _label(name: str, cfg: SamplingConfig, vocab: int, req: _Request) -> str:
    t, k, p, m = cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p
    if name == "temperature":
        return _GREEDY_LABEL if t == 0 else f"temperature {t:g}" + (" (off)" if t == 1 else "")
    if name == "top-k":
        if not k:
            return "top-k off"
        return f"top-k {k}" + (f" (off: vocabulary is {vocab})" if k >= vocab else "")
    if name == "top-p":
        return f"top-p {p:g}" + (" (off)" if p == 1 else "")
    if name == "min-p":
        return f"min-p {m:g}" + (" (off)" if m == 0 else "")
    if name == "typical":
        return f"typical-p {cfg.typical_p:g}" + (" (off)" if cfg.typical_p == 1 else "")
    if name == "top-n-sigma":
        return f"top-nσ {cfg.top_n_sigma:g}" if cfg.top_n_sigma > 0 else "top-nσ off"
    if name == "logit-bias":
        n = len(cfg.logit_bias)
        return f"logit bias on {n} token{'s' if n != 1 else ''}" if n else "logit bias off"
    if name == "penalties":
        if not cfg.stage_active("penalties"):
            return "penalties off"
        parts = [f"{what} {value:g}" for what, value, neutral in (
            ("repetition", cfg.repetition_penalty, 1), ("presence", cfg.presence_penalty, 0),
            ("frequency", cfg.frequency_penalty, 0)) if value != neutral]
        scope = "" if cfg.penalty_last_n < 0 else f" (last {cfg.penalty_last_n} tokens)"
        return "penalties: " + ", ".join(parts) + scope
    if name == "dry":
        if not cfg.dry_multiplier:
            return "DRY off"
        return f"DRY ×{cfg.dry_multiplier:g}, base {cfg.dry_base:g}, allowed length {cfg.dry_allowed_length}"
    if not cfg.stage_active("xtc"):
        return "XTC off" if cfg.xtc_probability == 0 else f"XTC threshold {cfg.xtc_threshold:g} (off: above 0.5)"
    label = f"XTC threshold {cfg.xtc_threshold:g}, probability {cfg.xtc_probability:g}"
    if req.xtc_uniform is not None and cfg.xtc_probability < 1:
        fired = bool((req.xtc_uniform < cfg.xtc_probability).all())
        label += " (drawn: applies)" if fired else " (drawn: skipped this time)"
    return label


def pipeline(logits: Tensor, cfg: SamplingConfig, *, history: History | None = None,
             prompt_length: int | Sequence[int] | None = None, dry_breakers: Sequence[Sequence[int]] | None = None,
             generator: torch.Generator | None = None, xtc_uniform: float | Tensor | None = None,
             all_stages: bool = False) -> list[Stage]:
    """The chain stage by stage in cfg's order, after a "raw" stage; the last stage's probs equal
    probabilities(logits, cfg, ...) exactly.

    Reported: temperature, top-k, top-p, min-p always, other stages when their setting is on
    (every stage with all_stages=True).
    history: the token ids so far, prompt included: one sequence for a (V,) row or for every row, or
    one sequence per row of a (B, V) batch. None: the penalties and DRY see nothing.
    prompt_length: how many leading ids of the history are the prompt (int or one per row); only
    vLLM's rules use it (its presence/frequency penalties count output tokens only).
    dry_breakers: DRY's sequence breakers as token-id sequences (`dry_breaker_ids`, computed once per
    request with the tokenizer); required when DRY is on with breakers.
    xtc_uniform / generator: XTC's draw in [0, 1), applied when < xtc_probability. One value serves
    every row, so side-by-side columns share it (common random numbers). Generation draws it from the
    request's generator; without either, an XTC probability strictly between 0 and 1 is an error.
    """
    req = _request(logits, cfg, history, prompt_length, dry_breakers, generator, xtc_uniform)
    vocab = logits.shape[-1]
    raw = _chain_input(logits)
    raw_probs = torch.softmax(raw, dim=-1)
    reference = torch.softmax(apply_temperature(raw, cfg.temperature), dim=-1)   # this T, no filters
    ones = torch.ones(raw.shape[:-1], device=raw.device)
    stages = [Stage(name="raw", label="raw logits", active=False, logits=raw, probs=raw_probs,
                    kept=(raw_probs > 0).sum(dim=-1), mass_kept=ones, raw_mass_kept=ones)]
    x, probs, probs_of = raw, raw_probs, raw
    for name in cfg.stages:
        active = cfg.stage_active(name)
        before = x
        x = _apply_stage(name, x, cfg, req)
        if not (active or all_stages or name in _BASIC):
            continue
        if x is not probs_of and not torch.equal(x, probs_of):   # an off stage reuses the softmax
            probs, probs_of = torch.softmax(x, dim=-1), x
        moved = (x != before) & torch.isfinite(before) if name in ADJUSTERS else None
        if name == "top-k" and active and cfg.top_k >= vocab:
            active = False
        stages.append(Stage(
            name=name, label=_label(name, cfg, vocab, req), active=active, logits=x, probs=probs,
            kept=(probs > 0).sum(dim=-1),
            mass_kept=_mass_of_kept(reference, probs), raw_mass_kept=_mass_of_kept(raw_probs, probs),
            moved=moved,
        ))
    return stages


def _count(t: Tensor, row: int) -> int:
    return int(t.reshape(-1)[row])   # 1-D pipelines have 0-dim counts; row 0 still works


def moot_warnings(stages: list[Stage], row: int = 0) -> list[str]:
    """Plain-language notes about active filters that removed nothing in row `row` because an
    earlier stage (or greedy decoding) had already cut more."""
    by_name = {s.name: s for s in stages}
    filters = [s for s in stages if s.name in FILTERS and s.active]
    temperature = by_name.get("temperature")
    if temperature is not None and temperature.label == _GREEDY_LABEL:
        if not filters:
            return []
        labels = [s.label for s in filters]
        names = " and ".join([", ".join(labels[:-1]), labels[-1]] if len(labels) > 1 else labels)
        verb = "has" if len(filters) == 1 else "have"
        return [f"{names} {verb} no effect: temperature 0 is greedy and always picks the top token."]

    warnings = []
    for i, stage in enumerate(stages):
        if i == 0 or not stage.active or stage.name not in FILTERS:
            continue
        before = _count(stages[i - 1].kept, row)
        if _count(stage.kept, row) != before:
            continue
        # Blame the most recent earlier stage that actually removed tokens.
        for j in range(i - 1, 0, -1):
            if _count(stages[j].kept, row) < _count(stages[j - 1].kept, row):
                noun = "token" if before == 1 else "tokens"
                warnings.append(f"{stage.label} removes nothing: "
                                f"{stages[j].label} already kept only {before} {noun}.")
                break
    return warnings


# --- probabilities -> token ------------------------------------------------------------------

def draw_uniform(generator: torch.Generator, n: int = 1) -> Tensor:
    """n float64 uniforms in [0, 1) from the given generator."""
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _wide(device: torch.device) -> torch.dtype:
    """float64 for cumulative sums and uniforms, except on MPS, which has no float64 (float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


SORT_PREFIX = 256  # tokens the fast path sorts; a draw almost always lands among them


def sample(probs: Tensor, generator: torch.Generator | None = None,
           uniform: Tensor | None = None) -> Tensor:
    """Draw one token id per row by inverse CDF over tokens sorted by descending probability.

    `uniform` (values in [0, 1), one per row) replaces the random draw, so several distributions
    can share the same u; with monotone changes such as temperature they then pick nearby ranks.
    A uniform of shape probs.shape[:-1] + (n,) draws n tokens per row (e.g. the book's 1,000 draws).
    Never returns a token whose probability is 0. Returns int64 of shape probs.shape[:-1] (or + (n,)).
    """
    batch_shape = probs.shape[:-1]
    if uniform is None:
        u = torch.rand(batch_shape, generator=generator, dtype=torch.float64)
    else:
        u = torch.as_tensor(uniform, dtype=torch.float64)
        if u.numel() == 1:
            u = u.reshape(())   # one u for every row, e.g. draw_uniform(g) for a (V,) row
        if not (u.dim() == len(batch_shape) + 1 and u.shape[:-1] == batch_shape):  # not n draws per row
            try:
                u = torch.broadcast_to(u, batch_shape)
            except RuntimeError:
                raise ValueError(f"uniform must have shape {tuple(batch_shape)}, "
                                 f"got {tuple(u.shape)}") from None
        if not bool(((u >= 0) & (u < 1)).all()):
            raise ValueError(f"uniform values must be in [0, 1), got min {u.min().item()!r}, "
                             f"max {u.max().item()!r}")
    u = u.to(probs.device, _wide(probs.device))
    many = u.dim() == len(batch_shape) + 1
    values = (u if many else u.unsqueeze(-1)).contiguous()   # (..., n)
    ids = _sample_prefix(probs, values)
    if ids is None:
        ids = _sample_sorted(probs, values)
    return ids if many else ids.squeeze(-1)


def _sample_sorted(probs: Tensor, values: Tensor) -> Tensor:
    """The definition: inverse CDF over the stable descending sort of the whole vocabulary."""
    # Stable descending sort: ties go to the lower token id.
    sorted_p, sorted_idx = torch.sort(probs, dim=-1, descending=True, stable=True)
    positive = (sorted_p > 0).sum(dim=-1, keepdim=True)
    if bool((positive == 0).any()):
        raise ValueError("every row of probs needs at least one token with probability > 0")
    cdf = sorted_p.to(_wide(probs.device)).cumsum(dim=-1)
    pos = torch.searchsorted(cdf, values, right=True)   # first index with cdf > u
    # If rounding leaves the total below u, fall back to the last token with probability > 0.
    pos = torch.minimum(pos, positive - 1)
    return sorted_idx.gather(-1, pos)


def _sample_prefix(probs: Tensor, values: Tensor) -> Tensor | None:
    """_sample_sorted's answer from the top SORT_PREFIX tokens alone, or None if a draw might land past them.

    Every token above the SORT_PREFIX-th largest probability sits, in the same order, at the front of
    the full stable sort, with the same cumulative sums; so a draw that lands strictly above that edge
    value is the full sort's draw. Sorting 256 tokens instead of ~50k is a few ms per generated token.
    """
    if probs.shape[-1] <= SORT_PREFIX:
        return None
    top = torch.topk(probs, SORT_PREFIX, dim=-1)
    ids_by_id, perm = top.indices.sort(dim=-1)                  # ties must break toward the lower id
    vals_by_id = top.values.gather(-1, perm)
    order = torch.sort(vals_by_id, dim=-1, descending=True, stable=True).indices
    sorted_p, sorted_idx = vals_by_id.gather(-1, order), ids_by_id.gather(-1, order)
    safe = (sorted_p > sorted_p[..., -1:]).sum(dim=-1, keepdim=True)   # entries strictly above the edge
    pos = torch.searchsorted(sorted_p.to(_wide(probs.device)).cumsum(dim=-1), values, right=True)
    if not bool((pos < safe).all()):
        return None
    return sorted_idx.gather(-1, pos)


# --- measurements ----------------------------------------------------------------------------

def top_ids(logits: Tensor, n: int) -> Tensor:
    """Ids of the n largest values of one row (V,), best first, ties to the lower id: the first n of a
    stable descending sort, without sorting the whole vocabulary."""
    n = max(0, min(n, logits.shape[-1]))
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    kth = torch.topk(logits, n).values[-1]
    candidates = torch.nonzero(logits >= kth).squeeze(-1)  # ascending ids; ties at kth included
    return candidates[torch.sort(logits[candidates], descending=True, stable=True).indices[:n]]


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in bits over the last dimension (0 * log 0 counts as 0)."""
    p = probs.float()
    # log(0) takes a slow path (0.5 ms over 50k zeros, a greedy step's distribution) and xlogy is
    # slow on dense rows: the clamp keeps every log finite, and p = 0 still adds exactly 0
    a = _numpy_view(p)
    if a is None or a.ndim == 0:
        return (p * p.clamp_min(_TINY).log().neg()).sum(dim=-1) / math.log(2)
    # the same sum in numpy, whose vectorised log makes it ~1.5x faster (two per generated token)
    t = np.maximum(a, np.float32(_TINY))
    np.log(t, out=t)
    t *= a
    bits = np.add.reduce(t, axis=-1, keepdims=True)
    bits *= np.float32(-1 / math.log(2))
    return torch.from_numpy(bits).squeeze(-1)


def rank_of(logits: Tensor, token_ids: Tensor) -> Tensor:
    """1-based rank of each token id under the logits (1 = largest; ties share the best rank).

    token_ids has shape logits.shape[:-1] (one id per row) or logits.shape[:-1] + (n,).
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    one_per_row = ids.dim() == logits.dim() - 1
    if one_per_row:
        ids = ids.unsqueeze(-1)
    vocab = logits.shape[-1]
    if bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"token ids must be in [0, {vocab}), got {ids.tolist()}")
    values = logits.gather(-1, ids)                                   # (..., n)
    ranks = (logits.unsqueeze(-2) > values.unsqueeze(-1)).sum(dim=-1) + 1
    return ranks.squeeze(-1) if one_per_row else ranks


# --- temperature sweep -----------------------------------------------------------------------

@dataclass(frozen=True)
class TemperatureSweep:
    """How the chosen chain's distribution changes with temperature, everything else fixed."""

    temperatures: tuple[float, ...]   # the grid, ascending
    entropy: tuple[float, ...]        # bits of the final distribution at each temperature
    effective: tuple[float, ...]      # 2 ** entropy: the number of equally likely tokens it amounts to
    top_prob: tuple[float, ...]       # probability of the most likely token after the chain
    top_id: tuple[int, ...]           # which token that is (penalties or XTC can change it)


def temperature_grid(high: float = 5.0, steps: int = 51) -> tuple[float, ...]:
    """`steps` evenly spaced temperatures from 0 (greedy) to `high`."""
    _check_range("high", high, low=0, low_open=True)
    if not (_is_int(steps) and steps >= 2):
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    return tuple(high * i / (steps - 1) for i in range(steps))


def temperature_sweep(logits: Tensor, cfg: SamplingConfig, temperatures: Sequence[float] | None = None,
                      **request: object) -> TemperatureSweep:
    """Entropy, effective number of candidates (2^H) and top-token probability of one row (V,) as the
    temperature moves over a grid (default: 0 to 5), with cfg's other settings and order.

    Keyword arguments as `pipeline`; an XTC draw (xtc_uniform) is shared by every temperature.
    """
    if logits.dim() != 1:
        raise ValueError(f"temperature_sweep takes one row of logits (V,), got shape {tuple(logits.shape)}")
    grid = temperature_grid() if temperatures is None else tuple(float(t) for t in temperatures)
    for t in grid:
        _check_temperature(t)
    generator = request.pop("generator", None)
    if request.get("xtc_uniform") is None and cfg.xtc_needs_draw and generator is not None:
        request["xtc_uniform"] = draw_uniform(generator, 1)   # one draw for the whole sweep
    # The stages before temperature do not depend on it: run them once, then every temperature as
    # one row of a batch through the rest of the chain (one sort for the grid, not one per point).
    names = cfg.stages
    split = names.index("temperature") if "temperature" in names else len(names)
    req = _request(logits, cfg, **request)
    x = _chain_input(logits)
    for name in names[:split]:
        x = _apply_stage(name, x, cfg, req)
    if split == len(names):   # no temperature stage: the same distribution at every point
        rows = x.expand(len(grid), -1)
    else:
        rows = torch.stack([apply_temperature(x, t) for t in grid]) if grid else x.new_zeros(0, x.shape[-1])
        batch_req = _request(rows, cfg, **request)
        for name in names[split + 1:]:
            rows = _apply_stage(name, rows, cfg, batch_req)
    probs = torch.softmax(rows, dim=-1)
    bits = entropy(probs).clamp_min(0.0) + 0.0   # rounding gives -0.0 bits for one-hot rows
    top = probs.max(dim=-1)
    return TemperatureSweep(temperatures=grid, entropy=tuple(bits.tolist()),
                            effective=tuple((2.0 ** bits).tolist()), top_prob=tuple(top.values.tolist()),
                            top_id=tuple(top.indices.tolist()))
