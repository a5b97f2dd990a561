"""The Generate page's logic: a run record, its coloured-token HTML, chart, tables and JSON file format.

No Streamlit import: everything here is a pure function, unit-tested without a browser. Model text is
untrusted, so every token and prompt goes through `escape_html` before it enters HTML.
"""
from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

import core
from core import Candidate, SamplingConfig, Step
from ui import branches
from ui.branches import Branch
from ui.format import busy_note, escape_html, fmt_prob, plural, prompt_display, show_token, visible_text

RUN_FORMAT = "sampling-lab-run"
RUN_VERSION = 1
MAX_FILE_BYTES = 20_000_000     # a 2,000-token run with top-10 lists is about 2 MB
MAX_STEPS = 20_000
MAX_CANDIDATES = 1_000
TOP_N = 10                      # alternatives recorded per step
STATUSES = ("running", "done", "stopped", "interrupted")
COLOUR_BY = {"sampled": "probability after filters (what the sampler drew from)",
             "raw": "the model's raw probability (T = 1, no filters)"}

# Non-colour cue: each probability band has its own underline style (lower bound, name, CSS style).
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.5, "likely (≥ 50%)", "solid"),
    (0.1, "plausible (10–50%)", "dashed"),
    (0.01, "unlikely (1–10%)", "dotted"),
    (0.0, "surprising (< 1%)", "wavy"),
)
LOG_FLOOR = 1e-4                # the colour scale is logarithmic from 0.01% to 100%
COLOURSCALE = "Viridis"         # perceptually uniform and colour-blind safe
PROB_COLOUR, ENTROPY_COLOUR = "#0072B2", "#D55E00"  # Okabe-Ito blue / vermillion


@dataclass(frozen=True)
class Run:
    """One generation: what was asked, with which settings, and every step the model took."""

    model: str                      # the model's name, e.g. "SmolLM2-135M-Instruct"
    model_label: str                # the sidebar's label for it
    prompt: str
    prompt_mode: str                # "raw" or "chat" (the mode actually used)
    sampling: SamplingConfig        # seed included
    max_new_tokens: int
    steps: tuple[Step, ...] = ()
    status: str = "running"         # "running", "done", "stopped" (Stop button), "interrupted" (other rerun),
    #                                 "busy" (core.Busy: the shared model had no room; nothing generated)
    stop_at_eos: bool = True        # False: generation went on past the end-of-text token
    eos_ids: tuple[int, ...] = ()   # the model's end-of-text token ids
    branches: tuple[Branch, ...] = ()  # explored from an alternative token (ui.branches; 0 = this run)
    # How this session came by the run: not saved in the run file, not part of its identity.
    origin: str | None = dataclasses.field(default=None, compare=False)      # the replayed file's name
    origin_id: str | None = dataclasses.field(default=None, compare=False)   # that upload's id: read it once
    asked_mode: str | None = dataclasses.field(default=None, compare=False)  # the sidebar's mode ("chat" runs
    # as "raw" on a model without a template)
    number: int = dataclasses.field(default=0, compare=False)  # this session's runs: the inspector resets per run
    ahead: int = dataclasses.field(default=0, compare=False)   # a "busy" run: requests ahead of it then

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)

    @property
    def finished(self) -> str | None:
        """"eos" or "length" when the model finished, else None."""
        return self.steps[-1].finished if self.steps else None

    def add(self, step: Step) -> Run:
        return dataclasses.replace(self, steps=(*self.steps, step))

    def path(self, b: int) -> tuple[Step, ...]:
        """Branch b's tokens (0 = the original run's steps)."""
        return branches.path(self.steps, self.branches, b)

    def with_branches(self, tree: tuple[Branch, ...]) -> Run:
        return dataclasses.replace(self, branches=tree)

    def with_status(self, status: str) -> Run:
        return dataclasses.replace(self, status=status)

    def busy(self, ahead: int) -> Run:
        """This run, turned away by core.Busy with `ahead` requests ahead of it."""
        return dataclasses.replace(self, status="busy", ahead=ahead)

    @property
    def end_tokens(self) -> list[int]:
        """0-based steps where the model wrote its end-of-text token (several when it went on past it)."""
        return [s.index for s in self.steps if s.token_id in self.eos_ids]


