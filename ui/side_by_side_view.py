"""Pure helpers for the "Compare settings" page: column settings, charts, streamed text, draw counts.

No Streamlit import, so every function here is unit-testable on plain tensors and strings.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import Tensor

import core
from ui.format import (escape_html, fmt_bits, fmt_prob, plotly_text, plural, settings_label, show_token, token_labels,
                       visible_text)
from ui.next_token_view import step_request

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.1, 1.0, 5.0, 2.0)   # the book's 0.1, 1, 5, then one more
COLORS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
N_DRAWS = 1000                                                     # the book's experiment size
RANDOM_COLUMN = "random number (same for every column)"
# Why a column stopped early, in plain words (core's Step.finished; "length" is said once, in the status line).
STOP_REASONS = {"eos": "stopped: the model wrote its end-of-text token"}
SEEDS_SENTENCE = ("Columns with different seeds draw different random numbers, so their differences come from "
                  "the settings and from luck; columns that share a seed share their numbers.")
CRN_SENTENCE = ("Every column uses the same random number at each step (common random numbers), "
                "so any difference between the columns comes from the settings, not from luck.")

TEMPERATURES = "Temperatures (sidebar settings, each column its own T)"
# Ready-made comparisons: each column a full setting (its changes from the neutral SamplingConfig; the
# sidebar gives only the seed). Each column can still be edited on the page.
COMPARISONS: dict[str, tuple[dict[str, object], ...]] = {
    "top-p 0.9 vs min-p 0.1 at temperature 3": ({"temperature": 3.0, "top_p": 0.9},
                                                 {"temperature": 3.0, "min_p": 0.1}),
    "greedy vs temperature 1": ({"temperature": 0.0}, {"temperature": 1.0}),
    "with vs without repetition penalty": ({"temperature": 0.7, "repetition_penalty": 1.3}, {"temperature": 0.7}),
    "transformers vs llama.cpp order (T = 2, top-p 0.9)": (
        {"temperature": 2.0, "top_p": 0.9, "order": "transformers"},
        {"temperature": 2.0, "top_p": 0.9, "order": "llama.cpp"}),
}



# --- column settings --------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnSpec:
    """One column: its temperature and either a valid config or the message saying why not."""

    index: int                                # 0-based
    temperature: float
    name: str                                 # "T = 0.1"; "T = 1 (column 2)" when two columns share T
    config: core.SamplingConfig | None        # None when the temperature is invalid
    error: str | None = None

    @property
    def color(self) -> str:
        return COLORS[self.index % len(COLORS)]


def column_specs(temperatures: Sequence[float], base: core.SamplingConfig) -> list[ColumnSpec]:
    """One spec per temperature; the sidebar's filters and seed (in `base`) apply to every column."""
    titles = [f"T = {t:g}" for t in temperatures]
    specs = []
    for i, (t, title) in enumerate(zip(temperatures, titles)):
        name = f"{title} (column {i + 1})" if titles.count(title) > 1 else title
        try:
            specs.append(ColumnSpec(i, t, name, base.replace(temperature=t)))
        except ValueError as e:   # core names the bad value in its message
            specs.append(ColumnSpec(i, t, name, None, f"Column {i + 1}: {e}."))
    return specs


def comparison_configs(comparison: str, seed: int | None) -> list[core.SamplingConfig]:
    """A ready-made comparison's columns, each a full setting with the sidebar's seed."""
    return [core.SamplingConfig(seed=seed, **changes) for changes in COMPARISONS[comparison]]


def setting_specs(configs: Sequence[core.SamplingConfig], edits: Sequence[dict[str, object] | str]) -> list[ColumnSpec]:
    """One spec per column: its config with the user's edits (from "Edit this column"; a string: why
    they could not be read), named by its settings (and its seed where the columns' seeds differ); an
    edit core refuses gives the column a message naming the value instead of a config."""
    specs = []
    for i, (cfg, changes) in enumerate(zip(configs, edits)):
        try:
            if isinstance(changes, str):
                raise ValueError(changes)
            specs.append(ColumnSpec(i, cfg.temperature, "", cfg.replace(**changes)))
        except ValueError as e:
            t = cfg.temperature if isinstance(changes, str) else float(changes.get("temperature", cfg.temperature))
            specs.append(ColumnSpec(i, t, "", None, f"Column {i + 1}: {e}."))
    seeded = len({sp.config.seed for sp in specs if sp.config}) > 1
    titles = [settings_label(sp.config, seed=seeded) if sp.config else f"column {sp.index + 1}" for sp in specs]
    return [replace(sp, name=f"{title} (column {sp.index + 1})" if titles.count(title) > 1 else title)
            for sp, title in zip(specs, titles)]


