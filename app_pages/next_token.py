"""Next token: what the model is about to say, and how the sampling settings reshape it."""
import functools

import streamlit as st

from ui import bridge, link, presenter
from ui import next_token_view as view
from ui.controls import (LOAD_ERRORS, bias_problem, current_settings, prompt_mode, require_model, require_prompt_ids,
                         settings, template_expander)
from ui.format import fmt_prob, plain_text_for_markdown, prompt_display, show_token, with_prob_text

PICK_OPTIONS = 50   # the selectbox offers this many candidates, most likely first


def _act(kind: str) -> None:
    """Sample / Append callback: reads the sidebar and the continuation as they are now, so a click that
    arrives together with a sidebar edit acts on the new settings, not on the previous run's."""
    s = current_settings()
    if s.model is None or not s.prompt.strip():
        return   # the page run that follows says why
    try:
        lm = bridge.get_model(s.model)
    except LOAD_ERRORS:
        return   # require_model names the problem on the page run that follows
    if bias_problem(s.sampling, lm.tokenizer.vocab_size):
        return   # likewise
    ids = bridge.encode_prompt(s.model, s.prompt, prompt_mode(s, lm))
    a = view.current_analysis(st.session_state, (s.model, s.prompt, s.mode), ids,
                              functools.partial(bridge.prompt_logits, s.model), s.sampling,
                              bridge.dry_breakers_for(s.model, s.sampling))
    if kind == "sample":
        view.on_sample(st.session_state, a, lm.tokenizer)
    elif kind == "top":
        view.on_choose(st.session_state, a, lm.tokenizer, token_id=int(a.top(1)[0]))
    else:
        view.on_choose(st.session_state, a, lm.tokenizer, widget_key="nt_pick")


st.title("Next token")
st.caption("What the model predicts right after your text, and how temperature, top-k, top-p and min-p "
           "reshape it. Append tokens one at a time to walk through a continuation.")

s = settings()
lm = require_model(s)
prompt_ids = require_prompt_ids(s, lm)
tok = lm.tokenizer
state = st.session_state
context = (s.model, s.prompt, s.mode)
link.replay_pending(state, context, prompt_ids, lm, s)   # a shared link's appended tokens, once
# Cached on (model, ids): a slider move redraws from these logits without running the model.
a = view.current_analysis(state, context, prompt_ids, functools.partial(bridge.prompt_logits, s.model),
                          s.sampling, bridge.dry_breakers_for(s.model, s.sampling))
appended = view.appended_ids(state)
ids = prompt_ids + tuple(appended)

st.html(view.text_so_far_html(prompt_display(s.prompt, prompt_mode(s, lm)), view.text_pieces(tok, appended)))
template_expander(lm, prompt_ids, prompt_mode(s, lm))
if len(ids) > lm.context_length:
    st.caption(f"{len(ids):,} tokens: the model reads only the last {lm.context_length:,}.")

if (aside := view.set_aside(state)) is not None:
    with st.container(border=True):
        st.markdown(plain_text_for_markdown(aside.describe(context)))
        c1, c2, c3 = st.columns(3)
        if aside.context[0] == s.model:
            c1.button("Append them to this prompt", icon=":material/redo:", key="nt_carry",
                      on_click=view.carry_over, args=(state,))
            c2.button("Back to the earlier prompt", icon=":material/undo:", key="nt_back_to_prompt",
                      on_click=view.restore_context, args=(state,),
                      help="Put the earlier prompt back in the sidebar; its tokens come back with it.")
        else:
            c1.caption("Choose that model again to get them back.")
        c3.button("Leave them aside", key="nt_dismiss", on_click=view.dismiss_set_aside, args=(state,))

# Buttons change the continuation, so they rerun the whole page (outside the fragment below).
c_sample, c_top, c_pick, c_append, c_undo, c_reset = st.columns([1.3, 1.3, 3, 1, 1, 1], vertical_alignment="bottom")
c_sample.button("Sample", icon=":material/casino:", key="nt_sample", type="primary", width="stretch",
                on_click=_act, args=("sample",), shortcut=presenter.KEYS["sample"],
                help="Draw the next token from the distribution after your settings. Seeded with the "
                     "sidebar seed + the number of tokens appended, so the same settings give the same text.")
c_top.button("Top choice", icon=":material/trophy:", key="nt_top", width="stretch", on_click=_act, args=("top",),
             shortcut=presenter.KEYS["top"], help="Append the model's most likely token (what greedy decoding takes).")
top = a.top(min(PICK_OPTIONS, lm.engine.top_n or PICK_OPTIONS)).tolist()
# Labels from the raw distribution only, so they stay put while the sampling sliders move; a top-N
# engine's own probabilities (its reported share times the mass it reported), never rescaled to 100%.
known = 1.0 - view.unreported_mass(a) if lm.engine.top_n else 1.0
c_pick.selectbox(f"…or choose one of the top {len(top)} (raw probability)", top, key="nt_pick",
                 format_func=lambda i: f"{show_token(tok.token_text(i))}   ({fmt_prob(float(a.raw_probs[i]) * known)})")
