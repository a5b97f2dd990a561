"""Streaming generation: Python generators that yield one step at a time, with a per-request KV cache."""
from __future__ import annotations

import codecs
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .backends import ProgressCallback
from .loading import LanguageModel
from .models import KVCache
from .samplers import dry_breaker_ids
from .sampling import SamplingConfig, argmax, draw_uniform, entropy, make_generator, probabilities, rank_of, sample


@dataclass(frozen=True)
class Candidate:
    token_id: int
    text: str
    prob: float       # under the filtered distribution that was sampled
    raw_prob: float   # under the model's raw distribution (T=1, no filters)
    logit: float


@dataclass(frozen=True)
class Step:
    """One generated token and what the model thought about it."""

    index: int                          # 0-based among generated tokens
    token_id: int
    text: str                           # this token's share of the decoded text (UTF-8 safe)
    prob: float                         # probability under the filtered distribution it was drawn from
    raw_prob: float                     # probability under the raw distribution
    rank: int                           # 1-based rank under the raw logits
    entropy: float                      # bits, filtered distribution
    raw_entropy: float                  # bits, raw distribution
    top_before: tuple[Candidate, ...]   # top-N by raw probability
    top_after: tuple[Candidate, ...]    # top-N of the filtered distribution (probability > 0 only)
    uniform: float                      # the shared random number of this step (unused when greedy)
    prompt_tokens: int                  # prompt tokens the model actually read
    truncated: int                      # prompt tokens dropped from the front to fit the context window
    finished: str | None = None         # "eos" or "length" on the last step, else None

    @property
    def was_top_choice(self) -> bool:
        return self.rank == 1


