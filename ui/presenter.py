"""Presenter mode (large type, no sidebar, high contrast, a colour-blind-safe palette, keyboard keys),
flipping between two sets of settings, the "guess the next token" round, and the page styles that apply
in every mode (phone layout). Keyboard keys are Streamlit's own `st.button(shortcut=...)` (1.67); in the
browser test a key pressed while a slider had the focus did not reach them, so the test blurs first."""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import plotly.graph_objects as go
import streamlit as st

import core
from ui import next_token_view as view
from ui.controls import MORE, current_settings
from ui.format import fmt_prob, plain_text_for_markdown, settings_label, show_token

PRESENT_KEY = "present"       # session_state: presenter mode on
OTHER_KEY = "present_other"   # session_state: the settings F flips to ({widget key: value})
GUESS_KEY = "present_guess"   # session_state: the open guess round: {"at": (context, step), "revealed": bool}
GUESS_PICK_KEY = "present_guess_pick"

# Every sidebar key that is a sampling setting (the model and prompt stay put when settings flip).
SETTING_KEYS = ("temperature", "top_k", "top_p", "min_p", "seed", *MORE, "logit_bias_text", "order_preset",
                "order_custom")
# Okabe & Ito's palette (distinguishable with every common colour-vision deficiency), swapped in for the
# page colours of the charts.
OKABE_ITO = {view.RAW_COLOR: "#E69F00", view.FILTERED_COLOR: "#0072B2", "#d62728": "#D55E00",
             view.REMOVED_COLOR: "#BBBBBB"}
CHART_FONT = 20          # px, presenter mode: every chart label >= 18 px
CHART_HEIGHT = 500       # px at most, presenter mode (the Next-token chart's 10 rows need ~480 for 20 px labels)
KEYS = {"sample": "S", "top": "T", "undo": "U", "reset": "X", "flip": "F", "guess": "G", "reveal": "V",
        "present": "P"}

# The Next-token buttons' labels: where space is short they show their icon and key only.
NT_BUTTON_LABELS = (":is(.st-key-nt_sample, .st-key-nt_top, .st-key-nt_append, .st-key-nt_undo, .st-key-nt_reset) "
                    'button [data-testid="stMarkdownContainer"]')
# Every mode: on a phone the plotly toolbar would sit on the legend (it shows on tap), and wide tables
# scroll inside their own box instead of being cut.
PAGE_CSS = """
[data-testid="stMarkdownContainer"] table { display: block; overflow-x: auto; }
@media (max-width: 640px) {
  .modebar-container { display: none !important; }
  [data-testid="stMainBlockContainer"] { padding-left: .75rem; padding-right: .75rem; }
  [data-testid="stSidebar"] { width: 88vw !important; min-width: 0 !important; }
  /* Next token's buttons: one row of icons (+ key) with the token picker below, not six stacked rows */
  [data-testid="stHorizontalBlock"]:has(> [data-testid="stColumn"] .st-key-nt_sample) {
    flex-direction: row !important; flex-wrap: wrap !important; gap: .5rem !important; }
  [data-testid="stHorizontalBlock"]:has(> [data-testid="stColumn"] .st-key-nt_sample) > [data-testid="stColumn"] {
    flex: 1 1 3rem !important; min-width: 3rem !important; width: auto !important; }
  [data-testid="stHorizontalBlock"]:has(> [data-testid="stColumn"] .st-key-nt_sample)
    > [data-testid="stColumn"]:has(.st-key-nt_pick) { flex-basis: 100% !important; order: 9; }
  NT_BUTTON_LABELS { display: none; }
}
""".replace("NT_BUTTON_LABELS", NT_BUTTON_LABELS)
# Presenter mode: 24 px type; the sidebar, the header, the page's title and captions, its subheadings,
# expanders and the chart's own controls hidden, so the main chart sits above the fold at 1024x768.
PRESENTER_CSS = """
html { font-size: 24px; }
[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stExpandSidebarButton"],
header[data-testid="stHeader"] { display: none !important; }
[data-testid="stMainBlockContainer"] { padding: .6rem 1rem 2rem 1rem; max-width: 100%; }
[data-testid="stMainBlockContainer"] [data-testid="stElementContainer"]:has(h1),
[data-testid="stMainBlockContainer"] [data-testid="stElementContainer"]:has(h3),
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"],
[data-testid="stMainBlockContainer"] [data-testid="stExpander"],
.st-key-nt_top_n, .st-key-nt_log_scale,
.st-key-nt_pick [data-testid="stWidgetLabel"] { display: none !important; }
[data-testid="stMainBlockContainer"] button p { font-size: .8rem; }
[data-testid="stMainBlockContainer"] [data-testid="stVerticalBlock"] { gap: .5rem; }   /* rem = 24 px here */
.modebar-container { display: none !important; }
NT_BUTTON_LABELS { display: none; }   /* icon + key: the labels would be cut */
[data-testid="stApp"] { color: #000; }
@media (prefers-color-scheme: dark) { [data-testid="stApp"] { color: #fff; } }
""".replace("NT_BUTTON_LABELS", NT_BUTTON_LABELS)