c_append.button("Append", icon=":material/add:", key="nt_append", width="stretch", on_click=_act,
                args=("choose",))
picks = view.steps(state)
c_undo.button("Undo", icon=":material/undo:", key="nt_undo", width="stretch", disabled=not picks,
              on_click=view.undo, args=(state,), shortcut=presenter.KEYS["undo"])
c_reset.button("Reset", icon=":material/restart_alt:", key="nt_reset", width="stretch", disabled=not picks,
               on_click=view.reset, args=(state,), shortcut=presenter.KEYS["reset"])

if picks and not presenter.on(state):   # presenter mode: the chart comes first
    last = picks[-1]
    icon = ":material/edit:" if last.kind == "chosen" else (":material/trophy:" if last.rank == 1 else ":material/casino:")
    # The message holds model text: escaped so Markdown shows it literally.
    st.info(plain_text_for_markdown(last.message()), icon=icon)
    with st.expander(f"How each of the {len(picks)} appended tokens was chosen"):
        st.dataframe(with_prob_text(view.history_table(picks), ["p (settings then)", "raw p"]), hide_index=True,
                     width="stretch")


@st.fragment
def distribution(a: view.Analysis) -> None:
    """Chart, pipeline and table: the chart's own controls rerun only this fragment."""
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.subheader("What comes next")
        c_n, c_log = st.columns([3, 1], vertical_alignment="bottom")
        n = c_n.slider("Tokens to show", 5, 50, 10, key="nt_top_n")
        log_scale = c_log.toggle("Log scale", key="nt_log_scale", help="Make the tiny probabilities visible.")
        reported = lm.engine.top_n   # None: the whole vocabulary; N: an engine that reports only its top N
        unreported = view.unreported_mass(a) if reported else None
        if reported:
            n = min(n, reported)
            st.info(view.top_n_note(reported, unreported), icon=":material/info:")
        table = view.engine_probabilities(view.distribution_table(a, tok, n), unreported)
        st.plotly_chart(presenter.figure(view.distribution_figure(table, view.rest_of(a, n), a.cfg, log_scale,
                                                         unreported), state),
                        width="stretch", key="nt_chart")
    with right:
        st.subheader("The pipeline, top to bottom")
        st.markdown(view.pipeline_markdown(view.stage_summaries(a)))
        for warning in view.moot_warnings(a):
            st.warning(warning, icon=":material/info:")
        st.markdown(view.summary_markdown(a, unreported))
        st.caption("Mass kept: the probability (after temperature) that the surviving tokens held; raw mass: the "
                   "same tokens under the model's own distribution. Sample renormalises the survivors to 100%. "
                   "Entropy: 0 bits = one possible token; n bits ≈ as unsure as 2ⁿ equally likely tokens. "
                   "Penalties, DRY and logit bias see the prompt and the appended tokens; the table marks the "
                   "tokens they moved (penalty↓, bias↑).")
        if st.toggle("Same settings: transformers vs llama.cpp order", key="nt_compare_orders",
                     help="transformers applies temperature before the filters, llama.cpp after them."):
            st.dataframe(view.order_comparison(a, tok), hide_index=True, width="stretch", height="content")
            st.caption(view.order_note(a))

    st.dataframe(with_prob_text(table, ["raw probability", "filtered probability"]), hide_index=True,
                 width="stretch", key="nt_table",
                 column_order=["rank", "token", "id", "logit", "raw probability", "filtered probability", "status"],
                 column_config={"rank": st.column_config.NumberColumn(width="small"),
                                "id": st.column_config.NumberColumn(width="small"),
                                "logit": st.column_config.NumberColumn(format="%.3f", width="small"),
                                "status": st.column_config.TextColumn(width="medium")})
    d1, d2, _ = st.columns([1, 1, 2])
    d1.download_button(f"These {len(table)} rows (CSV)", view.csv_bytes(table), "next_token_top.csv", "text/csv",
                       icon=":material/download:", key="nt_csv", on_click="ignore")
    # Built only when clicked: the whole vocabulary is ~50k rows.
    d2.download_button(f"All {a.vocab:,} tokens (CSV)", lambda: view.csv_bytes(view.distribution_table(a, tok)),
                       "next_token_all.csv", "text/csv", icon=":material/download:", key="nt_csv_all",
                       on_click="ignore")


if not presenter.guess_round(state, a, tok, (context, len(picks))):   # an open round hides the answer
    distribution(a)


st.subheader("Temperature sweep")
sweep = bridge.temperature_sweep(s.model, ids, s.sampling, view.sweep_temperatures(s.sampling.temperature),
                                 tuple(a.request.items()))
st.plotly_chart(presenter.figure(view.sweep_figure(sweep, s.sampling.temperature), state), width="stretch",
                key="nt_sweep")
st.caption(view.sweep_caption(sweep, s.sampling.temperature))
