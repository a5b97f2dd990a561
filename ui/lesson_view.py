"""The "How sampling works" lesson: the book's 9-word toy vocabulary, with no model at all.

Pure functions (no Streamlit import) so the numbers, the table and the figures are unit-testable.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch

import core
from ui.format import fmt_prob

# LLMs-from-scratch ch. 5: the next word after "every effort moves you" in a 9-word vocabulary.
PROMPT = "every effort moves you"
WORDS: tuple[str, ...] = ("closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you")
SCORES: tuple[float, ...] = (4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79)
N_DRAWS = 1000
DEFAULT_SEED = 123

# Bars run from the highest score to the lowest, so "top-k 3" is simply the top three bars.
ORDER: tuple[int, ...] = tuple(sorted(range(len(WORDS)), key=lambda i: -SCORES[i]))

KEPT_COLOR = "#3b5bdb"      # the app's primary colour
DRAWS_COLOR = "#f08c00"
CUT_COLOR = "#adb5bd"


@dataclass(frozen=True)
class LessonResult:
    cfg: core.SamplingConfig
    probs: torch.Tensor          # (9,) float32, vocabulary order; what the sampler used
    counts: torch.Tensor         # (9,) int64, how often each word came up in N_DRAWS draws


def lesson_config(temperature: float, top_k: int, seed: int = DEFAULT_SEED) -> core.SamplingConfig:
    """The lesson's settings; top-k 9 (every word) means the filter is off."""
    return core.SamplingConfig(temperature=float(temperature),
                               top_k=None if top_k >= len(WORDS) else int(top_k), seed=int(seed))


def run_lesson(cfg: core.SamplingConfig, n_draws: int = N_DRAWS) -> LessonResult:
    """Probabilities of the toy scores under cfg, and n_draws samples from exactly those probabilities."""
    logits = torch.tensor(SCORES)
    probs = core.probabilities(logits, cfg)
    generator = core.make_generator(cfg.seed)
    # One batched call: n_draws identical rows, one uniform each, from the request's own generator.
    draws = core.sample(probs.expand(n_draws, -1), generator=generator)
    counts = torch.bincount(draws, minlength=len(WORDS))
    return LessonResult(cfg=cfg, probs=probs, counts=counts)


def probability_label(position: int, p: float, cfg: core.SamplingConfig) -> str:
    """The bar label of the word at `position` in ORDER (0 = best score): its probability, or why it is 0."""
    if p > 0:
        return fmt_prob(p)
    if cfg.top_k is not None and position >= cfg.top_k:
        return "cut by top-k"
    return "0% at T = 0" if cfg.greedy else fmt_prob(p)


def numbers_table(result: LessonResult) -> pd.DataFrame:
    """One row per word, highest score first: word, score, probability %, draws out of N."""
    n = int(result.counts.sum())
    return pd.DataFrame({
        "word": [WORDS[i] for i in ORDER],
        "score": [SCORES[i] for i in ORDER],
        "probability": [fmt_prob(float(result.probs[i])) for i in ORDER],
        f"draws out of {n:,}": [int(result.counts[i]) for i in ORDER],
    })


def _bar_figure(values: list[float], labels: list[str], colors: list[str], x_title: str,
                x_max: float, hover: str) -> go.Figure:
    # Horizontal bars: the words stay readable on a projector however narrow the column is.
    words = [WORDS[i] for i in ORDER]
    fig = go.Figure(go.Bar(x=values, y=words, orientation="h", text=labels, textposition="outside",
                           constraintext="none", cliponaxis=False, marker_color=colors,
                           textfont=dict(size=18), hovertemplate=hover + "<extra></extra>"))
    fig.update_layout(
        height=440, margin=dict(l=10, r=30, t=10, b=10), font=dict(size=16),
        plot_bgcolor="white", showlegend=False, bargap=0.22,
        # A fixed axis, so moving a slider visibly grows or shrinks the bars instead of rescaling.
        xaxis=dict(title=x_title, range=[0, x_max * 1.15], gridcolor="#e9ecef", fixedrange=True),
        yaxis=dict(autorange="reversed", tickfont=dict(size=20), fixedrange=True, ticksuffix="  "),
    )
    return fig


def probability_figure(result: LessonResult) -> go.Figure:
    """Bars of each word's probability in %, on a fixed 0-100 % axis; words cut by top-k are grey."""
    probs = [float(result.probs[i]) for i in ORDER]
    colors = [KEPT_COLOR if p > 0 else CUT_COLOR for p in probs]
    labels = [probability_label(pos, p, result.cfg) for pos, p in enumerate(probs)]
    return _bar_figure([100 * p for p in probs], labels, colors,
                       "probability (%)", 100, "%{y}: %{x:.2f}%")


def draws_figure(result: LessonResult) -> go.Figure:
    """How many of the draws picked each word, on a fixed 0..N axis."""
    n = int(result.counts.sum())
    counts = [int(result.counts[i]) for i in ORDER]
    colors = [DRAWS_COLOR if c > 0 else CUT_COLOR for c in counts]
    return _bar_figure(counts, [f"{c:,}" for c in counts], colors, f"times picked (out of {n:,})", n,
                       "%{y}: %{x} times")


def temperature_note(temperature: float) -> str:
    """One plain sentence about what this temperature does."""
    top = WORDS[ORDER[0]]
    if temperature == 0:
        return f"Temperature 0: no dice roll at all. The top word, “{top}”, is picked every time."
    if temperature < 1:
        return (f"Temperature {temperature:g} (below 1): scores are pulled apart, "
                f"so the favourite, “{top}”, gets even more likely.")
    if temperature == 1:
        return "Temperature 1: the model's own probabilities, unchanged."
    return (f"Temperature {temperature:g} (above 1): scores are squeezed together, "
            "so unlikely words (even “pizza”) get a real chance.")


def top_k_note(top_k: int, temperature: float = 1.0) -> str:
    """One plain sentence about what this top-k does (at this temperature: T = 0 leaves one word anyway)."""
    top = WORDS[ORDER[0]]
    if top_k >= len(WORDS):
        if temperature == 0:
            return (f"Top-k {len(WORDS)}: top-k is off, but temperature 0 already leaves only “{top}”: "
                    "the other words get 0%.")
        return f"Top-k {len(WORDS)}: all {len(WORDS)} words stay in the running (top-k is off)."
    kept = ", ".join(f"“{WORDS[i]}”" for i in ORDER[:top_k])
    if top_k == 1:
        return f"Top-k 1: only {kept} is left, so it wins every time, whatever the temperature."
    if temperature == 0:
        return (f"Top-k {top_k}: only {kept} can be picked, and temperature 0 then takes “{top}” every time; "
                "the other words are cut to 0%.")
    return f"Top-k {top_k}: only {kept} can be picked; the other words are cut to 0%."
