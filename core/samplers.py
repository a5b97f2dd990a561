"""The samplers beyond temperature/top-k/top-p/min-p: logit bias, penalties, DRY, typical-p, top-nσ, XTC.

Each is a pure function on logits of shape (V,) or (B, V) that never modifies its input and is a no-op
at its neutral value. Definitions follow the engines' own code:
- repetition penalty: transformers `RepetitionPenaltyLogitsProcessor` (llama.cpp and vLLM agree):
  for tokens in the history, positive logits are divided by the penalty, negative ones multiplied;
- presence/frequency penalties: the OpenAI definition, logit - frequency*count - presence*[count > 0]
  (vLLM `apply_penalties`, llama.cpp `llama_sampler_penalties_apply`);
- typical-p: transformers `TypicalLogitsWarper`; `strict=True` is llama.cpp's
  `llama_sampler_typical_apply` (stops once the sum exceeds the mass, keeps no ties);
- top-nσ: llama.cpp `llama_sampler_top_n_sigma_apply` (Tang et al., 2024);
- XTC: llama.cpp `llama_sample_xtc_apply`;
- DRY: llama.cpp `llama_sampler_dry_apply` (ported from koboldcpp), over the whole history (llama.cpp's
  default dry_penalty_last_n = -1; penalty_last_n is the other penalties' setting).

Token histories are plain sequences of ids (prompt included). Penalties, DRY and XTC need per-request
inputs (the history, the sequence breakers as token ids, a random draw); the chain in `core.sampling`
passes them in, so every function here stays pure.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

NEG_INF = float("-inf")
_F32_MAX = torch.finfo(torch.float32).max

# llama.cpp's defaults (common/common.h: dry_sequence_breakers).
DEFAULT_DRY_BREAKERS: tuple[str, ...] = ("\n", ":", "\"", "*")


def saturate(before: Tensor, after: Tensor) -> Tensor:
    """`after`, with values that overflowed from finite `before` values held at ±float32 max.

    Arithmetic on huge logits (a 1e38 bias, a penalty near 0) must not turn a token into inf:
    +inf makes softmax NaN, and -inf would silently remove a token that no filter removed.
    """
    overflow = torch.isfinite(before) & ~torch.isfinite(after)
    if not bool(overflow.any()):
        return after
    held = torch.where(after > 0, _F32_MAX, -_F32_MAX)   # NaN (inf - inf) lands on -max
    return torch.where(overflow, held, after)


# --- histories -> counts ---------------------------------------------------------------------

def _rows(history: Sequence[int] | Sequence[Sequence[int]] | Tensor, batch: int | None) -> list[list[int]]:
    """One list of ids per logits row: a flat sequence serves a (V,) row or every row of a batch."""
    if isinstance(history, Tensor):
        history = history.tolist()
    history = list(history)
    nested = bool(history) and not isinstance(history[0], (int,)) and hasattr(history[0], "__len__")
    if batch is None:
        if nested:
            raise ValueError("a single row of logits (V,) takes one flat history of token ids")
        return [list(map(int, history))]
    if not nested:
        flat = list(map(int, history))
        return [flat] * batch   # shared, never modified
    if len(history) != batch:
        raise ValueError(f"history has {len(history)} rows for {batch} rows of logits")
    return [list(map(int, row)) for row in history]


def history_rows(history: Sequence[int] | Sequence[Sequence[int]] | Tensor | None,
                 logits: Tensor) -> list[list[int]]:
    """The history as one list of ids per logits row (empty lists when history is None)."""
    batch = None if logits.dim() == 1 else logits.shape[0]
    if logits.dim() > 2:
        raise ValueError(f"logits must have shape (V,) or (B, V), got {tuple(logits.shape)}")
    if history is None:
        return [[] for _ in range(1 if batch is None else batch)]
    rows = _rows(history, batch)
    vocab = logits.shape[-1]
    for row in rows:
        if row and (min(row) < 0 or max(row) >= vocab):
            bad = [t for t in row if not 0 <= t < vocab]
            raise ValueError(f"history token ids must be in [0, {vocab}), got {bad[:5]}")
    return rows


def token_counts(rows: Sequence[Sequence[int]], logits: Tensor, last_n: int = -1,
                 skip_first: Sequence[int] | None = None) -> Tensor:
    """How often each token occurs in each row's history, shaped like `logits` (float32).

    last_n: only the last n ids of each row count (-1 = all, 0 = none), as llama.cpp's penalty_last_n.
    skip_first: per row, how many leading ids (the prompt) not to count (vLLM's output-only counts).
    """
    vocab = logits.shape[-1]
    counts = torch.zeros(len(rows), vocab, dtype=torch.float32)
    for i, row in enumerate(rows):
        start = 0 if skip_first is None else skip_first[i]
        ids = row[start:]
        if last_n >= 0:
            ids = ids[len(ids) - last_n:] if last_n else []
        if ids:
            counts[i] += torch.bincount(torch.tensor(ids), minlength=vocab).float()
    counts = counts.to(logits.device)
    return counts[0] if logits.dim() == 1 else counts


# --- logit bias and penalties ----------------------------------------------------------------

def apply_logit_bias(logits: Tensor, bias: Mapping[int, float] | Iterable[tuple[int, float]]) -> Tensor:
    """Add bias[token] to that token's logit in every row (OpenAI `logit_bias`); empty = off."""
    x = logits.float()
    pairs = sorted(dict(bias).items())
    if not pairs:
        return x
    vocab = x.shape[-1]
    for token, _ in pairs:
        if not 0 <= token < vocab:
            raise ValueError(f"logit_bias token id {token} is outside the vocabulary [0, {vocab})")
    add = torch.zeros(vocab, dtype=torch.float32, device=x.device)
    add[torch.tensor([t for t, _ in pairs], device=x.device)] = torch.tensor(
        [float(v) for _, v in pairs], dtype=torch.float32, device=x.device)
    return saturate(x, x + add)


def apply_penalties(logits: Tensor, counts: Tensor, repetition: float = 1.0, presence: float = 0.0,
                    frequency: float = 0.0, repeated: Tensor | None = None) -> Tensor:
    """Repetition penalty, then the OpenAI presence/frequency penalties, from per-token counts.

    counts: occurrences of each token in the history, shaped like logits (see `token_counts`).
    repeated: which tokens the repetition penalty sees (bool, shaped like logits); default counts > 0
    (vLLM passes prompt-or-output here while counting only output tokens).
    """
    x = logits.float()
    if repetition == 1 and presence == 0 and frequency == 0:
        return x
    seen = counts > 0 if repeated is None else repeated
    y = x
    if repetition != 1:
        # transformers: `torch.where(score < 0, score * penalty, score / penalty)`
        y = torch.where(seen, torch.where(y < 0, y * repetition, y / repetition), y)
    if frequency != 0 or presence != 0:
        y = y - frequency * counts - presence * (counts > 0).float()
    return saturate(x, torch.where(torch.isneginf(x), x, y))   # a removed token stays removed


# --- DRY -------------------------------------------------------------------------------------

def dry_breaker_ids(breakers: Sequence[str], token_text: Callable[[int], str],
                    encode: Callable[[str], list[int]], vocab_size: int,
                    max_chars: int = 40, max_tail: int = 20) -> tuple[tuple[int, ...], ...]:
    """Sequence breakers as token-id sequences, as llama.cpp's `get_overlapping_token_sequences`.

    Every token whose text contains a breaker is a one-token breaker; a token whose text ends with
    the start of a breaker is the head of a sequence whose tail is the rest of the breaker, encoded.
    Scans the whole vocabulary (~50 ms for 49k tokens): compute it once per request.
    """
    found: dict[tuple[int, ...], None] = {}
    for raw in breakers:
        text = raw[:max_chars]
        if not text:
            continue
        for token in range(vocab_size):
            word = token_text(token)
            if text in word:
                found[(token,)] = None
                continue
            pos = word.find(text[0])
            while pos != -1:
                overlap = len(word) - pos
                if overlap < len(text) and word[pos:] == text[:overlap]:
                    found[(token, *encode(text[overlap:])[:max_tail])] = None
                pos = word.find(text[0], pos + 1)
    return tuple(found)


def dry_penalties(history: Sequence[int], multiplier: float, base: float, allowed_length: int,
                  breakers: Sequence[Sequence[int]] = ()) -> dict[int, float]:
    """DRY's penalty per token for one history: {token: multiplier * base ** (repeat - allowed_length)}.

    A token is penalised when emitting it would extend a repeat (of the history's end, seen earlier)
    of at least `allowed_length` tokens; repeats do not reach back past a sequence breaker, and a
    one-token breaker is never penalised. llama.cpp's definition, computed directly (O(N * repeat)).
    """
    if multiplier == 0 or base < 1:
        return {}
    ids = list(history)
    n = len(ids)
    if n <= allowed_length:
        return {}
    heads: dict[int, list[tuple[int, ...]]] = {}
    for seq in breakers:
        if seq:
            heads.setdefault(seq[0], []).append(tuple(seq[1:]))

    def back(i: int) -> int:   # the i-th id counted from the end (0 = last)
        return ids[n - 1 - i]

    # Step 1: the nearest breaker limits how far back a repeat may reach.
    rep_limit = n
    for i in range(n):
        longest = -1
        for tail in heads.get(back(i), ()):
            if longest < len(tail) <= i and all(tail[j] == back(i - j - 1) for j in range(len(tail))):
                longest = len(tail)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < allowed_length:
        return {}
    # Steps 2-3: for each earlier position p, how many ids ending at p equal the history's end;
    # the id after p would extend that repeat.
    longest_repeat: dict[int, int] = {}
    for p in range(n - 1):
        length = 0
        while length <= p and ids[p - length] == ids[n - 1 - length]:
            length += 1
        length = min(length, rep_limit)
        if length >= allowed_length:
            token = ids[p + 1]
            longest_repeat[token] = max(longest_repeat.get(token, 0), length)
    # Step 4: the penalty, with llama.cpp's cap on the exponent against float overflow.
    single = {seq[0] for seq in breakers if len(seq) == 1}
    max_exponent = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    out = {}
    for token, length in longest_repeat.items():
        if token in single:
            continue
        exponent = length - allowed_length
        if max_exponent > 0:
            exponent = min(exponent, max_exponent)
        out[token] = multiplier * base ** exponent
    return out


def apply_dry(logits: Tensor, rows: Sequence[Sequence[int]], multiplier: float, base: float,
              allowed_length: int, breakers: Sequence[Sequence[int]] = ()) -> Tensor:
    """Subtract DRY's penalties (`dry_penalties`) from each row; rows holds one history per logits row."""
    x = logits.float()
    if multiplier == 0:
        return x
    sub = torch.zeros(len(rows), x.shape[-1], dtype=torch.float32)
    for i, row in enumerate(rows):
        for token, penalty in dry_penalties(row, multiplier, base, allowed_length, breakers).items():
            sub[i, token] = min(penalty, _F32_MAX)   # a huge multiplier must not overflow the float32 tensor
    sub = sub.to(x.device)
    y = x - (sub[0] if x.dim() == 1 else sub)
    return saturate(x, torch.where(torch.isneginf(x), x, y))


# --- truncation ------------------------------------------------------------------------------

def apply_typical(logits: Tensor, mass: float, strict: bool = False) -> Tensor:
    """Locally typical sampling (Meister et al., 2022) as transformers' TypicalLogitsWarper.

    Tokens are ranked by |-log p - H| (H the entropy); the first ones whose probability reaches `mass`
    are kept, ties with the last one included. strict=True is llama.cpp's rule: stop once the sum
    exceeds `mass` (the two differ only when a partial sum equals `mass` exactly). 1 = off.
    """
    x = logits.float()
    if mass >= 1:
        return x
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    ent = -(torch.where(p > 0, logp, 0.0) * p).sum(dim=-1, keepdim=True)
    shifted = (-logp - ent).abs()                               # removed tokens: +inf, sorted last
    sorted_scores, order = torch.sort(shifted, dim=-1, stable=True)
    cumulative = p.gather(-1, order).cumsum(dim=-1)
    last = ((cumulative <= mass) if strict else (cumulative < mass)).sum(dim=-1, keepdim=True)
    last = last.clamp(max=x.shape[-1] - 1)
    if strict:
        positions = torch.arange(x.shape[-1], device=x.device)
        sorted_remove = positions > last
    else:
        sorted_remove = sorted_scores > sorted_scores.gather(-1, last)
    sorted_remove[..., 0] = False                                # the most typical token always stays
    remove = torch.zeros_like(sorted_remove).scatter(-1, order, sorted_remove)
    return x.masked_fill(remove, NEG_INF)


def apply_top_n_sigma(logits: Tensor, n: float) -> Tensor:
    """Keep tokens whose logit is >= max - n * σ, σ the standard deviation of the finite logits
    (llama.cpp's top-nσ; n <= 0 is off). Temperature > 0 does not change what it keeps."""
    x = logits.float()
    if n <= 0:
        return x
    finite = torch.isfinite(x)
    count = finite.sum(dim=-1, keepdim=True).clamp_min(1)
    # scale by the largest magnitude so squares of huge logits cannot overflow float32
    scale = torch.where(finite, x.abs(), 0.0).amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    z = torch.where(finite, x / scale, 0.0)
    mean = z.sum(dim=-1, keepdim=True) / count
    var = (torch.where(finite, z - mean, 0.0) ** 2).sum(dim=-1, keepdim=True) / count
    top = torch.where(finite, z, NEG_INF).amax(dim=-1, keepdim=True)
    return x.masked_fill(finite & (z < top - n * var.sqrt()), NEG_INF)


def apply_xtc(logits: Tensor, threshold: float, probability: float, uniform: Tensor | float | None) -> Tensor:
    """Exclude Top Choices (llama.cpp): when the draw `uniform` < probability, remove every token whose
    probability is >= threshold except the least likely of them (nothing if fewer than two qualify).

    uniform: one value in [0, 1) per row (or one for all rows); None is allowed only when probability
    is 0 (off) or 1 (always). A threshold above 0.5 can never catch two tokens, so it removes nothing.
    """
    x = logits.float()
    if probability == 0 or threshold > 0.5:
        return x
    if probability >= 1:
        fire = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    elif uniform is None:
        raise ValueError(f"xtc_probability {probability!r} needs a random draw: pass generator= or "
                         "xtc_uniform= (one value in [0, 1) per request)")
    else:
        # compared where the draw lives (float64 on the CPU), then moved: no rounding up to 1
        u = torch.as_tensor(uniform)
        u = u.reshape(()) if u.numel() == 1 else u   # one draw for every row
        fire = torch.broadcast_to(u < probability, x.shape[:-1]).to(x.device)
    p = torch.softmax(x, dim=-1)
    above = (p >= threshold) & (p > 0)
    # the least likely qualifying token (ties: the higher id, as llama.cpp's order puts it last)
    weakest = torch.where(above, p, 2.0)
    least = weakest.amin(dim=-1, keepdim=True)
    ids = torch.arange(x.shape[-1], device=x.device)
    keep_id = torch.where(above & (weakest == least), ids, -1).amax(dim=-1, keepdim=True)
    remove = above & (ids != keep_id) & (above.sum(dim=-1, keepdim=True) >= 2) & fire.unsqueeze(-1)
    return x.masked_fill(remove, NEG_INF)