# --- the page's state: one run, replaced (never mutated), and one pending command ---------------

RUN_KEY = "gen_run"          # session_state: the Run shown (generated here or replayed)
COMMAND_KEY = "gen_command"  # session_state: "generate" or "stop", set by a button callback


def request(state: MutableMapping, command: str, new_seed: bool = False) -> None:
    """Button callback: ask the next page run to generate (or to record a Stop)."""
    state[COMMAND_KEY] = command
    if new_seed:
        # Callbacks run before the sidebar is drawn, so the Seed widget shows the new value.
        state["seed"] = secrets.randbelow(2**31)


def take_command(state: MutableMapping) -> str | None:
    """Once at the top of each page run: settle a run that a rerun cut short ("stopped" after Stop,
    "interrupted" after any other rerun) and return "generate" or "branch" when one was asked for."""
    command = state.get(COMMAND_KEY)
    state[COMMAND_KEY] = None
    run = state.get(RUN_KEY)
    if run is not None and run.status == "running":
        state[RUN_KEY] = run.with_status("stopped" if command == "stop" else "interrupted")
    return command if command in ("generate", "branch") else None


# --- branches and the token inspector: which branch is shown, which token is inspected ----------

BRANCH_KEY = "gen_branch_request"   # session_state: (run number, parent branch, position, token id)


def view_key(run: Run) -> str:
    """The "Show" selectbox: the branch on screen (0 = the original)."""
    return f"gen_view_{run.number}"


def inspect_branch_key(run: Run) -> str:
    """The branch whose token the inspector shows (the one shown or the text it split from)."""
    return f"gen_inspect_branch_{run.number}"


def inspect_key(run: Run, b: int) -> str:
    """The inspector's token selectbox for branch b (a click on a token sets it)."""
    return f"gen_inspect_{run.number}" + (f"_{b}" if b else "")


def take_pick(state: MutableMapping, b: int, key: str) -> None:
    """A token was clicked in branch b's text (the component keyed `key`): inspect it. A callback, so the
    text redraws with the token marked in the same rerun."""
    run = state.get(RUN_KEY)
    picked = (state.get(key) or {}).get("pick")
    if run is None or not isinstance(picked, int) or isinstance(picked, bool) or not 0 <= picked < len(run.path(b)):
        return
    state[inspect_branch_key(run)] = b
    state[inspect_key(run, b)] = picked


def request_branch(state: MutableMapping, run: Run, parent: int, at: int, token_id: int) -> None:
    """Button callback: ask the next page run to branch from (parent, at) with that token."""
    state[COMMAND_KEY] = "branch"
    state[BRANCH_KEY] = (run.number, parent, at, token_id)


def show_branch(state: MutableMapping, run: Run, b: int) -> None:
    """Put branch b on screen, its first own token in the inspector."""
    state[view_key(run)] = b
    state[inspect_branch_key(run)] = b
    state[inspect_key(run, b)] = run.branches[b - 1].at if b else None


def forced(run: Run, b: int, i: int) -> bool:
    """Whether token i of branch b is one a user chose (a branch's first token), not a draw."""
    while b:
        br = run.branches[b - 1]
        if i == br.at:
            return True
        if i > br.at:
            return False
        b = br.parent
    return False


def choice_rank(run: Run, parent: int, at: int, token_id: int, logits: Callable[[], Tensor]) -> int:
    """The chosen token's rank under the raw logits: from the recorded top list, else from `logits()`."""
    rank = branches.rank_among(run.path(parent)[at], token_id)
    return rank if rank is not None else int(core.sampling.rank_of(logits(), torch.tensor(token_id)))


def start_branch(run: Run, parent: int, at: int, token_id: int, rank: int) -> tuple[Run, int, int]:
    """(the run with a new branch taking token_id at (parent, at), its number, tokens left to generate:
    what the run's limit leaves, 0 when the chosen token ends the text)."""
    step = run.path(parent)[at]
    choice = next((c for c in branches.alternatives(step) if c.token_id == token_id), None)
    if choice is None:
        raise ValueError(f"token {token_id} is not among the alternatives recorded at #{at + 1}")
    remaining = run.max_new_tokens - (at + 1)
    finished = "eos" if run.stop_at_eos and token_id in run.eos_ids else ("length" if remaining <= 0 else None)
    tree = branches.add_branch(run.branches, parent, branches.choice_step(step, choice, rank, finished))
    return run.with_branches(tree), len(tree), 0 if finished else remaining


