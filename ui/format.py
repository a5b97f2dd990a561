"""Readable, safe display of untrusted token text (no Streamlit import: pure string helpers)."""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence

_VISIBLE = {"\n": "↵", "\r": "⏎", "\t": "⇥"}


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
