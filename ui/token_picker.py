"""Generated text whose tokens can be clicked or tapped, and a "Copy text" button (a components v2 element).

st.html cannot send a click back to Python; a bidirectional component can. Model text is untrusted: the
script builds every token with textContent (never innerHTML), so no piece of it is parsed as HTML. The
data comes from generate_view.picker_data (pure, tested without a browser).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import streamlit as st

from ui.generate_view import TOKEN_CSS

_JS = """
export default function(component) {
  const { data, setTriggerValue, parentElement } = component;
  let root = parentElement.querySelector('.sl-root');
  if (!root) {
    root = document.createElement('div');
    root.className = 'sl-root';
    parentElement.appendChild(root);
  }
  const box = document.createElement('div');
  box.className = 'sl-gen';
  box.setAttribute('aria-label', data.label);
  const prompt = document.createElement('span');
  prompt.className = 'sl-prompt';
  prompt.textContent = data.prompt;
  box.appendChild(prompt);
  for (const t of data.tokens) {
    const s = document.createElement('span');
    s.className = 'sl-tok' + (t.end ? ' sl-end' : '') + (t.i === data.selected ? ' sl-sel' : '')
      + (t.i === data.split ? ' sl-split' : '');
    s.textContent = t.t;
    s.title = t.tip;
    s.dataset.step = String(t.i + 1);
    s.style.background = t.bg;
    s.style.color = t.fg;
    s.style.textDecorationStyle = t.u;
    s.style.textDecorationColor = t.fg;
    s.tabIndex = 0;
    s.setAttribute('role', 'button');
    const pick = () => setTriggerValue('pick', t.i);
    s.addEventListener('click', pick);
    s.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(); }
    });
    box.appendChild(s);
  }
  const bar = document.createElement('div');
  bar.className = 'sl-bar-row';
  const copy = document.createElement('button');
  copy.className = 'sl-copy';
  copy.type = 'button';
  copy.textContent = 'Copy text';
  const said = document.createElement('span');
  said.className = 'sl-copied';
  said.setAttribute('role', 'status');
  copy.addEventListener('click', async () => {
    let ok = false;
    try { await navigator.clipboard.writeText(data.copy); ok = true; } catch (e) {
      // http:// on another host is not a secure context: the old way still copies there
      const area = document.createElement('textarea');
      area.value = data.copy;
      root.appendChild(area);
      area.select();
      try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
      area.remove();
    }
    said.textContent = ok ? 'Copied.' : 'Copying is blocked here: select the text instead.';
  });
  const hint = document.createElement('span');
  hint.className = 'sl-hint';
  hint.textContent = data.hint;
  bar.append(copy, said, hint);
  root.replaceChildren(box, bar);
}
"""

_CSS = TOKEN_CSS + """
.sl-tok{cursor:pointer}
.sl-tok:focus-visible{outline:3px solid #e69f00;outline-offset:1px}
.sl-sel{outline:3px solid #e69f00 !important;outline-offset:1px;box-shadow:0 0 0 5px rgba(230,159,0,.35)}
.sl-split{box-shadow:inset 0 -4px 0 #cc79a7}
.sl-gen{color:var(--st-text-color);font-size:1rem}
.sl-bar-row{display:flex;flex-wrap:wrap;align-items:center;gap:.4rem .8rem;margin-top:.4rem;
 font-family:var(--st-font, sans-serif);font-size:.85rem;color:var(--st-text-color)}
.sl-copy{font:inherit;padding:.3rem .75rem;border-radius:.5rem;border:1px solid rgba(128,128,128,.5);
 background:var(--st-secondary-background-color);color:inherit;cursor:pointer}
.sl-copy:hover{border-color:var(--st-primary-color)}
.sl-hint{opacity:.75}
"""

_token_picker = st.components.v2.component("sampling_lab.token_picker", js=_JS, css=_CSS)


def token_picker(data: Mapping, key: str, on_pick: Callable[[], None]) -> None:
    """Draw the text; a click or tap calls on_pick before the rerun, with st.session_state[key]["pick"] set
    to the token's index (a trigger: it is None again on the next run)."""
    _token_picker(data=dict(data), key=key, on_pick_change=on_pick)
