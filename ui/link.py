"""The share link inside the app: read a link once when a session starts, keep the address bar in step
with the settings on every run, and offer the link to copy. The parsing itself is ui/share.py."""
from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from urllib.parse import urlencode, urlparse

import streamlit as st

import core

from ui import bridge, share
from ui import generate_view as gv
from ui.controls import Settings
from ui.format import plain_text_for_markdown

APPLIED_KEY = "link_applied"    # session_state: the first run has read the link (later runs only write it)
PENDING_KEY = "link_appended"   # session_state: the link's appended tokens, until the Next-token page replays them
PROBLEM_KEY = "link_problem"    # session_state: what the link asked for that could not be used (plain text)


def apply_once(state: MutableMapping, models: Mapping[str, str]) -> None:
    """On a session's first run, before any widget is drawn: put the link's values into the widgets' keys."""
    if state.get(APPLIED_KEY):
        return
    state[APPLIED_KEY] = True
    params = st.query_params.to_dict()
    if not params:
        return
    restored = share.from_params(params, models)
    state.update(restored.values)
    if restored.appended:
        state[PENDING_KEY] = restored.appended
    if restored.generate:
        gv.request(state, "generate")
    if restored.present:
        state["present"] = True
    state[PROBLEM_KEY] = restored.message()


def sync(state: Mapping, models: Mapping[str, str], page: str) -> dict[str, str]:
    """Write the current state into the address bar (only when it changed: each write is a message to the
    browser). Returns the parameters."""
    params = share.to_params(state, models, page)
    if page == "" and (pending := state.get(PENDING_KEY)):
        params["a"] = share.pack_appended([{"kind": k, "token_id": t} for k, t in pending])
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    return params


def show_problem(state: MutableMapping) -> None:
    """The link's problems, once, at the top of the page it opened."""
    if problem := state.pop(PROBLEM_KEY, None):
        st.warning(plain_text_for_markdown(problem), icon=":material/link_off:")


def copy_link(where, params: Mapping[str, str]) -> None:
    """A "Copy link" popover: the full address in a code block, whose copy button puts it on the clipboard."""
    base = st.context.url or ""
    if base and not urlparse(base).path:
        base += "/"   # the address bar's own form of the first page
    with where.popover("Copy link", icon=":material/link:", width="stretch"):
        st.caption("This link opens the app with this page, model, prompt, settings and seed.")
        st.code(f"{base}?{urlencode(params)}" if params else base, language=None, wrap_lines=True)
        if "p" not in params and "pz" not in params:
            st.caption("The prompt is too long for a link, even compressed: it is left out.")


def replay_pending(state: MutableMapping, context: tuple, prompt_ids: tuple[int, ...], lm: core.LanguageModel,
                   s: Settings) -> None:
    """Next-token page: append the link's tokens (once), or say why some could not be."""
    wanted = state.pop(PENDING_KEY, None)
    if not wanted:
        return
    problem = share.replay_appended(state, wanted, context, prompt_ids,
                                    functools.partial(bridge.prompt_logits, s.model), s.sampling,
                                    bridge.dry_breakers_for(s.model, s.sampling), lm.tokenizer)
    if problem:
        st.warning(problem, icon=":material/link_off:")   # numbers and fixed words only
