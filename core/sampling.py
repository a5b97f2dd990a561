"""Turn next-token logits into probabilities and draw tokens from them.

Every function is pure: it never modifies its input, and it works on a single row of logits
(shape (V,)) or a batch (shape (B, V)); the last dimension is always the vocabulary.
The filters run in Hugging Face's order: temperature -> top-k -> top-p -> min-p.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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


# --- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0        # 0 = greedy (argmax); < 1 sharpens, > 1 flattens
    top_k: int | None = None        # keep the k most likely tokens; None or 0 = off
    top_p: float = 1.0              # keep the smallest set with this much probability; 1 = off
    min_p: float = 0.0              # drop tokens below min_p * top probability; 0 = off
    seed: int | None = 123          # per-request generator seed; None = fresh random seed

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        _check_min_p(self.min_p)
        _check_seed(self.seed)

    @property
    def greedy(self) -> bool:
        """True when temperature is 0, i.e. the most likely token is always chosen."""
        return self.temperature == 0

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
    """Divide logits by the temperature; at 0, keep only the first argmax (0 there, -inf elsewhere)."""
    _check_temperature(temperature)
    x = logits.float()
    if temperature == 0:
        # Explicit greedy branch: dividing by a tiny epsilon would overflow or tie-break by noise.
        top = argmax(x).unsqueeze(-1)
        return torch.full_like(x, NEG_INF).scatter(-1, top, 0.0)
    if temperature == 1:
        return x
    return x / temperature


def apply_top_k(logits: Tensor, top_k: int | None) -> Tensor:
    """Keep exactly the k largest logits per row (ties go to lower ids); None/0 or k >= V is off."""
    _check_top_k(top_k)
    x = logits.float()
    if not top_k or top_k >= x.shape[-1]:
        return x
    # Everything above the k-th value, then ties at it by lowest id (like argmax; torch.topk alone
    # picks ties arbitrarily). O(V), where a stable sort of the vocabulary costs a few ms per slider move.
    kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
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


def filter_logits(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """Apply temperature, top-k, top-p, min-p in that order (each is a no-op at its neutral value)."""
    x = apply_temperature(logits, cfg.temperature)
    x = apply_top_k(x, cfg.top_k)
    x = apply_top_p(x, cfg.top_p)
    return apply_min_p(x, cfg.min_p)


def probabilities(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """float32 softmax of the filtered logits: the one tensor both the chart and the sampler use."""
    return torch.softmax(filter_logits(logits, cfg), dim=-1)


# --- the pipeline, stage by stage (for the chart) --------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str                       # "raw", "temperature", "top-k", "top-p", "min-p"
    label: str                      # for people, e.g. "temperature 0.7", "top-p 1 (off)"
    active: bool                    # False when the setting passes everything through
    logits: Tensor                  # logits after this stage, same shape as the input
    probs: Tensor                   # softmax of logits
    kept: Tensor                    # int64 count of tokens with prob > 0, shape logits.shape[:-1]
    mass_kept: Tensor               # temperature-scaled probability of the kept tokens
    raw_mass_kept: Tensor           # raw (T=1, unfiltered) probability of the kept tokens


_GREEDY_LABEL = "temperature 0 (greedy)"


def _mass_of_kept(reference: Tensor, probs: Tensor) -> Tensor:
    removed = probs == 0
    kept_sum = torch.where(removed, 0.0, reference).sum(dim=-1)
    # Exactly 1.0 when nothing was removed, rather than a float sum like 0.99999994.
    return torch.where(removed.any(dim=-1), kept_sum, torch.ones_like(kept_sum))


def pipeline(logits: Tensor, cfg: SamplingConfig) -> list[Stage]:
    """The five stages raw -> temperature -> top-k -> top-p -> min-p; the last one's probs equal
    probabilities(logits, cfg) exactly."""
    t, k, p, m = cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p
    vocab = logits.shape[-1]
    raw = logits.float()
    raw_probs = torch.softmax(raw, dim=-1)
    after_t = apply_temperature(raw, t)
    t_probs = torch.softmax(after_t, dim=-1)
    after_k = apply_top_k(after_t, k)
    after_p = apply_top_p(after_k, p)
    after_m = apply_min_p(after_p, m)

    if t == 0:
        t_label = _GREEDY_LABEL
    else:
        t_label = f"temperature {t:g}" + (" (off)" if t == 1 else "")
    if not k:
        k_label = "top-k off"
    else:
        k_label = f"top-k {k}" + (f" (off: vocabulary is {vocab})" if k >= vocab else "")

    specs = [
        ("raw", "raw logits", False, raw),
        ("temperature", t_label, t != 1, after_t),
        ("top-k", k_label, bool(k) and k < vocab, after_k),
        ("top-p", f"top-p {p:g}" + (" (off)" if p == 1 else ""), p != 1, after_p),
        ("min-p", f"min-p {m:g}" + (" (off)" if m == 0 else ""), m != 0, after_m),
    ]
    known_probs = {"raw": raw_probs, "temperature": t_probs}
    ones = torch.ones(raw.shape[:-1], device=raw.device)
    stages = []
    for name, label, active, x in specs:
        probs = known_probs[name] if name in known_probs else torch.softmax(x, dim=-1)
        stages.append(Stage(
            name=name, label=label, active=active, logits=x, probs=probs,
            kept=(probs > 0).sum(dim=-1),
            mass_kept=ones if name in ("raw", "temperature") else _mass_of_kept(t_probs, probs),
            raw_mass_kept=ones if name == "raw" else _mass_of_kept(raw_probs, probs),
        ))
    return stages


def _count(t: Tensor, row: int) -> int:
    return int(t.reshape(-1)[row])   # 1-D pipelines have 0-dim counts; row 0 still works


def moot_warnings(stages: list[Stage], row: int = 0) -> list[str]:
    """Plain-language notes about active filters that removed nothing in row `row` because an
    earlier stage (or greedy decoding) had already cut more."""
    by_name = {s.name: s for s in stages}
    filters = [s for s in stages if s.name in ("top-k", "top-p", "min-p") and s.active]
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
        if i == 0 or not stage.active or stage.name not in ("top-k", "top-p", "min-p"):
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
    u = u.to(probs.device)
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
    cdf = sorted_p.double().cumsum(dim=-1)
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
    pos = torch.searchsorted(sorted_p.double().cumsum(dim=-1), values, right=True)
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