def on(state: Mapping) -> bool:
    return bool(state.get(PRESENT_KEY))


def toggle(state: MutableMapping) -> None:
    state[PRESENT_KEY] = not state.get(PRESENT_KEY)


def keep_for_flip(state: MutableMapping) -> None:
    """Callback: remember the current settings as the ones F flips to."""
    state[OTHER_KEY] = {k: state[k] for k in SETTING_KEYS if k in state}


def flip(state: MutableMapping) -> None:
    """Callback: swap the current settings with the remembered ones (callbacks run before the sidebar
    widgets are drawn, so they show the swapped values)."""
    other = state.get(OTHER_KEY)
    if not other:
        return
    state[OTHER_KEY] = {k: state[k] for k in SETTING_KEYS if k in state}
    state.update(other)


def other_label(state: Mapping) -> str | None:
    """The remembered settings in one line, or None."""
    other = state.get(OTHER_KEY)
    if not other:
        return None
    return settings_label(current_settings({**state, **other}).sampling)


def setup(state: MutableMapping) -> None:
    """Every page, after the sidebar: the styles, the sidebar's presenter section, and in presenter mode
    the bar at the top of the page (the way out, the flip, the keys)."""
    # In the sidebar: a style applies wherever it sits, and the page's own elements keep their order.
    # An open guess round hides the token picker too: its labels give the probabilities away.
    guessing = ".st-key-nt_pick { visibility: hidden; }" if state.get(GUESS_KEY) else ""
    st.sidebar.html(f"<style>{PAGE_CSS}{PRESENTER_CSS + guessing if on(state) else ''}</style>")
    sb = st.sidebar
    sb.header("Present")
    sb.button("Presenter mode", icon=":material/co_present:", key="present_on", on_click=toggle, args=(state,),
              shortcut=KEYS["present"] if not on(state) else None, width="stretch",
              help="Large type, no sidebar, keyboard keys. The link ?present=1 opens in it.")
    sb.button("Keep these settings to flip to", key="present_keep", on_click=keep_for_flip, args=(state,),
              width="stretch", help="Then change the settings: in presenter mode F flips between the two sets.")
    if label := other_label(state):
        sb.caption(f"Flips to: {label}")
    if on(state):
        _bar(state)


def _bar(state: MutableMapping) -> None:
    c_out, c_flip, c_guess, c_now = st.columns([1.5, 1.8, 1.9, 2.6], vertical_alignment="center")
    c_out.button("Leave", icon=":material/close:", key="present_off", on_click=toggle, args=(state,),
                 shortcut=KEYS["present"], help="Leave presenter mode")
    c_guess.button("Close guess" if state.get(GUESS_KEY) else "Guess", icon=":material/quiz:", key="present_guess_button",
                   shortcut=KEYS["guess"], on_click=toggle_guess, args=(state,),
                   help="Next-token page: the room picks one of the model's top 5, then reveal.")
    label = other_label(state)
    c_flip.button("Flip settings", icon=":material/swap_horiz:", key="present_flip", on_click=flip,
                  args=(state,), shortcut=KEYS["flip"], disabled=label is None,
                  help=("Flip to: " + label) if label else "First keep a set of settings with the sidebar's "
                       "“Keep these settings to flip to”, then change them.")
    c_now.text(settings_label(current_settings(state).sampling),
               help="Keys: S sample · T top choice · U undo · X reset · G guess (G again closes it) · V reveal · "
                    "F flip settings · P leave presenter mode")