def column_request(cfg: core.SamplingConfig, ids: Sequence[int], dry_breakers: tuple[tuple[int, ...], ...] | None,
                   ) -> dict[str, object]:
    """What a column's chart needs beyond the logits: the prompt as history (penalties, DRY) and XTC's
    draw, the same in every column that shares the seed (next_token_view.step_request at step 0)."""
    return step_request(cfg, ids, (), dry_breakers)


def setting_caption(seed: int | None) -> str:
    """What a ready-made comparison takes from the sidebar, in words."""
    return (f"Each column is a full setting, named above its chart; from the sidebar only the prompt and the "
            f"seed ({seed}). Open \"Edit this column\" to change any sampler, the order or the column's seed.")


def filters_caption(cfg: core.SamplingConfig) -> str:
    """What the sidebar applies to every column, in words."""
    return (f"From the sidebar, for every column: {settings_label(cfg, temperature=False, seed=True)}. "
            "The sidebar's temperature slider is not used here: each column sets its own.")


# --- distributions ----------------------------------------------------------------------------

def token_order(logits: Tensor, n: int) -> list[int]:
    """The n most likely token ids under the raw logits, best first (ties go to the lower id).

    Temperature divides every logit by the same positive number, so this order is the same in
    every column; only the bar heights change.
    """
    return core.sampling.top_ids(logits.float(), max(1, n)).tolist()


def distribution_figure(labels: Sequence[str], probs: Sequence[float], x_max: float, color: str) -> go.Figure:
    """Horizontal bars, most likely token on top; every column shares x_max so heights compare."""
    safe = [plotly_text(label) for label in labels]
    fig = go.Figure(go.Bar(
        x=list(probs), y=safe, orientation="h", marker_color=color,
        text=[fmt_prob(p) for p in probs], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.4%}<extra></extra>",
    ))
    fig.update_layout(
        height=90 + 24 * len(labels), margin=dict(l=0, r=10, t=10, b=30), showlegend=False,
        xaxis=dict(range=[0, x_max], tickformat="~%", title=None, fixedrange=True),   # "~%": tiny ranges still read
        yaxis=dict(autorange="reversed", type="category", title=None, fixedrange=True),
    )
    return fig


def shared_x_max(prob_rows: Sequence[Sequence[float]]) -> float:
    """One x range for every column's chart, with room for the percentage labels."""
    top = max((max(row) for row in prob_rows if len(row)), default=1.0)
    return min(1.0, top) * 1.3 or 1.0


def column_summary(probs: Tensor, shown_ids: Sequence[int]) -> str:
    """Entropy and how much probability the shown tokens hold, for the caption under a chart."""
    bits = float(core.entropy(probs))
    kept = int((probs > 0).sum())
    shown = float(probs[list(shown_ids)].sum())
    return (f"entropy {fmt_bits(bits)} · {plural(kept, 'token')} possible · "
            f"top {len(shown_ids)} hold {fmt_prob(min(shown, 1.0))}")


# --- streamed generation ----------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationRun:
    """Tokens generated so far for each valid column; kept in session state so Stop keeps them.

    Frozen: each step gives a new run (session state values are replaced, never mutated in place).
    """

    key: tuple                                          # settings it was made with; stale when they change
    names: tuple[str, ...]                              # ColumnSpec.name of each generated column
    ids: tuple[tuple[int, ...], ...] = ()
    texts: tuple[tuple[str, ...], ...] = ()
    probs: tuple[tuple[float, ...], ...] = ()
    finished: tuple[str | None, ...] = ()
    uniforms: tuple[float, ...] = ()                        # each step's number in the first column still going
    column_uniforms: tuple[tuple[float, ...], ...] = ()    # each column's own (they differ where seeds do)
    complete: bool = False
    seconds: float = 0.0

    @classmethod
    def start(cls, key: tuple, names: Sequence[str]) -> GenerationRun:
        n = len(names)
        return cls(key, tuple(names), ((),) * n, ((),) * n, ((),) * n, (None,) * n, column_uniforms=((),) * n)

    def add(self, steps: Sequence[core.Step | None], seconds: float = 0.0) -> GenerationRun:
        """This run plus one step of generate_many (None marks a column that already finished)."""
        uniform = next(s.uniform for s in steps if s is not None)

        def grow(old: tuple, value: Callable[[core.Step], object]) -> tuple:
            return tuple(col if st is None else (*col, value(st)) for col, st in zip(old, steps))

        return replace(self, ids=grow(self.ids, lambda st: st.token_id), texts=grow(self.texts, lambda st: st.text),
                       probs=grow(self.probs, lambda st: st.prob),
                       finished=tuple(f if st is None else st.finished for f, st in zip(self.finished, steps)),
                       uniforms=(*self.uniforms, uniform), seconds=seconds or self.seconds,
                       column_uniforms=grow(self.column_uniforms, lambda st: st.uniform))

    def done(self) -> GenerationRun:
        return replace(self, complete=True)

    @property
    def steps(self) -> int:
        return len(self.uniforms)

    @property
    def divergence(self) -> int | None:
        return first_divergence(self.ids)


