"""One helper per concern for everything the pages show: probabilities, entropies, counts, tokens,
model text and sampling settings (no Streamlit import: pure functions, tested directly).
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import pandas as pd

import core

_VISIBLE = {"\n": "↵", "\r": "⏎", "\t": "⇥"}


# --- numbers ---------------------------------------------------------------------------------------

def fmt_prob(p: float) -> str:
    """A probability as a percentage, the same everywhere: "31.0%", "0.031%", "<0.001%".

    A token still in play never reads "0%", and only a probability of (float32) 1 reads "100%".
    """
    if not p > 0:   # 0, negative rounding hairs and NaN
        return "0%"
    if p >= 0.999995:
        return "100%"
    pct = p * 100
    if pct >= 99.95:
        return ">99.9%"
    if pct >= 0.1:
        return f"{pct:.1f}%"
    if pct >= 0.001:
        return f"{pct:#.2g}%"   # "#": 0.030%, not 0.03% beside 0.031%
    return "<0.001%"


def fmt_bits(bits: float) -> str:
    """An entropy in bits; never "-0.00" (float rounding makes a one-token distribution a hair negative)."""
    return f"{max(0.0, bits) if math.isfinite(bits) else bits:.2f} bits"


def plural(n: int, word: str, words: str | None = None) -> str:
    """ "1 token", "2 tokens", "1,000 draws"."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def busy_note(ahead: int) -> str:
    """What a page says when core.Busy turned its generation away (the shared model is full)."""
    return (f"The model is busy with other people's generations right now ({plural(ahead, 'request')} ahead of "
            "you), so nothing was generated. Press Generate again in a moment.")


# --- settings --------------------------------------------------------------------------------------

def settings_label(cfg: core.SamplingConfig, *, temperature: bool = True, seed: bool = False) -> str:
    """The active settings in one line, e.g. "T = 0.7 · top-p 0.9 · seed 5"; "no filters" when all are off."""
    parts = []
    if temperature:
        parts.append("T = 0 (greedy)" if cfg.greedy else f"T = {cfg.temperature:g}")
    filters = []
    if cfg.top_k:
        filters.append(f"top-k {cfg.top_k}")
    if cfg.top_p < 1:
        filters.append(f"top-p {cfg.top_p:g}")
    if cfg.min_p > 0:
        filters.append(f"min-p {cfg.min_p:g}")
    filters += more_samplers_parts(cfg)
    parts += filters or ["no filters"]
    if cfg.order != "transformers":
        parts.append(order_label(cfg.order))
    if seed:
        parts.append(f"seed {cfg.seed}")
    return " · ".join(parts)


def more_samplers_parts(cfg: core.SamplingConfig) -> list[str]:
    """The samplers beyond the basic four that are on, each in a few words ("rep 1.2", "DRY ×0.8")."""
    parts = []
    if cfg.repetition_penalty != 1:
        parts.append(f"rep {cfg.repetition_penalty:g}")
    if cfg.presence_penalty:
        parts.append(f"presence {cfg.presence_penalty:g}")
    if cfg.frequency_penalty:
        parts.append(f"frequency {cfg.frequency_penalty:g}")
    if cfg.stage_active("penalties") and cfg.penalty_last_n > 0:
        parts.append(f"penalties see the last {cfg.penalty_last_n}")
    if cfg.logit_bias:
        parts.append(f"bias on {plural(len(cfg.logit_bias), 'token')}")
    if cfg.typical_p < 1:
        parts.append(f"typical-p {cfg.typical_p:g}")
    if cfg.top_n_sigma > 0:
        parts.append(f"top-nσ {cfg.top_n_sigma:g}")
    if cfg.xtc_probability > 0:
        parts.append(f"XTC {cfg.xtc_threshold:g} at {cfg.xtc_probability:g}")
    if cfg.dry_multiplier:
        parts.append(f"DRY ×{cfg.dry_multiplier:g}")
    return parts


def order_label(order: str | tuple[str, ...]) -> str:
    """ "llama.cpp order", or a custom order written out: "order: top-k → temperature"."""
    if isinstance(order, str):
        return f"{order} order"
    return "order: " + " → ".join(order) if order else "order: no stages"


# --- tokens and model text (untrusted) -------------------------------------------------------------

def show_token(text: str) -> str:
    """A token as a readable label: "␣" marks a leading space, "↵" a newline, control chars as \\xNN.

    The result is plain text; escape it before it goes into HTML.
    """
    out = []
    for i, ch in enumerate(text):
        if ch == " " and (i == 0 or text[:i].strip(" ") == ""):
            out.append("␣")
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def visible_text(text: str) -> str:
    """Running model text made visible: "↵" before each line break, "⏎" for a carriage return, other
    control characters as \\xNN (tabs stay). Plain text: escape it before it goes into HTML."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵\n")
        elif ch == "\r":
            out.append("⏎")
        elif ch != "\t" and (ord(ch) < 32 or ord(ch) == 127):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def prompt_display(prompt: str, mode: str) -> str:
    """The prompt as every page shows it: raw text as typed; chat as a "User: … / Assistant:" exchange
    (the exact template text the model reads is shown on demand, not here)."""
    if mode == "chat":
        return f"User: {prompt}\nAssistant: "
    return prompt


def escape_html(text: str) -> str:
    """Escape for HTML text and attributes (quotes included)."""
    return html.escape(text, quote=True)


def plain_text_for_markdown(text: str) -> str:
    """Text that Streamlit's Markdown renders literally: no links, images, HTML or emphasis."""
    specials = "\\`*_{}[]()#+-.!|<>~$&:"
    return "".join("\\" + ch if ch in specials else ch for ch in text)


def plotly_text(text: str) -> str:
    """Escape for Plotly's pseudo-HTML labels: it reads <b>, <a href>, &amp; &lt; &gt;, but shows &quot; as is."""
    return html.escape(text, quote=False)


def token_labels(token_ids: Sequence[int], token_text: Callable[[int], str]) -> list[str]:
    """Readable, unique labels: a label shared by two ids gets " #id" (a chart axis would merge them)."""
    labels = [show_token(token_text(int(i))) for i in token_ids]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [f"{label} #{int(i)}" if seen[label] > 1 else label for label, i in zip(labels, token_ids)]


def with_prob_text(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of a table whose probability columns read as fmt_prob text, as the charts write them
    (Streamlit's own "percent" format shows "5%", "2.5%" and "25.89%" side by side)."""
    return table.assign(**{c: [fmt_prob(float(v)) for v in table[c]] for c in columns})