def branch_run(run: Run, b: int) -> Run:
    """Branch b as a run of its own (for the streaming view and the chart)."""
    return dataclasses.replace(run, steps=run.path(b), branches=())


def import_upload(state: MutableMapping, file_id: str, name: str, data: bytes) -> None:
    """Show an uploaded run file (read once per upload, so Generate can replace it); RunFormatError if bad."""
    current = state.get(RUN_KEY)
    if current is not None and current.origin_id == file_id:
        return
    run = parse_run(data)
    state[RUN_KEY] = dataclasses.replace(run, origin=name, origin_id=file_id,
                                         number=(current.number if current else 0) + 1)


# --- numbers and colours -----------------------------------------------------------------------

def band_of(p: float) -> int:
    """Index into BANDS for a probability."""
    return next(i for i, (low, _, _) in enumerate(BANDS) if p >= low)


def scale_position(p: float) -> float:
    """Where p sits on the log colour scale, 0 (≤ 0.01%) to 1 (100%)."""
    if p <= LOG_FLOOR:
        return 0.0
    return min(1.0, (math.log10(p) - math.log10(LOG_FLOOR)) / -math.log10(LOG_FLOOR))


def _text_colour(rgb: str) -> str:
    r, g, b = (float(v) for v in rgb[4:-1].split(","))
    # Relative luminance decides the readable text colour (WCAG weights, gamma ignored).
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 110 else "#fff"


# 256 shades sampled once: sample_colorscale costs ~2.5 ms a call, too slow per token while streaming.
_PALETTE = [(bg, _text_colour(bg)) for bg in sample_colorscale(COLOURSCALE, [i / 255 for i in range(256)])]


def colours_of(p: float) -> tuple[str, str]:
    """(background, text) CSS colours for a probability: viridis background, black or white text."""
    return _PALETTE[round(scale_position(p) * 255)]


def step_prob(step: Step, colour_by: str) -> float:
    return step.raw_prob if colour_by == "raw" else step.prob


# --- HTML ----------------------------------------------------------------------------------------

TOKEN_CSS = """.sl-gen{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1rem;line-height:2.1;
 white-space:pre-wrap;word-break:break-word;padding:.75rem 1rem;border:1px solid rgba(128,128,128,.35);
 border-radius:.5rem}
.sl-prompt{opacity:.6}
.sl-tok{border-radius:.2rem;padding:.1rem 0;text-decoration-line:underline;text-decoration-thickness:2px;
 text-underline-offset:4px;cursor:help}
.sl-tok:hover{outline:2px solid #e69f00;outline-offset:1px}
.sl-end{outline:2px dashed #555;outline-offset:1px}
.sl-cursor{opacity:.6}
.sl-progress{font-size:.85rem;opacity:.75;margin-bottom:.4rem}
.sl-legend{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;font-size:.85rem;margin:.25rem 0 .5rem}
.sl-bar{display:inline-block;width:12rem;height:.8rem;border-radius:.2rem;vertical-align:middle}
.sl-ticks{display:inline-flex;justify-content:space-between;width:12rem;font-size:.7rem;opacity:.8}
.sl-band{text-decoration-line:underline;text-decoration-thickness:2px;text-underline-offset:4px}
"""
_STYLE = f"<style>{TOKEN_CSS}</style>"


def token_display(text: str) -> str:
    """Inline display text of a token; an empty piece (the first bytes of a multi-byte character) shows
    as "∅" so every step has a span."""
    return visible_text(text) or "∅"


def step_title(step: Step, colour_by: str = "sampled", n_alternatives: int = 5) -> str:
    """The plain-text tooltip of a token: its probabilities and the top alternatives (escape before use)."""
    lines = [f"#{step.index + 1} {show_token(step.text)}  {fmt_prob(step.prob)} after filters, "
             f"{fmt_prob(step.raw_prob)} raw (rank {step.rank:,})",
             f"band: {BANDS[band_of(step_prob(step, colour_by))][1]}",
             "Top alternatives (after filters · raw):"]
    for c in step.top_after[:n_alternatives]:
        mark = " ← chosen" if c.token_id == step.token_id else ""
        lines.append(f"  {show_token(c.text)}  {fmt_prob(c.prob)} · {fmt_prob(c.raw_prob)}{mark}")
    return "\n".join(lines)


