"""The "Next token" page's logic: the distribution table, the chart, the pipeline tables and the
step-by-step continuation. Pure functions (no Streamlit import) so tests can call them directly.
"""
from __future__ import annotations

import codecs
import functools
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import Tensor

import core
from ui.format import (escape_html, fmt_prob, plotly_text, plural, settings_label, show_token, token_labels,
                       visible_text)

STEPS_KEY = "nt_steps"        # session_state: list of Pick dicts, one per appended token
CONTEXT_KEY = "nt_context"    # session_state: (model, prompt, mode) the steps belong to
SHELF_KEY = "nt_shelf"        # session_state: {context: steps} set aside when the prompt, mode or model changed
MOVED_KEY = "nt_moved_from"   # session_state: the context whose steps were just set aside (to offer them back)
SHELF_SIZE = 20               # continuations kept per session

RAW_COLOR = "#9fb7d6"
FILTERED_COLOR = "#1f5fbf"
REMOVED_COLOR = "#c4c4c4"


# --- the distribution, analysed once per rerun ------------------------------------------------

@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything the page draws for one (logits, settings) pair."""

    logits: Tensor              # raw float32 logits (V,)
    cfg: core.SamplingConfig
    stages: list[core.Stage]    # raw, then the chain in cfg's order (the basic four always, others when on)
    # core.pipeline's keywords (history, prompt_length, dry_breakers, xtc_uniform); read, never changed
    request: Mapping[str, object] = field(default_factory=dict)

    @functools.cached_property
    def order(self) -> Tensor:
        """All token ids by descending raw logit (stable: ties go to the lower id); only the full CSV needs it."""
        return torch.sort(self.logits, descending=True, stable=True).indices

    def top(self, n: int) -> Tensor:
        """The first n ids of `order`, without sorting the whole vocabulary (a slider move stays cheap)."""
        return core.sampling.top_ids(self.logits, n)

    @property
    def raw_probs(self) -> Tensor:
        return self.stages[0].probs

    @property
    def probs(self) -> Tensor:
        """The final filtered distribution: exactly core.probabilities(logits, cfg)."""
        return self.stages[-1].probs

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]

    @property
    def kept(self) -> int:
        return int(self.stages[-1].kept)


def analyze(logits: np.ndarray | Tensor, cfg: core.SamplingConfig, **request: object) -> Analysis:
    """Run the sampling pipeline on one row of raw logits (never modified); `request` as core.pipeline's
    keywords (history, prompt_length, dry_breakers, xtc_uniform)."""
    # numpy input is copied: arrays from st.cache_data may be read-only, which torch warns about.
    x = torch.from_numpy(np.array(logits, dtype=np.float32)) if isinstance(logits, np.ndarray) else logits.float()
    if x.dim() != 1:
        raise ValueError(f"expected one row of logits (V,), got shape {tuple(x.shape)}")
    stages = core.pipeline(x, cfg, **request)
    return Analysis(logits=x, cfg=cfg, stages=stages, request=MappingProxyType(dict(request)))


def step_request(cfg: core.SamplingConfig, prompt_ids: Sequence[int], appended: Sequence[int],
                 dry_breakers: tuple[tuple[int, ...], ...] | None = None) -> dict[str, object]:
    """What the chain needs beyond the logits at this step: the history (prompt + appended tokens, so the
    penalties and DRY see both), where the prompt ends, DRY's breakers and XTC's draw. XTC's draw is the
    second number of the step's generator (seed + step; Sample draws the first), so a step is repeatable."""
    request: dict[str, object] = {"history": tuple(prompt_ids) + tuple(appended), "prompt_length": len(prompt_ids),
                                  "dry_breakers": dry_breakers}
    if cfg.xtc_needs_draw:
        seed = None if cfg.seed is None else cfg.seed + len(appended)
        request["xtc_uniform"] = float(core.sampling.draw_uniform(core.make_generator(seed), 2)[1])
    return request


# How a token an adjusting stage moved is marked: "penalty↓", "bias↑".
MOVED_MARKS = {"logit-bias": "bias", "penalties": "penalty", "dry": "DRY"}