def fit_context(ids: Sequence[int], max_new_tokens: int, context_length: int) -> tuple[list[int], int, int]:
    """Keep the prompt's last tokens so prompt + new tokens fit the window: (ids, dropped, max_new)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    max_new = min(max_new_tokens, context_length - 1)
    keep = context_length - max_new
    dropped = max(0, len(ids) - keep)
    return list(ids[dropped:]), dropped, max_new


def _candidates(lm: LanguageModel, logits: Tensor, raw_probs: Tensor, probs: Tensor, n: int
                ) -> tuple[tuple[Candidate, ...], tuple[Candidate, ...]]:
    def build(order: Tensor) -> tuple[Candidate, ...]:
        # one gather per tensor: indexing element by element cost ~3 us a number, 60 per step
        columns = zip(order.tolist(), probs[order].tolist(), raw_probs[order].tolist(), logits[order].tolist())
        return tuple(Candidate(i, lm.tokenizer.token_text(i), p, raw, logit) for i, p, raw, logit in columns)

    n = min(n, logits.shape[-1])
    before = build(torch.topk(logits, n).indices)
    # The filters keep every token above some logit (and maybe some tied at it), and the kept ones'
    # probabilities rise with their logits. So the filtered top-n is the kept part of `before` when
    # all n are kept, or when no token outside them is; only a tie cut at the edge needs a topk.
    kept = tuple(c for c in before if c.prob > 0)
    if len(kept) == n or int(torch.count_nonzero(probs)) == len(kept):
        return before, kept
    top = torch.topk(probs, n)
    return before, build(top.indices[top.values > 0])  # tokens the filters removed are not candidates


def _rank(logits: Tensor, token: int, top: tuple[Candidate, ...]) -> int:
    """rank_of(logits, token), read off the top candidates when the token is among them: every
    larger logit is then among them too (a pass over the vocabulary less per step)."""
    for c in top:
        if c.token_id == token:
            return 1 + sum(other.logit > c.logit for other in top)
    return int(rank_of(logits, torch.tensor(token, device=logits.device)))


def generate_many(lm: LanguageModel, prompt: str | Sequence[int], configs: Sequence[SamplingConfig],
                  max_new_tokens: int = 40, *, seed: int | None = None, mode: str = "raw", top_n: int = 10,
                  use_cache: bool = True, stop_at_eos: bool = True, progress: ProgressCallback | None = None,
                  seeds: Sequence[int | None] | None = None,
                  batched: bool = True) -> Iterator[list[Step | None]]:
    """Several sampling settings, one prompt, advancing together; yields one list per step.

    Common random numbers: every column draws with the same uniform value at each step, so
    differences come from the settings, not from luck. A finished column yields None.
    seed defaults to configs[0].seed; `seeds` gives each row its own (None = `seed`). Each row draws
    exactly what it would draw alone (its seed; XTC's coin only where it has XTC), and rows that draw
    alike from one seed share one torch.Generator, hence the same numbers. The columns
    step together through lm.engine, each with the bits it would get alone. The prompt is read
    once, after the longest prefix lm.prefixes holds that gives a fresh read's very bits (so the
    same seed gives the same text whatever the store holds; progress(done, total) reports the
    read), and the request's state goes back to lm.prefixes when it ends.
    batched: the steps go through lm.scheduler, in one batch with other threads' generations on lm
    (each row's bits as alone; core.scheduler.Busy when it is full); False: lm.engine.step directly.
    Closing the generator (a Stop) leaves the scheduler at once.
    """
    if not configs:
        raise ValueError("configs must hold at least one SamplingConfig")
    ids = lm.encode_prompt(prompt, mode) if isinstance(prompt, str) else list(prompt)
    ids = lm.check_ids(ids)
    ids, dropped, max_new = fit_context(ids, max_new_tokens, lm.context_length)
    b = len(configs)
    draws = _draw_groups(configs, configs[0].seed if seed is None else seed, seeds)
    greedy = all(c.greedy for c in configs)
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(b)]
    seqs = [list(ids) for _ in range(b)]
    # DRY's breakers are text: map them to token-id sequences once per request (a vocabulary scan)
    breakers = {c.dry_sequence_breakers: dry_breaker_ids(c.dry_sequence_breakers, lm.tokenizer.token_text,
                                                         lm.tokenizer.encode, lm.tokenizer.vocab_size)
                for c in configs if c.dry_multiplier}
    done = [False] * b
    state: KVCache | None = None
    whole = False  # state holds exactly seqs[0][:state.pos] (not so while a step is under way)
    ticket = lm.scheduler.join(b) if batched and use_cache else None
    step_fn = lm.engine.step if ticket is None else ticket.step
    try:
        with torch.inference_mode():
            if use_cache:
                state, logits = lm.read_prompt(ids, len(ids) + max_new, progress, exact=True)
                if b > 1:  # the prompt's state is copied per column and not written again: store it now
                    prompt_state, state = state, state.repeat_batch(b)
                    lm.prefixes.put(ids, prompt_state)
                logits = logits.expand(b, -1)
                if ticket is not None:
                    ticket.prompt_read()
                whole = b == 1
            for step in range(max_new):
                if not use_cache:  # the tutorial's loop: re-read the whole sequence every token
                    logits = lm.model(torch.tensor(seqs, device=lm.device), last_only=True)[:, -1].float()
                elif step:
                    whole = False
                    logits = step_fn(chosen, state)
                    whole = b == 1
                # drawn every step, so greedy columns never shift the others; kept on the CPU in float64
                # (MPS has none): sample() moves it to the device
                u = torch.empty(b, dtype=torch.float64)
                u_xtc: list[Tensor | None] = [None] * b
                for gen, needs_xtc, rows in draws:
                    u[rows] = draw_uniform(gen, 1)
                    # XTC's coin: drawn only by rows with XTC (runs without it keep their draws)
                    coin = draw_uniform(gen, 1) if needs_xtc else None
                    for i in rows:
                        u_xtc[i] = coin
                raw_probs = torch.softmax(logits, dim=-1)
                probs = torch.stack([probabilities(logits[i], c, history=seqs[i], prompt_length=len(ids),
                                                   dry_breakers=breakers.get(c.dry_sequence_breakers, ()),
                                                   xtc_uniform=u_xtc[i])
                                     for i, c in enumerate(configs)])
                # a greedy row is one token at probability 1, which every draw picks: skip the draw
                chosen = argmax(probs) if greedy else sample(probs, uniform=u)
                raw_ent, ent = entropy(raw_probs), entropy(probs)
                out: list[Step | None] = []
                for i in range(b):
                    tok = int(chosen[i])
                    seqs[i].append(tok)  # finished columns too, so the batch stays rectangular
                    if done[i]:
                        out.append(None)
                        continue
                    finished = "eos" if (stop_at_eos and tok in lm.tokenizer.eos_ids) else (
                        "length" if step == max_new - 1 else None)
                    done[i] = finished is not None
                    before, after = _candidates(lm, logits[i], raw_probs[i], probs[i], top_n)
                    text = decoders[i].decode(lm.tokenizer.token_bytes(tok), final=finished is not None)
                    out.append(Step(index=step, token_id=tok, text=text,
                                    prob=float(probs[i, tok]), raw_prob=float(raw_probs[i, tok]),
                                    rank=_rank(logits[i], tok, before),
                                    entropy=float(ent[i]), raw_entropy=float(raw_ent[i]),
                                    top_before=before, top_after=after, uniform=float(u[i]),
                                    prompt_tokens=len(ids), truncated=dropped, finished=finished))
                yield out
                if all(done):
                    return
    finally:
        if ticket is not None:
            ticket.leave()
        if whole and state is not None:  # done writing to it, also when the caller stops early
            lm.prefixes.put(seqs[0][:state.pos], state)


def _draw_groups(configs: Sequence[SamplingConfig], seed: int | None, seeds: Sequence[int | None] | None
                 ) -> list[tuple[torch.Generator, bool, list[int]]]:
    """(generator, draws XTC's coin, rows) per group of rows with one seed and one draw pattern."""
    if seeds is None:
        seeds = [seed] * len(configs)
    if len(seeds) != len(configs):
        raise ValueError(f"seeds has {len(seeds)} values for {len(configs)} configs")
    if seed is None and None in seeds:
        seed = int.from_bytes(os.urandom(8), "little")  # rows without a seed share one random seed
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (row_seed, cfg) in enumerate(zip(seeds, configs)):
        groups.setdefault((seed if row_seed is None else row_seed, cfg.xtc_needs_draw), []).append(i)
    return [(make_generator(s), needs_xtc, rows) for (s, needs_xtc), rows in groups.items()]


def generate(lm: LanguageModel, prompt: str | Sequence[int], config: SamplingConfig | None = None,
             max_new_tokens: int = 40, **kwargs) -> Iterator[Step]:
    """Stream one continuation: yields a `Step` per token until end-of-text or max_new_tokens.

    Same seed and settings give the same text; temperature 0 is greedy for any seed.
    """
    for steps in generate_many(lm, prompt, [config or SamplingConfig()], max_new_tokens, **kwargs):
        yield steps[0]  # a single column is never None before the generator ends