END_NOTE = "\nThe model's end-of-text token: generation went on past it."


def token_span(step: Step, colour_by: str = "sampled", end: bool = False) -> str:
    """One token; `end` marks the model's end-of-text token (a run that went on past it)."""
    p = step_prob(step, colour_by)
    bg, fg = colours_of(p)
    style = BANDS[band_of(p)][2]
    title = step_title(step, colour_by) + (END_NOTE if end else "")
    return (f'<span class="sl-tok{" sl-end" if end else ""}" data-step="{step.index + 1}" '
            f'style="background:{bg};color:{fg};text-decoration-style:{style};text-decoration-color:{fg}" '
            f'title="{escape_html(title)}">{escape_html(token_display(step.text))}</span>')


def prompt_html(prompt: str, mode: str) -> str:
    return f'<span class="sl-prompt">{escape_html(prompt_display(prompt, mode))}</span>'


def tokens_html(run: Run, colour_by: str = "sampled", streaming: bool = False) -> str:
    """The prompt (dimmed) plus every generated token as a coloured, underlined span with a tooltip."""
    ends = set() if run.stop_at_eos else set(run.eos_ids)   # marked only where generation went on past one
    spans = "".join(token_span(s, colour_by, s.token_id in ends) for s in run.steps)
    cursor = '<span class="sl-cursor">▍</span>' if streaming else ""
    box = f'<div class="sl-gen">{prompt_html(run.prompt, run.prompt_mode)}{spans}{cursor}</div>'
    if streaming:
        box = (f'<div class="sl-progress">Generating… {len(run.steps)} of at most {run.max_new_tokens} tokens '
               f'(press Stop to keep what is there)</div>{box}')
    return _STYLE + box


def picker_data(prompt: str, mode: str, steps: Sequence[Step], colour_by: str = "sampled",
                ends: set[int] | frozenset[int] = frozenset(), selected: int | None = None,
                split: int | None = None) -> dict:
    """What ui.token_picker draws: plain strings only (it sets them as text, never as HTML): the
    prompt, each token's text, colours, underline and tooltip, the text to copy."""
    tokens = []
    for s in steps:
        p = step_prob(s, colour_by)
        bg, fg = colours_of(p)
        end = s.token_id in ends
        tokens.append({"i": s.index, "t": token_display(s.text), "bg": bg, "fg": fg, "u": BANDS[band_of(p)][2],
                       "end": end, "tip": step_title(s, colour_by) + (END_NOTE if end else "")})
    return {"prompt": prompt_display(prompt, mode), "tokens": tokens, "copy": "".join(s.text for s in steps),
            "selected": -1 if selected is None else selected, "split": -1 if split is None else split,
            "label": "Generated text: click or tap a token to inspect it",
            "hint": "Click or tap a token to see what else the model considered."}


def legend_html(colour_by: str = "sampled") -> str:
    """Colour bar (log scale) and the underline style of each band."""
    stops = sample_colorscale(COLOURSCALE, [i / 10 for i in range(11)])
    bar = f'<span class="sl-bar" style="background:linear-gradient(to right,{",".join(stops)})"></span>'
    ticks = "".join(f"<span>{t}</span>" for t in ("0.01%", "0.1%", "1%", "10%", "100%"))
    bands = []
    for low, name, style in BANDS:
        bg, fg = colours_of(max(low, LOG_FLOOR) if low else 0.003)
        bands.append(f'<span class="sl-band" style="background:{bg};color:{fg};text-decoration-style:{style};'
                     f'text-decoration-color:{fg};padding:0 .3rem;border-radius:.2rem">{escape_html(name)}</span>')
    return (f'{_STYLE}<div class="sl-legend"><span>Colour = {escape_html(COLOUR_BY[colour_by])}</span>'
            f'<span style="display:inline-flex;flex-direction:column">{bar}<span class="sl-ticks">{ticks}</span></span>'
            f'</div><div class="sl-legend"><span>Underline = probability band:</span>{"".join(bands)}</div>')


# --- summary, chart, tables ----------------------------------------------------------------------