def moved_marks(a: Analysis, ids: Tensor) -> list[str]:
    """For each id, the adjusting stages (bias, penalties, DRY) that moved its logit and which way, e.g.
    "penalty↓ · bias↑"; "" for a token none of them touched."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    marks: list[list[str]] = [[] for _ in range(len(ids))]
    for before, stage in zip(a.stages, a.stages[1:]):
        if stage.moved is None:
            continue
        moved = stage.moved[ids].tolist()
        up = (stage.logits[ids] > before.logits[ids]).tolist()
        for i, (m, u) in enumerate(zip(moved, up)):
            if m:
                marks[i].append(MOVED_MARKS[stage.name] + ("↑" if u else "↓"))
    return [" · ".join(m) for m in marks]


def ranks(a: Analysis, ids: Tensor) -> Tensor:
    """1-based rank of each id under the raw logits; ties share the best rank (as core.sampling.rank_of).

    Binary search in the sorted logits: O(n log V), where rank_of compares every pair (fine for a few ids,
    not for the whole vocabulary).
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if len(ids) <= 64:  # a few ids: count larger logits directly, no sort of the vocabulary
        return core.sampling.rank_of(a.logits, ids)
    ascending = a.logits[a.order.flip(0)].contiguous()
    greater = a.vocab - torch.searchsorted(ascending, a.logits[ids].contiguous(), right=True)
    return greater + 1


def removed_by(a: Analysis, ids: Tensor) -> list[str | None]:
    """For each id, the first stage whose output gives it probability 0 (None if it is still kept)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    out = np.full(len(ids), None, dtype=object)
    for stage in a.stages[1:]:
        newly = (stage.probs[ids] == 0).numpy() & (out == None)  # noqa: E711 (elementwise on an object array)
        out[newly] = stage.name
    return out.tolist()


def status_text(stage: str | None, cfg: core.SamplingConfig) -> str:
    """What happened to a token, in words (stage from removed_by)."""
    if stage is None:
        return "kept"
    if stage == "temperature":
        if cfg.greedy:
            return "removed by greedy (T = 0)"
        # T > 0 never removes a token on purpose: its probability underflowed float32.
        return f"rounds to 0 at T = {cfg.temperature:g}"
    return f"removed by {stage}"


COLUMNS = ["rank", "token", "id", "logit", "raw probability", "filtered probability", "status", "text"]


def distribution_table(a: Analysis, tokenizer: core.Tokenizer, n: int | None = None) -> pd.DataFrame:
    """The n most likely tokens (all of them when n is None), most likely first.

    "filtered probability" is core.probabilities(logits, cfg) itself; "rank" is 1-based under the
    raw logits (ties share the best rank); "text" is the exact token text, "token" its readable label.
    """
    ids = a.order if n is None else a.top(n)
    stages = removed_by(a, ids)
    return pd.DataFrame({
        "rank": ranks(a, ids).numpy().astype(np.int64),
        "token": token_labels(ids.tolist(), tokenizer.token_text),
        "id": ids.numpy().astype(np.int64),
        "logit": a.logits[ids].numpy(),
        "raw probability": a.raw_probs[ids].numpy(),
        "filtered probability": a.probs[ids].numpy(),
        "status": [" · ".join(filter(None, (status_text(s, a.cfg), m)))
                   for s, m in zip(stages, moved_marks(a, ids))],
        "text": [tokenizer.token_text(int(i)) for i in ids.tolist()],
    }, columns=COLUMNS)


def csv_bytes(df: pd.DataFrame) -> bytes:
    """CSV with full float precision (UTF-8, so the readable labels survive)."""
    return df.to_csv(index=False, float_format="%.9g").encode("utf-8")


@dataclass(frozen=True)
class Rest:
    """The tokens below the top n, summed into one bar."""

    count: int
    kept: int
    raw_mass: float
    filtered_mass: float


def rest_of(a: Analysis, n: int) -> Rest:
    """Everything below the top n, from totals minus the top (no pass over the ~50k-token tail)."""
    top = a.top(n)
    count = a.vocab - len(top)
    if count == 0:
        return Rest(0, 0, 0.0, 0.0)
    filtered = a.probs[top]
    # float64 totals: the tail mass is exact to ~1e-16; max() keeps rounding from going negative.
    raw_mass = float(a.raw_probs.double().sum() - a.raw_probs[top].double().sum())
    filtered_mass = float(a.probs.double().sum() - filtered.double().sum())
    kept = a.kept - int((filtered > 0).sum())
    return Rest(count=count, kept=kept, raw_mass=max(0.0, raw_mass),
                filtered_mass=max(0.0, filtered_mass) if kept else 0.0)


def unreported_mass(a: Analysis) -> float:
    """What an engine that reports only its top N did not report: 1 - the sum of the reported
    probabilities (its logits are raw log-probabilities, -inf elsewhere)."""
    return max(0.0, 1.0 - float(torch.logsumexp(a.logits.double(), 0).exp()))


def engine_probabilities(table: pd.DataFrame, unreported: float | None) -> pd.DataFrame:
    """A top-N engine's table with the engine's own raw probabilities: softmax over the N reported
    tokens is each one's share of what is known, times the known mass. Unchanged for a whole vocabulary."""
    if unreported is None:
        return table
    return table.assign(**{"raw probability": table["raw probability"].astype(float) * (1.0 - unreported)})