def first_divergence(token_lists: Sequence[Sequence[int]]) -> int | None:
    """0-based index of the first token where the columns differ (a column that already ended counts
    as different from one that goes on); None when they all agree throughout."""
    if len(token_lists) < 2:
        return None
    longest = max(len(t) for t in token_lists)
    for i in range(longest):
        if len({t[i] if i < len(t) else None for t in token_lists}) > 1:
            return i
    return None


def divergence_caption(run: GenerationRun) -> str:
    """Where the columns part ways, and which columns chose what there (columns may agree in groups)."""
    if len(run.names) < 2 or run.steps == 0:
        return ""
    i = run.divergence
    if i is None:
        return f"All columns chose the same {plural(run.steps, 'token')}."
    groups: dict[tuple[int, str] | None, list[str]] = {}   # (token id, its text) or None once ended
    for name, ids, texts in zip(run.names, run.ids, run.texts):
        groups.setdefault((ids[i], texts[i]) if i < len(ids) else None, []).append(name)
    parts = [f"{' and '.join(names)} had already ended" if chose is None else
             f"{' and '.join(names)} chose “{visible_text(chose[1])}”" for chose, names in groups.items()]
    same = ("" if i == 0 else
            f"; the first {plural(i, 'token')} {'are' if i != 1 else 'is'} the same in every column")
    return f"The columns part ways at token {i + 1} (highlighted){same}: {'; '.join(parts)}."


def prompt_tail(prompt: str, max_chars: int = 60) -> str:
    """The end of the prompt, to show what the continuation follows."""
    return prompt if len(prompt) <= max_chars else "…" + prompt[-max_chars:]


_BOX = ("font-size:0.95rem;line-height:1.55;white-space:pre-wrap;overflow-wrap:anywhere;"
        "border:1px solid rgba(128,128,128,0.35);border-radius:0.5rem;padding:0.6rem 0.75rem;min-height:4rem")
_MARK = "background:#ffd54f;color:#000;border-radius:3px;padding:0 2px;outline:1px solid #e0a800"


def continuation_html(prompt: str, texts: Sequence[str], color: str, highlight: int | None = None,
                      finished: str | None = None, cursor: bool = False) -> str:
    """The prompt's tail in grey, then the generated tokens; every piece of model or user text is escaped."""
    parts = [f'<span style="opacity:0.55">{escape_html(visible_text(prompt_tail(prompt)))}</span>']
    for i, text in enumerate(texts):
        piece = escape_html(visible_text(text))
        if i == highlight:
            piece = (f'<mark data-testid="sbs-diverge" style="{_MARK}" '
                     f'title="the columns diverge here">{piece or "∅"}</mark>')
        parts.append(f'<span style="color:{color}">{piece}</span>' if piece else "")
    if cursor:
        parts.append('<span style="opacity:0.5">▌</span>')
    if finished in STOP_REASONS:
        parts.append(f' <span style="opacity:0.6;font-size:0.8rem">[{escape_html(STOP_REASONS[finished])}]</span>')
    return f'<div data-testid="sbs-text" style="{_BOX}">{"".join(parts)}</div>'


def run_status(run: GenerationRun, max_new: int) -> str:
    """Why the run ended, in plain words, then where the columns part ways."""
    if not run.complete:
        head = f"Stopped after {plural(run.steps, 'token')} (Stop button or a change of setting)."
    elif all(f == "eos" for f in run.finished):
        head = f"Every column ended with the model's end-of-text token, after {plural(run.steps, 'step')}."
    else:
        head = f"Generated {plural(run.steps, 'token')} (the limit was {max_new}) in {run.seconds:.1f} s."
    return f"{head} {divergence_caption(run)}".strip()