def status_note(run: Run) -> tuple[str, str]:
    """(kind, message): why the run ended, in plain words; kind is "info", "warning" or "success"."""
    n = len(run.steps)
    tokens = plural(n, "token")
    if run.status == "stopped":
        return "warning", f"Stopped after {tokens}: everything generated so far is kept below."
    if run.status == "interrupted":
        return "warning", (f"Interrupted after {tokens} (a setting or page changed while generating); "
                           "the tokens so far are kept below. Press Generate to run again.")
    if run.status == "running":
        return "info", f"Generating… {tokens} so far."
    if run.status == "busy":
        return "warning", busy_note(run.ahead)
    if run.finished == "eos":
        note = (f"Finished: the model wrote its end-of-text token after {tokens}, which means it considers the "
                "text complete.")
        if run.prompt_mode == "raw":
            note += " Switch on “Continue past the end-of-text token” to see what it writes next."
        return "success", note
    note = f"Finished: reached the limit of {tokens}."
    if ends := run.end_tokens:
        where = ", ".join(f"#{i + 1}" for i in ends[:5]) + ("…" if len(ends) > 5 else "")
        note += (f" The model wrote its end-of-text token at token {where}; generation went on past it "
                 "because “Continue past the end-of-text token” is on.")
    return "success", note


def settings_changes(run: Run, model_label: str, prompt: str, mode: str, cfg: SamplingConfig,
                     max_new_tokens: int, asked_mode: str | None = None, stop_at_eos: bool | None = None) -> list[str]:
    """What differs between a run and the sidebar now, in words (empty when Generate would redo it).

    asked_mode is the sidebar's mode when the run was made; it differs from run.prompt_mode when
    "chat" was asked of a model without a chat template.
    """
    changes = []
    if model_label != run.model_label:
        changes.append("model")
    if prompt != run.prompt:
        changes.append("prompt")
    if mode != (asked_mode or run.asked_mode or run.prompt_mode):
        changes.append("prompt mode")
    for field, name in (("temperature", "temperature"), ("top_k", "top-k"), ("top_p", "top-p"),
                        ("min_p", "min-p"), ("seed", "seed")):
        if getattr(cfg, field) != getattr(run.sampling, field):
            changes.append(name)
    more = [f for f in MORE_FIELDS if getattr(cfg, f) != getattr(run.sampling, f)]
    if [f for f in more if f != "order"]:
        changes.append("more samplers")
    if "order" in more:
        changes.append("order")
    if max_new_tokens != run.max_new_tokens:
        changes.append("max new tokens")
    if stop_at_eos is not None and stop_at_eos != run.stop_at_eos:
        changes.append("continue past the end-of-text token")
    return changes


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def top_prob(step: Step) -> float:
    """The most likely token's probability after filters at this step (what the chosen one is compared with)."""
    return max((c.prob for c in step.top_after), default=step.prob)