def figure(fig: go.Figure, state: Mapping) -> go.Figure:
    """In presenter mode: labels of CHART_FONT px and the colour-blind-safe palette; otherwise `fig` as is."""
    if not on(state):
        return fig
    fig = go.Figure(fig)   # a copy: the caller's figure may be cached
    # Full contrast: black on the light theme, white on the dark one (Streamlit's chart theme greys labels).
    ink = "#ffffff" if getattr(st.context.theme, "type", None) == "dark" else "#000000"
    big = dict(size=CHART_FONT, color=ink)
    fig.update_layout(font=big, legend=dict(font=big), uniformtext=dict(minsize=CHART_FONT - 2, mode="show"),
                      height=min(fig.layout.height or CHART_HEIGHT, CHART_HEIGHT))
    fig.update_xaxes(tickfont=big, title_font=big)
    fig.update_yaxes(tickfont=big, title_font=big)
    for trace in fig.data:
        if getattr(trace, "textfont", None) is not None:
            trace.textfont.size = CHART_FONT - 2
            trace.textfont.color = ink
        marker = getattr(trace, "marker", None)
        if marker is not None and marker.color is not None:
            c = marker.color
            marker.color = [OKABE_ITO.get(x, x) for x in c] if isinstance(c, (list, tuple)) else OKABE_ITO.get(c, c)
        line = getattr(trace, "line", None)
        if line is not None and line.color is not None:
            line.color = OKABE_ITO.get(line.color, line.color)
    for shape in fig.layout.shapes:
        if shape.line.color:
            shape.line.color = OKABE_ITO.get(shape.line.color, shape.line.color)
    return fig


# --- the guess round -----------------------------------------------------------------------------

def toggle_guess(state: MutableMapping) -> None:
    """Callback: open a round (the Next-token page ties it to the step it is drawn at), or close it."""
    state[GUESS_KEY] = None if state.get(GUESS_KEY) else {"at": None, "revealed": False}
    state[GUESS_PICK_KEY] = None


def reveal(state: MutableMapping) -> None:
    if state.get(GUESS_KEY):
        state[GUESS_KEY] = {**state[GUESS_KEY], "revealed": True}


def guess_choices(a: view.Analysis, n: int = 5) -> list[int]:
    """The model's top n (raw order: the round asks what the model thinks, before any setting)."""
    return [int(i) for i in a.top(n).tolist()]


def guess_round(state: MutableMapping, a: view.Analysis, tokenizer: core.Tokenizer, at: tuple) -> bool:
    """Presenter mode, Next-token page: the guess round. True while a round is open (the page then hides
    its chart, which would give the answer away). A round closes by itself once a token is appended."""
    if not on(state):
        return False
    round_ = state.get(GUESS_KEY)
    if round_ and round_["at"] is None:
        round_ = state[GUESS_KEY] = {**round_, "at": at}
    if not round_ or round_["at"] != at:
        state[GUESS_KEY] = None   # a token was appended (or the prompt changed) since: that round is over
        return False
    choices = guess_choices(a)
    with st.container(border=True):
        st.markdown("**Guess the next token: which one does the model rate highest?**")
        st.radio("The room's pick", choices, key=GUESS_PICK_KEY, horizontal=True, index=None,
                 format_func=lambda i: plain_text_for_markdown(show_token(tokenizer.token_text(i))),
                 disabled=round_["revealed"])
        st.button("Reveal", icon=":material/visibility:", key="present_reveal", type="primary", on_click=reveal,
                  args=(state,), shortcut=KEYS["reveal"], disabled=round_["revealed"])
        if round_["revealed"]:
            st.text(reveal_text(a, tokenizer, state.get(GUESS_PICK_KEY)))
            table = view.distribution_table(a, tokenizer, len(choices))
            fig = figure(view.distribution_figure(table, view.rest_of(a, len(choices)), a.cfg), state)
            # Rows tall enough for 20 px labels: a squeezed axis drops every other token's name.
            st.plotly_chart(fig.update_layout(height=160 + 50 * (len(choices) + 1)), width="stretch",
                            key="present_guess_chart")
    return True


def reveal_text(a: view.Analysis, tokenizer: core.Tokenizer, pick: int | None) -> str:
    """Plain text: the room's pick and its probabilities, next to the model's favourite."""
    best = guess_choices(a, 1)[0]
    top = f"The model's favourite: {show_token(tokenizer.token_text(best))} ({fmt_prob(float(a.raw_probs[best]))} raw, " \
          f"{fmt_prob(float(a.probs[best]))} after the settings)."
    if pick is None:
        return top
    rank = guess_choices(a).index(pick) + 1 if pick in guess_choices(a) else None
    mine = (f"The room picked {show_token(tokenizer.token_text(pick))}: {fmt_prob(float(a.raw_probs[pick]))} raw, "
            f"{fmt_prob(float(a.probs[pick]))} after the settings" + (f", rank {rank}." if rank else "."))
    return mine + " " + top