def shared_uniforms(run: GenerationRun) -> bool:
    """Whether every column drew with the same number at each step (one seed: common random numbers)."""
    return all(us == run.uniforms[:len(us)] for us in run.column_uniforms)


def steps_table(run: GenerationRun) -> pd.DataFrame:
    """Step by step: the shared random number and what each column drew with it (each column's own
    number in its cells where the columns' seeds differ)."""
    data: dict[str, list] = {"step": list(range(1, run.steps + 1))}
    shared = shared_uniforms(run)
    if shared:
        data[RANDOM_COLUMN] = [round(u, 4) for u in run.uniforms]
    for name, texts, probs, us in zip(run.names, run.texts, run.probs, run.column_uniforms):
        cells = [f"{show_token(t)}  ({fmt_prob(p)})" + ("" if shared else f"  u = {u:.4f}")
                 for t, p, u in zip(texts, probs, us)]
        data[name] = cells + ["(ended)"] * (run.steps - len(cells))
    return pd.DataFrame(data)


# --- the book's experiment: 1,000 draws --------------------------------------------------------

def draw_counts(prob_rows: Sequence[Tensor], seed: int | None, n: int = N_DRAWS,
                seeds: Sequence[int | None] | None = None) -> list[Tensor]:
    """n draws from each distribution, the n uniforms drawn from its seed (`seeds`, one per row; default
    `seed` for all): rows with one seed share the same numbers (common random numbers again). Returns
    per-row bincounts over the vocabulary."""
    rows = [seed if r is None else r for r in (seeds or [seed] * len(prob_rows))]
    uniforms = {r: core.sampling.draw_uniform(core.make_generator(r), n) for r in set(rows)}   # None: one random seed
    return [torch.bincount(core.sample(p, uniform=uniforms[r]), minlength=p.shape[-1]) for p, r in zip(prob_rows, rows)]


def counts_table(counts: Sequence[Tensor], names: Sequence[str], logits: Tensor,
                 token_text: Callable[[int], str], max_rows: int = 10) -> pd.DataFrame:
    """Rows: tokens drawn at least once, in the model's raw ranking (at most max_rows), then one row
    for every other token; so each column sums to the number of draws."""
    stacked = torch.stack(list(counts))                                  # (columns, V)
    drawn = stacked.sum(dim=0) > 0
    order = torch.sort(logits.float(), descending=True, stable=True).indices
    rows = [int(i) for i in order[drawn[order]][:max_rows]]
    ranks = core.sampling.rank_of(logits.float(), torch.tensor(rows, dtype=torch.long)).tolist() if rows else []
    table = pd.DataFrame({"token": token_labels(rows, token_text), "raw rank": ranks})
    for name, col in zip(names, counts):
        shown = [int(col[i]) for i in rows]
        table[name] = shown
    other = {"token": "(all other tokens)", "raw rank": ""}
    other.update({name: int(col.sum()) - int(table[name].sum()) for name, col in zip(names, counts)})
    table = pd.concat([table, pd.DataFrame([other])], ignore_index=True)
    # Text, so the last row's rank is blank rather than "None".
    table["raw rank"] = table["raw rank"].astype(str)
    return table


def distinct_caption(counts: Sequence[Tensor], names: Sequence[str]) -> str:
    """How many different tokens each column produced in its draws."""
    return "Different tokens drawn: " + " · ".join(
        f"{name} → {int((c > 0).sum()):,}" for name, c in zip(names, counts))


def counts_figure(table: pd.DataFrame, names: Sequence[str], colors: Sequence[str]) -> go.Figure:
    """Grouped bars: one group per token row, one bar per column."""
    labels = [plotly_text(t) for t in table["token"]]
    fig = go.Figure([go.Bar(name=plotly_text(name), x=labels, y=table[name].tolist(), marker_color=color,
                            hovertemplate="%{x}: %{y} draws<extra>" + plotly_text(name) + "</extra>")
                     for name, color in zip(names, colors)])
    fig.update_layout(barmode="group", height=360, margin=dict(l=0, r=0, t=30, b=0),
                      legend=dict(orientation="h", y=1.12, x=0), yaxis_title=f"draws out of {N_DRAWS:,}",
                      xaxis=dict(type="category", fixedrange=True), yaxis=dict(fixedrange=True))
    return fig