def chart_figure(steps: Sequence[Step], smooth: int | None = None) -> go.Figure:
    """Two rows sharing the token axis, readable at 200+ tokens: above, the chosen token's probability
    (dots) against the top token's (a grey step line); below, the entropy as bars. `smooth` adds a
    moving average over that many tokens to each row."""
    x = [s.index + 1 for s in steps]
    chosen, top = [s.prob for s in steps], [top_prob(s) for s in steps]
    ent, raw_ent = [s.entropy for s in steps], [s.raw_entropy for s in steps]
    # Plotly hover text understands a little HTML, so token labels are escaped.
    labels = [escape_html(show_token(s.text)) for s in steps]
    small = len(steps) <= 60
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38])
    fig.add_trace(go.Scatter(x=x, y=top, name="top token's probability", mode="lines", line_shape="hvh",
                             line={"color": "#9a9a9a", "width": 1}, fill="tozeroy", fillcolor="rgba(154,154,154,0.18)",
                             hovertemplate="top token %{y:.1%}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=chosen, name="chosen token's probability (after filters)", mode="markers",
                             marker={"color": PROB_COLOUR, "size": 7 if small else 5,
                                     "symbol": ["circle" if s.rank == 1 else "diamond" for s in steps]},
                             customdata=labels,
                             hovertemplate="#%{x} %{customdata}: %{y:.1%} after filters<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=ent, name="entropy after filters (bits)", marker={"color": ENTROPY_COLOUR},
                         opacity=0.75, hovertemplate="#%{x}: %{y:.2f} bits after filters<extra></extra>"),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=raw_ent, name="raw entropy (bits)", mode="lines",
                             line={"color": "#444", "width": 1, "dash": "dot"},
                             hovertemplate="%{y:.2f} bits raw<extra></extra>"), row=2, col=1)
    if smooth and len(steps) > 1:
        fig.add_trace(go.Scatter(x=x, y=moving_average(chosen, smooth), name=f"chosen, average of {smooth}",
                                 mode="lines", line={"color": PROB_COLOUR, "width": 3},
                                 hovertemplate=f"average of {smooth}: %{{y:.1%}}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=moving_average(ent, smooth), name=f"entropy, average of {smooth}",
                                 mode="lines", line={"color": "#8a2e00", "width": 3},
                                 hovertemplate=f"average of {smooth}: %{{y:.2f}} bits<extra></extra>"), row=2, col=1)
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 60, "b": 10}, hovermode="x unified", bargap=0.15,
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                      title={"text": "Each step: how likely the chosen token was (● top choice, ◆ not), and how "
                                     "uncertain the model was", "font": {"size": 14}, "y": 0.995, "yanchor": "top"})
    # Whole-number ticks: a step is a token, there is no token 1.5.
    fig.update_xaxes(dtick=1 if len(steps) <= 20 else None, tickformat="d")
    fig.update_xaxes(title_text="generated token #", row=2, col=1)
    fig.update_yaxes(title_text="probability", tickformat=".0%", range=[0, 1.04], row=1, col=1)
    fig.update_yaxes(title_text="bits", rangemode="tozero", row=2, col=1)
    return fig


def inspect_label(step: Step) -> str:
    """A plain-text option label for the inspector's selectbox."""
    return f"#{step.index + 1}  {show_token(step.text)}  ({fmt_prob(step.prob)})"