def top_n_note(top_n: int, unreported: float) -> str:
    """The plain words a top-N engine's pages show once (numbers only: trusted text)."""
    return (f"This engine reports only its top {top_n} tokens; they hold {fmt_prob(1 - unreported)} of its "
            f"probability, and {fmt_prob(unreported)} went to tokens it did not report (one bar below). "
            f"Filters, entropy and Sample work on the {top_n} reported tokens only: their probabilities after "
            "your settings are shares of what is known, and the raw bars are the engine's own numbers, "
            "not rescaled.")


def _short_status(status: str) -> str:
    return status.replace("removed by greedy (T = 0)", "removed: greedy (T = 0)")


def distribution_figure(top: pd.DataFrame, rest: Rest, cfg: core.SamplingConfig,
                        log_scale: bool = False, unreported: float | None = None) -> go.Figure:
    """Horizontal grouped bars, most likely token on top: the model's raw probability next to the
    probability after the settings. Removed tokens get a grey hatched raw bar labelled with the stage
    that removed them; the last bar holds every other token's mass. unreported (an engine that reports
    only its top N): the raw bars are the engine's own probabilities and one more bar holds what it
    did not report, which no filter can see (pass the table through `engine_probabilities` first)."""
    labels = [plotly_text(t) for t in top["token"]]
    raw = top["raw probability"].astype(float).tolist()
    if unreported is not None:  # tokens beyond the N reported hold nothing: no "all other" bar for them
        rest = Rest(0, 0, 0.0, 0.0) if rest.raw_mass == 0 and rest.filtered_mass == 0 else rest
    filt = top["filtered probability"].astype(float).tolist()
    status = top["status"].tolist()
    removed = [not s.startswith("kept") for s in status]
    hover = [[lab, int(i), f"{lg:.3f}", fmt_prob(r), fmt_prob(f), plotly_text(s)]
             for lab, i, lg, r, f, s in zip(labels, top["id"], top["logit"], raw, filt, status)]

    if rest.count:
        other = f"all other {rest.count:,} tokens"
        labels.append(other)
        raw.append(rest.raw_mass)
        filt.append(rest.filtered_mass)
        removed.append(rest.kept == 0)
        status.append("all kept" if rest.kept == rest.count else "none kept" if rest.kept == 0
                      else f"{rest.kept:,} kept")
        hover.append([other, "—", "—", fmt_prob(rest.raw_mass), fmt_prob(rest.filtered_mass), status[-1]])
    if unreported is not None:
        other = "everything the engine did not report"
        labels.append(other)
        raw.append(unreported)
        filt.append(0.0)
        removed.append(False)
        status.append("not reported: unknown")
        hover.append([other, "—", "—", fmt_prob(unreported), "unknown", "the engine reported only its top tokens"])

    n = len(labels)
    n_other = bool(rest.count) + (unreported is not None)
    is_other = [i >= n - n_other for i in range(n)]
    raw_colors = [REMOVED_COLOR if r else RAW_COLOR for r in removed]
    raw_patterns = ["/" if r else ("." if o else "") for r, o in zip(removed, is_other)]
    # a removed token says by what; a kept one that a penalty or bias moved says that ("kept · penalty↓")
    raw_text = [_short_status(s) if (r or o or s != "kept") else "" for s, r, o in zip(status, removed, is_other)]
    filt_text = [fmt_prob(f) if f > 0 else "" for f in filt]
    template = ("<b>%{customdata[0]}</b>  id %{customdata[1]}<br>logit %{customdata[2]}<br>"
                "raw %{customdata[3]} → after settings %{customdata[4]}<br>%{customdata[5]}<extra></extra>")

    bars = [
        dict(name="model (raw: T = 1, no filters)", y=labels, x=raw, orientation="h",
             marker=dict(color=raw_colors, pattern=dict(shape=raw_patterns, fgcolor="#6b6b6b", size=6)),
             text=raw_text, textposition="outside", cliponaxis=False, textfont=dict(color="#555"),
             customdata=hover, hovertemplate=template),
        dict(name=f"after your settings ({settings_label(cfg)}): what Sample draws from", y=labels, x=filt,
             orientation="h", marker=dict(color=FILTERED_COLOR, pattern=dict(shape=["." if o else "" for o in is_other])),
             text=filt_text, textposition="outside", cliponaxis=False,
             customdata=hover, hovertemplate=template),
    ]

    top_value = max([*raw, *filt, 1e-12])
    xaxis: dict = dict(title="probability", tickformat=".0%" if not log_scale else None, gridcolor="rgba(128,128,128,0.2)")
    if log_scale:
        positive = [v for v in [*raw, *filt] if v > 0]
        low = math.log10(max(min(positive), 1e-12)) - 0.3
        xaxis.update(type="log", range=[low, math.log10(top_value) + 0.6], exponentformat="power")
    else:
        # Room to the right of the longest bar for its label.
        xaxis.update(range=[0, min(1.0, top_value) * 1.3])
    layout = dict(
        barmode="group", bargap=0.25, bargroupgap=0.05, height=110 + 34 * n,
        margin=dict(l=10, r=30, t=40, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        # Categories, not numbers: a token like "2024" must not turn the axis numeric.
        yaxis=dict(type="category", autorange="reversed", automargin=True, tickfont=dict(size=14)),
        xaxis=xaxis, uniformtext=dict(minsize=9, mode="show"),
    )
    # Built in one go: add_bar and update_layout each re-validate and deep-copy the figure (~2x slower).
    return go.Figure(data=[go.Bar(**bar) for bar in bars], layout=layout)


# --- the pipeline strip ----------------------------------------------------------------------

@dataclass(frozen=True)
class StageSummary:
    name: str
    label: str
    active: bool
    kept: int
    mass_kept: float       # probability (at this temperature) of the tokens still in play
    raw_mass_kept: float   # the same tokens' probability under the raw distribution


def stage_summaries(a: Analysis) -> list[StageSummary]:
    return [StageSummary(s.name, s.label, s.active, int(s.kept), float(s.mass_kept), float(s.raw_mass_kept))
            for s in a.stages]


def pipeline_markdown(summaries: Sequence[StageSummary]) -> str:
    """Trusted Markdown table of the stages in order (only numbers and core's labels, never model text)."""
    rows = ["| stage | tokens kept | mass kept | raw mass |", "|---|--:|--:|--:|"]
    for s in summaries:
        label = f"**{s.label}**" if s.active or s.name == "raw" else f":gray[{s.label}]"
        rows.append(f"| {label} | {s.kept:,} | {fmt_prob(s.mass_kept)} | {fmt_prob(s.raw_mass_kept)} |")
    return "\n".join(rows)


def summary_markdown(a: Analysis, unreported: float | None = None) -> str:
    """Trusted Markdown table: the raw distribution next to the one Sample draws from. unreported (a
    top-N engine): the raw column counts the reported tokens, gives the engine's own top probability,
    and labels the entropy as that of the reported tokens only."""
    h, h_raw = entropy_bits(a.probs), entropy_bits(a.raw_probs)
    in_play, top_raw, entropy_label = a.vocab, float(a.raw_probs.max()), "entropy"
    if unreported is not None:
        in_play = int(torch.isfinite(a.logits).sum())
        top_raw *= 1.0 - unreported
        entropy_label = f"entropy (of the {in_play} reported tokens)"
    return "\n".join([
        "| | raw model | after settings |", "|---|--:|--:|",
        f"| tokens in play | {in_play:,}{' reported' if unreported is not None else ''} | **{a.kept:,}** |",
        f"| {entropy_label} | {h_raw:.2f} bits | **{h:.2f} bits** |",
        f"| top choice | {fmt_prob(top_raw)} | **{fmt_prob(float(a.probs.max()))}** |",
    ])


def moot_warnings(a: Analysis) -> list[str]:
    return core.moot_warnings(a.stages)


def entropy_bits(probs: Tensor) -> float:
    return max(0.0, float(core.entropy(probs)))   # never shown as -0.00, or as a rounding hair below 0


# --- picking the next token ------------------------------------------------------------------

@dataclass(frozen=True)
class Pick:
    """One appended token and how it was chosen."""

    token_id: int
    text: str
    kind: str            # "sampled" or "chosen"
    rank: int            # 1-based under the raw logits
    vocab: int
    prob: float          # under the settings it was picked with
    raw_prob: float
    kept: int            # tokens in play under those settings
    status: str          # status_text for this token under those settings
    greedy: bool
    settings: str        # settings_label at the time

    def message(self) -> str:
        """Plain text (not Markdown): what was picked and whether it was the top choice."""
        tok = show_token(self.text)
        where = f"rank {self.rank:,} of {self.vocab:,}, p = {fmt_prob(self.prob)}"
        if self.kind == "sampled":
            if self.greedy:
                return f"Sampled '{tok}' — {where}: temperature 0 always takes the top choice."
            if self.rank == 1:
                return f"Sampled '{tok}' — {where}: the top choice (greedy would pick it too)."
            return f"Sampled '{tok}' — {where}: a random draw, not the top choice."
        text = f"You appended '{tok}' — {where} under {self.settings} (raw {fmt_prob(self.raw_prob)})"
        if self.prob == 0:
            return text + f": {self.status}, so Sample could never draw it."
        return text + (": the top choice." if self.rank == 1 else ".")


def make_pick(a: Analysis, tokenizer: core.Tokenizer, token_id: int, kind: str) -> Pick:
    tid = int(token_id)
    ids = torch.tensor([tid])
    return Pick(token_id=tid, text=tokenizer.token_text(tid), kind=kind, rank=int(ranks(a, ids)[0]),
                vocab=a.vocab, prob=float(a.probs[tid]), raw_prob=float(a.raw_probs[tid]), kept=a.kept,
                status=status_text(removed_by(a, ids)[0], a.cfg), greedy=a.cfg.greedy,
                settings=settings_label(a.cfg))


def sample_token(a: Analysis, step: int) -> int:
    """Draw with the sidebar seed + the number of tokens already appended: the same prompt, settings
    and seed give the same continuation every time."""
    seed = None if a.cfg.seed is None else a.cfg.seed + step
    return int(core.sample(a.probs, generator=core.make_generator(seed)))


# --- the continuation, kept in session state -------------------------------------------------

def steps(state: MutableMapping) -> list[Pick]:
    return [Pick(**d) for d in state.get(STEPS_KEY, [])]


def appended_ids(state: MutableMapping) -> list[int]:
    return [d["token_id"] for d in state.get(STEPS_KEY, [])]


def sync_context(state: MutableMapping, context: tuple) -> None:
    """Follow a change of model, prompt or prompt mode without losing anything: the old context's tokens
    are set aside (and offered back), and a context seen before gets its own tokens back."""
    old = state.get(CONTEXT_KEY)
    if old == context:
        return
    shelf = dict(state.get(SHELF_KEY, {}))
    old_steps = state.get(STEPS_KEY, [])
    if old is not None and old_steps:
        shelf[old] = old_steps
    state[STEPS_KEY] = shelf.pop(context, [])
    state[MOVED_KEY] = old if (old is not None and old_steps and not state[STEPS_KEY]) else None
    state[SHELF_KEY] = dict(list(shelf.items())[-SHELF_SIZE:])
    state[CONTEXT_KEY] = context


@dataclass(frozen=True)
class SetAside:
    """Tokens appended to an earlier prompt, kept while the user decides what to do with them."""

    context: tuple          # (model, prompt, mode) they belong to
    picks: list[Pick]

    def describe(self, current: tuple) -> str:
        """Plain text: what was set aside and why."""
        n = len(self.picks)
        text = "".join(p.text for p in self.picks)
        what = "the model" if self.context[0] != current[0] else (
            "the prompt mode" if self.context[1] == current[1] else "the prompt")
        return (f"You changed {what}, so the {plural(n, 'token')} you appended (“{visible_text(text)}”) "
                f"{'was' if n == 1 else 'were'} set aside, not deleted.")


def set_aside(state: MutableMapping) -> SetAside | None:
    """The continuation just set aside by a prompt/mode/model change, while the new context has none."""
    moved = state.get(MOVED_KEY)
    if moved is None or state.get(STEPS_KEY) or moved not in state.get(SHELF_KEY, {}):
        return None
    return SetAside(moved, [Pick(**d) for d in state[SHELF_KEY][moved]])


def carry_over(state: MutableMapping) -> None:
    """Append the set-aside tokens after the current prompt (same model: their ids mean the same tokens)."""
    aside = set_aside(state)
    if aside is None or aside.context[0] != state.get(CONTEXT_KEY, (None,))[0]:
        return
    shelf = dict(state[SHELF_KEY])
    state[STEPS_KEY] = shelf.pop(aside.context)
    state[SHELF_KEY], state[MOVED_KEY] = shelf, None


def restore_context(state: MutableMapping, prompt_key: str = "prompt", mode_key: str = "prompt_mode") -> None:
    """Callback: put the earlier prompt and mode back in the sidebar widgets; the next run's sync_context
    then brings their tokens back from the shelf."""
    aside = set_aside(state)
    if aside is not None:
        state[prompt_key], state[mode_key] = aside.context[1], aside.context[2]


def dismiss_set_aside(state: MutableMapping) -> None:
    """Stop offering them (they stay on the shelf: going back to that prompt still brings them back)."""
    state[MOVED_KEY] = None


def append_pick(state: MutableMapping, pick: Pick) -> None:
    # A new list, not .append: session state values are replaced, never mutated in place.
    state[STEPS_KEY] = [*state.get(STEPS_KEY, []), asdict(pick)]


def undo(state: MutableMapping) -> None:
    state[STEPS_KEY] = list(state.get(STEPS_KEY, []))[:-1]


def reset(state: MutableMapping) -> None:
    state[STEPS_KEY] = []


def current_analysis(state: MutableMapping, context: tuple, prompt_ids: Sequence[int],
                     logits_of: Callable[[tuple[int, ...]], np.ndarray], cfg: core.SamplingConfig,
                     dry_breakers: tuple[tuple[int, ...], ...] | None = None) -> Analysis:
    """The distribution after the prompt + the tokens appended to it, for the settings given (the
    penalties and DRY see both)."""
    sync_context(state, context)
    appended = appended_ids(state)
    return analyze(logits_of(tuple(prompt_ids) + tuple(appended)), cfg,
                   **step_request(cfg, prompt_ids, appended, dry_breakers))


def on_sample(state: MutableMapping, a: Analysis, tokenizer: core.Tokenizer) -> None:
    """Draw one token from `a` (the current distribution) and append it."""
    tid = sample_token(a, len(state.get(STEPS_KEY, [])))
    append_pick(state, make_pick(a, tokenizer, tid, "sampled"))


def on_choose(state: MutableMapping, a: Analysis, tokenizer: core.Tokenizer, token_id: int | None = None,
              widget_key: str | None = None) -> None:
    """Append a token the user chose (given, or read from a selectbox's key)."""
    tid = token_id if token_id is not None else state.get(widget_key)
    if tid is not None:
        append_pick(state, make_pick(a, tokenizer, int(tid), "chosen"))


def text_pieces(tokenizer: core.Tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's share of the decoded text; a character split across tokens goes to the last one."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [dec.decode(tokenizer.token_bytes(int(i))) for i in ids]
    if pieces:
        pieces[-1] += dec.decode(b"", final=True)
    return pieces


def text_so_far_html(prompt_text: str, pieces: Sequence[str]) -> str:
    """The prompt (dimmed) and the appended tokens (highlighted, alternating shades): every piece
    of text is escaped, because model and user text are untrusted."""
    spans = "".join(
        f'<span style="background:rgba(31,95,191,{0.16 if i % 2 == 0 else 0.30});border-radius:3px;'
        f'padding:1px 0" title="step {i + 1}">{escape_html(visible_text(p))}</span>' for i, p in enumerate(pieces))
    return ('<div style="white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,SFMono-Regular,'
            'Menlo,Consolas,monospace;font-size:0.95rem;line-height:1.6;padding:0.6rem 0.8rem;max-height:14rem;'
            'overflow-y:auto;border:1px solid rgba(128,128,128,0.35);border-radius:0.5rem">'
            f'<span style="opacity:0.65">{escape_html(visible_text(prompt_text))}</span>{spans}'
            '<span style="opacity:0.5">▌</span></div>')


def history_table(picks: Sequence[Pick]) -> pd.DataFrame:
    return pd.DataFrame({
        "step": list(range(1, len(picks) + 1)),
        "token": [show_token(p.text) for p in picks],
        "how": [p.kind for p in picks],
        "rank": [p.rank for p in picks],
        "p (settings then)": [p.prob for p in picks],
        "raw p": [p.raw_prob for p in picks],
        "settings": [p.settings for p in picks],
    })


# --- the same settings under two engines' orders ---------------------------------------------

COMPARED_ORDERS = ("transformers", "llama.cpp")


def order_comparison(a: Analysis, tokenizer: core.Tokenizer, n: int = 10) -> pd.DataFrame:
    """The n most likely raw tokens with their probability after the same settings under transformers'
    order (temperature before the filters) and llama.cpp's (temperature last), plus a last row counting
    the tokens in play. Probabilities are core.probabilities' exactly."""
    ids = a.top(n)
    probs = order_probabilities(a)
    table = pd.DataFrame({"token": token_labels(ids.tolist(), tokenizer.token_text),
                          "raw": [fmt_prob(float(p)) for p in a.raw_probs[ids]]})
    for o, p in probs.items():
        table[o] = [fmt_prob(float(v)) for v in p[ids]]
    in_play = {"token": "tokens in play", "raw": f"{a.vocab:,}",
               **{o: f"{int((p > 0).sum()):,}" for o, p in probs.items()}}
    return pd.concat([table, pd.DataFrame([in_play])], ignore_index=True)


def order_probabilities(a: Analysis) -> dict[str, Tensor]:
    """core.probabilities under each of COMPARED_ORDERS, everything else as in `a`."""
    return {o: core.probabilities(a.logits, a.cfg.replace(order=o), **a.request) for o in COMPARED_ORDERS}


def order_note(a: Analysis) -> str:
    """Whether the two orders differ here, in words (trusted: fixed text)."""
    first, second = order_probabilities(a).values()
    if torch.equal(first, second):
        return ("Both orders give the same distribution here: the order matters once a filter (top-k, top-p, "
                "min-p, …) is on with a temperature other than 1.")
    return ("transformers divides by the temperature before the filters, llama.cpp after them, so the filters "
            "see a different distribution.")


# --- temperature sweep -----------------------------------------------------------------------

def sweep_temperatures(current: float, high: float = 5.0, steps: int = 26) -> tuple[float, ...]:
    """The sweep's grid: every 0.2 from 0 to 5 plus the current temperature, so the caption reads the
    exact value there (27 points at most, fewer than core's default 51: the sweep reruns on every settings
    change)."""
    return tuple(sorted({*core.sampling.temperature_grid(high, steps), float(current)}))


def sweep_figure(sweep: core.TemperatureSweep, current: float) -> go.Figure:
    """Three small panels over T = 0…5 with the current T marked: entropy (bits), effective number of
    candidates (2^entropy, log scale) and the top token's probability."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("entropy (bits)", "effective candidates (2^entropy)",
                                        "top token's probability"))
    t = list(sweep.temperatures)
    series = [(sweep.entropy, "%{y:.2f} bits"), (sweep.effective, "%{y:,.1f} tokens"), (sweep.top_prob, "%{y:.1%}")]
    for col, (y, fmt) in enumerate(series, 1):
        fig.add_scatter(x=t, y=list(y), mode="lines", line=dict(color=FILTERED_COLOR), showlegend=False,
                        hovertemplate=f"T = %{{x:g}}: {fmt}<extra></extra>", row=1, col=col)
        fig.add_vline(x=current, line=dict(color="#d62728", dash="dash"), row=1, col=col)
        fig.update_xaxes(title_text="temperature", range=[0, max(t)], row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05], row=1, col=3)
    fig.add_annotation(x=current, y=1.0, yref="paper", xref="x", text=f"your T = {current:g}", showarrow=False,
                       yshift=-8, xanchor="left", font=dict(color="#d62728"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=40))
    return fig


def sweep_caption(sweep: core.TemperatureSweep, current: float) -> str:
    """The sweep's values at the grid point nearest the current temperature, in words (numbers only)."""
    i = min(range(len(sweep.temperatures)), key=lambda j: abs(sweep.temperatures[j] - current))
    return (f"At T = {sweep.temperatures[i]:g}: entropy {sweep.entropy[i]:.2f} bits, as unsure as "
            f"{sweep.effective[i]:,.1f} equally likely tokens; the top token has {fmt_prob(sweep.top_prob[i])}. "
            "Every other setting stays as in the sidebar, in the chosen order.")