def alternatives_tables(step: Step) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(before, after) filtering: the top alternatives at one step, the chosen token marked.

    The chosen token is appended when it is not among the recorded top alternatives.
    """
    def table(cands: Sequence[Candidate], ranked_by_raw: bool) -> pd.DataFrame:
        rows = [{"rank": i + 1, "token": show_token(c.text), "raw probability": c.raw_prob,
                 "after filters": c.prob, "chosen": "✓" if c.token_id == step.token_id else ""}
                for i, c in enumerate(cands)]
        if all(c.token_id != step.token_id for c in cands):
            rows.append({"rank": step.rank if ranked_by_raw else None, "token": show_token(step.text),
                         "raw probability": step.raw_prob, "after filters": step.prob, "chosen": "✓"})
        return pd.DataFrame(rows, columns=["rank", "token", "raw probability", "after filters", "chosen"])

    return table(step.top_before, True), table(step.top_after, False)


# --- JSON file format ----------------------------------------------------------------------------

# SamplingConfig fields beyond the basic four and the seed: saved under settings["more"] (optional on import,
# so files saved before they existed replay with them off).
MORE_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig)
                    if f.name not in ("temperature", "top_k", "top_p", "min_p", "seed"))


class RunFormatError(ValueError):
    """An imported file is not a valid Sampling Lab run; the message names the bad field."""


def run_to_dict(run: Run) -> dict:
    cfg = run.sampling
    return {
        "format": RUN_FORMAT, "version": RUN_VERSION,
        "model": run.model, "model_label": run.model_label,
        "prompt": run.prompt, "prompt_mode": run.prompt_mode,
        "settings": {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "min_p": cfg.min_p,
                     "seed": cfg.seed, "max_new_tokens": run.max_new_tokens, "stop_at_eos": run.stop_at_eos,
                     "more": {f: getattr(cfg, f) for f in MORE_FIELDS}},
        "eos_ids": list(run.eos_ids),
        "status": run.status, "finished": run.finished, "text": run.text,
        "steps": [dataclasses.asdict(s) for s in run.steps],
        "branches": [{"parent": br.parent, "at": br.at, "steps": [dataclasses.asdict(s) for s in br.steps]}
                     for br in run.branches],
    }


def run_to_json(run: Run) -> str:
    """The run as a JSON document (settings, seed, each step's chosen token and top alternatives)."""
    return json.dumps(run_to_dict(run), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> float:
    raise RunFormatError(f"the file contains {name}, which is not a valid number here")


def _get(obj: Mapping, key: str, where: str) -> object:
    if key not in obj:
        raise RunFormatError(f"{where}: missing field {key!r}")
    return obj[key]


def _int(obj: Mapping, key: str, where: str, low: int | None = 0, optional: bool = False) -> int | None:
    v = _get(obj, key, where)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
        bound = f" >= {low}" if low is not None else ""
        raise RunFormatError(f"{where}.{key} must be an integer{bound}, got {v!r:.60}")
    return v


def _num(obj: Mapping, key: str, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    v = _get(obj, key, where)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low <= v <= high:
        bounds = (f" in [{low:g}, {high:g}]" if math.isfinite(high) else f" >= {low:g}" if math.isfinite(low)
                  else "")
        raise RunFormatError(f"{where}.{key} must be a finite number{bounds}, got {v!r:.60}")
    return float(v)


def _str(obj: Mapping, key: str, where: str, choices: Sequence[str] | None = None) -> str:
    v = _get(obj, key, where)
    if not isinstance(v, str) or (choices is not None and v not in choices):
        want = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
        raise RunFormatError(f"{where}.{key} must be {want}, got {v!r:.60}")
    return v


def _bool(obj: Mapping, key: str, where: str, default: bool) -> bool:
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise RunFormatError(f"{where}.{key} must be true or false, got {v!r:.60}")
    return v


def _dict(v: object, where: str) -> Mapping:
    if not isinstance(v, dict):
        raise RunFormatError(f"{where} must be an object, got {type(v).__name__}")
    return v


def _list(v: object, where: str, limit: int) -> list:
    if not isinstance(v, list):
        raise RunFormatError(f"{where} must be a list, got {type(v).__name__}")
    if len(v) > limit:
        raise RunFormatError(f"{where} has {len(v):,} entries; at most {limit:,} are allowed")
    return v


_PROB_SLACK = 1 + 1e-6    # float32 softmax can round a hair above 1


def _candidate(v: object, where: str) -> Candidate:
    d = _dict(v, where)
    return Candidate(token_id=_int(d, "token_id", where), text=_str(d, "text", where),
                     prob=_num(d, "prob", where, 0, _PROB_SLACK), raw_prob=_num(d, "raw_prob", where, 0, _PROB_SLACK),
                     logit=_num(d, "logit", where))


def _step(v: object, i: int, where: str | None = None) -> Step:
    where = where or f"steps[{i}]"
    d = _dict(v, where)
    index = _int(d, "index", where)
    if index != i:
        raise RunFormatError(f"{where}.index must be {i}, got {index}")
    finished = _get(d, "finished", where)
    if finished not in (None, "eos", "length"):
        raise RunFormatError(f"{where}.finished must be null, 'eos' or 'length', got {finished!r:.60}")
    return Step(
        index=index, token_id=_int(d, "token_id", where), text=_str(d, "text", where),
        prob=_num(d, "prob", where, 0, _PROB_SLACK), raw_prob=_num(d, "raw_prob", where, 0, _PROB_SLACK),
        rank=_int(d, "rank", where, 1), entropy=_num(d, "entropy", where, 0),
        raw_entropy=_num(d, "raw_entropy", where, 0),
        top_before=tuple(_candidate(c, f"{where}.top_before[{j}]")
                         for j, c in enumerate(_list(_get(d, "top_before", where), f"{where}.top_before",
                                                     MAX_CANDIDATES))),
        top_after=tuple(_candidate(c, f"{where}.top_after[{j}]")
                        for j, c in enumerate(_list(_get(d, "top_after", where), f"{where}.top_after",
                                                    MAX_CANDIDATES))),
        uniform=_num(d, "uniform", where, 0, 1), prompt_tokens=_int(d, "prompt_tokens", where),
        truncated=_int(d, "truncated", where), finished=finished)


def parse_run(data: bytes | str) -> Run:
    """Read a run exported by run_to_json; raise RunFormatError with a plain message for anything else."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise RunFormatError(f"the file is {len(data) / 1e6:.1f} MB; runs up to "
                                 f"{MAX_FILE_BYTES / 1e6:.0f} MB can be replayed")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise RunFormatError(f"the file is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RunFormatError(f"the file is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise RunFormatError("the file is not valid JSON: it is nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise RunFormatError(f'this JSON is not a Sampling Lab run (it needs "format": "{RUN_FORMAT}"); '
                             "export one with the Download button on the Generate page")
    version = doc.get("version")
    if version != RUN_VERSION:
        raise RunFormatError(f"run format version {version!r:.20} is not supported (this app reads version "
                             f"{RUN_VERSION})")
    settings = _dict(_get(doc, "settings", "run"), "settings")
    try:
        cfg = SamplingConfig(temperature=_num(settings, "temperature", "settings", 0),
                             top_k=_int(settings, "top_k", "settings", optional=True),
                             top_p=_num(settings, "top_p", "settings", 0, 1),
                             min_p=_num(settings, "min_p", "settings", 0, 1),
                             seed=_int(settings, "seed", "settings", low=None, optional=True))
        more = _dict(settings.get("more", {}), "settings.more")
        unknown = sorted(set(more) - set(MORE_FIELDS))
        if unknown:
            raise RunFormatError(f"settings.more has an unknown field {unknown[0]!r:.40}")
        # JSON has lists where the config has tuples; SamplingConfig validates every value and names it
        cfg = cfg.replace(**{f: tuple(tuple(v) if isinstance(v, list) else v for v in value)
                             if isinstance(value, list) else value for f, value in more.items()})
    except ValueError as e:
        if isinstance(e, RunFormatError):
            raise
        raise RunFormatError(f"settings: {e}") from None
    steps = tuple(_step(s, i) for i, s in enumerate(_list(_get(doc, "steps", "run"), "steps", MAX_STEPS)))
    run = Run(model=_str(doc, "model", "run"), model_label=_str(doc, "model_label", "run"),
              prompt=_str(doc, "prompt", "run"), prompt_mode=_str(doc, "prompt_mode", "run", ("raw", "chat")),
              sampling=cfg, max_new_tokens=_int(settings, "max_new_tokens", "settings", 1), steps=steps,
              status=_str(doc, "status", "run", ("done", "stopped", "interrupted")),
              # optional: files saved before these fields existed stopped at the end token
              stop_at_eos=_bool(settings, "stop_at_eos", "settings", default=True),
              eos_ids=tuple(_int({"id": v}, "id", f"eos_ids[{i}]")
                            for i, v in enumerate(_list(doc.get("eos_ids", []), "eos_ids", 16))))
    text = _get(doc, "text", "run")
    if text != run.text:
        raise RunFormatError("the field 'text' does not match the tokens in 'steps' (was the file edited?)")
    # optional: files saved before branches existed have none
    return run.with_branches(_branches(_list(doc.get("branches", []), "branches", branches.MAX_BRANCHES), steps))


def _branches(items: list, steps: tuple[Step, ...]) -> tuple[Branch, ...]:
    tree = []
    for b, v in enumerate(items):
        where = f"branches[{b}]"
        d = _dict(v, where)
        at = _int(d, "at", where)
        tree.append(Branch(parent=_int(d, "parent", where), at=at, steps=tuple(
            _step(s, at + k, f"{where}.steps[{k}]")
            for k, s in enumerate(_list(_get(d, "steps", where), f"{where}.steps", MAX_STEPS)))))
    try:
        branches.check(steps, tree)
    except ValueError as e:
        raise RunFormatError(str(e)) from None
    return tuple(tree)


def new_run(lm: core.LanguageModel, model_label: str, prompt: str, mode: str, cfg: SamplingConfig,
            max_new_tokens: int, *, asked_mode: str | None = None, stop_at_eos: bool = True,
            previous: Run | None = None) -> Run:
    """An empty run about to be generated (numbered after `previous`, the run it replaces)."""
    return Run(model=lm.name, model_label=model_label, prompt=prompt, prompt_mode=mode, sampling=cfg,
               max_new_tokens=max_new_tokens, asked_mode=asked_mode or mode, stop_at_eos=stop_at_eos,
               eos_ids=tuple(sorted(lm.tokenizer.eos_ids)), number=(previous.number if previous else 0) + 1)
