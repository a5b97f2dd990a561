"""Compare settings: one prompt, one seed, 2-4 columns (temperatures, or full settings from a ready-made
comparison, each editable); charts, live text and 1,000 draws."""
from __future__ import annotations

import time

import streamlit as st
import torch

import core
from ui import bridge
from ui import side_by_side_view as view
from ui.controls import (chat_temperature_hint, continue_past_end, more_samplers, order_widgets, prompt_mode,
                         require_model, require_prompt_ids, sampler_widgets, settings, template_expander)
from ui.format import busy_note, plain_text_for_markdown, prompt_display

s = settings()
lm = require_model(s)
ids = require_prompt_ids(s, lm)

st.title("Compare settings")
comparison = st.selectbox("Compare", [view.TEMPERATURES, *view.COMPARISONS], key="sbs_comparison")
temperatures = comparison == view.TEMPERATURES
st.caption(view.filters_caption(s.sampling) if temperatures else view.setting_caption(s.sampling.seed))

left, right = st.columns([1, 2])
n_cols = left.radio("Columns", [2, 3, 4], index=1, horizontal=True, key="sbs_columns") if temperatures else 2
top_n = right.slider("Tokens in each chart", 3, 30, 10, key="sbs_top_n")


def _edits(col, i: int, cfg: core.SamplingConfig) -> dict[str, object] | str:
    """The "Edit this column" expander: every sampler, the order and the seed, the column's values as
    defaults, keyed by comparison and column; a string says what could not be read."""
    key = f"sbs_edit_{list(view.COMPARISONS).index(comparison)}_{i}"
    with col.expander("Edit this column"):
        seed = st.number_input("Seed (empty = the sidebar's)", 0, 2**31 - 1, None, key=f"{key}_seed",
                               placeholder=f"{s.sampling.seed} (sidebar)",
                               help="Columns with one seed draw the same random numbers (common random numbers).")
        basic = {"temperature": st.number_input("Temperature", 0.0, None, cfg.temperature, 0.1, "%g", key=f"{key}_t"),
                 "top_k": int(st.number_input("Top-k (0 = off)", 0, None, cfg.top_k or 0, key=f"{key}_k")) or None,
                 "top_p": st.slider("Top-p", 0.01, 1.0, cfg.top_p, 0.01, key=f"{key}_p"),
                 "min_p": st.slider("Min-p", 0.0, 0.99, cfg.min_p, 0.01, key=f"{key}_m"),
                 **({"seed": int(seed)} if seed is not None else {})}
        st.caption("More samplers")
        sampler_widgets(f"{key}_", cfg)
        order_widgets(st.container(), f"{key}_", cfg.order)
    try:
        return {**basic, **more_samplers(st.session_state, f"{key}_")}
    except ValueError as e:   # text that does not parse (logit bias, DRY breakers): the column says so
        return str(e)


cols = st.columns(n_cols)
if temperatures:
    temps = [col.number_input(f"Temperature, column {i + 1}", value=view.DEFAULT_TEMPERATURES[i], step=0.1,
                              format="%g", key=f"sbs_t{i}") for i, col in enumerate(cols)]
    specs = view.column_specs(temps, s.sampling)
else:
    configs = view.comparison_configs(comparison, s.sampling.seed)
    specs = view.setting_specs(configs, [_edits(col, i, c) for i, (col, c) in enumerate(zip(cols, configs))])
valid = [sp for sp in specs if sp.config is not None]

bridge.read_prompt(s.model, ids)  # a long prompt: a progress bar while it is read
# Cached logits: moving a temperature never re-runs the model.
logits = torch.from_numpy(bridge.next_token_logits(s.model, ids))
order = view.token_order(logits, top_n)
labels = view.token_labels(order, lm.tokenizer.token_text)
probs = {sp.index: core.probabilities(logits, sp.config, **view.column_request(
    sp.config, ids, bridge.dry_breakers_for(s.model, sp.config))) for sp in valid}
x_max = view.shared_x_max([probs[sp.index][order].tolist() for sp in valid])
for sp, col in zip(specs, cols):
    with col:
        if sp.error:
            st.error(plain_text_for_markdown(sp.error), icon="⚠️")   # shown literally, ">=" stays ">="
            continue
        if not temperatures:
            st.markdown(f"**{plain_text_for_markdown(sp.name)}**")
        st.plotly_chart(view.distribution_figure(labels, probs[sp.index][order].tolist(), x_max, sp.color),
                        width="stretch")
        st.caption(view.column_summary(probs[sp.index], order))
st.caption(f"The {len(order)} tokens the model ranks highest, in the same order in every column: "
           "temperature never changes the ranking, only how tall the bars are (a penalty or bias can).")


# No st.fragment here: a click inside a running fragment is queued until it ends, so Stop could
# not interrupt it; a full rerun does interrupt, and the charts above come from cached logits.
st.subheader("Continuations, generated live")
st.write(view.CRN_SENTENCE if len({sp.config.seed for sp in valid}) <= 1 else view.SEEDS_SENTENCE)
mode = prompt_mode(s, lm)
if hint := chat_temperature_hint(s, mode):
    st.caption(hint)
row = st.container(horizontal=True, vertical_alignment="bottom")
max_new = int(row.number_input("Max new tokens", 1, 200, 30, key="sbs_max_tokens", width=180))
past_end = continue_past_end(row, mode, "sbs_past_end")
start = row.button("Generate", type="primary", key="sbs_generate", disabled=not valid)
row.button("Stop", key="sbs_stop")   # any click interrupts the run; the tokens so far stay in session state
template_expander(lm, ids, mode)
status = st.empty()
boxes = {sp.index: col.empty() for sp, col in zip(specs, st.columns(len(specs)))}
steps_area = st.empty()

st.subheader(f"The book's experiment: {view.N_DRAWS:,} draws in each column")
st.write(f"Draw the prompt's next token {view.N_DRAWS:,} times with each column's settings and count what "
         "comes out. Columns with one seed use the same 1,000 random numbers (the sidebar's seed unless a column "
         "sets its own).")
if valid:
    counts = view.draw_counts([probs[sp.index] for sp in valid], s.sampling.seed, seeds=[sp.config.seed for sp in valid])
    names = [sp.name for sp in valid]
    table = view.counts_table(counts, names, logits, lm.tokenizer.token_text, max_rows=top_n)
    # Four columns of counts do not fit beside the chart at 1400 px: the table goes below it then.
    chart_col, table_col = st.columns([3, 2]) if len(valid) < 4 else (st.container(), st.container())
    chart_col.plotly_chart(view.counts_figure(table, names, [sp.color for sp in valid]), width="stretch")
    table_col.dataframe(table, hide_index=True, width="stretch", height="content")
    st.caption(view.distinct_caption(counts, names))


shown_prompt = prompt_display(s.prompt, mode)


def show(run: view.GenerationRun, live: bool) -> None:
    """Draw every column's text into its placeholder (model text is escaped inside continuation_html)."""
    where = {name: j for j, name in enumerate(run.names)}
    for sp in specs:
        with boxes[sp.index].container():
            st.markdown(f"**{sp.name}**")
            if sp.config is None:
                st.caption("No text: the setting above is not valid.")
                continue
            j = where[sp.name]
            st.html(view.continuation_html(shown_prompt, run.texts[j], sp.color, run.divergence, run.finished[j],
                                           cursor=live and run.finished[j] is None))


# Generation runs last, so the whole page is drawn while the columns stream into their placeholders.
key = (s.model, ids, tuple(sp.config for sp in valid), max_new, past_end)
run: view.GenerationRun | None = st.session_state.get("sbs_run")
busy: core.Busy | None = None
if start:
    run = view.GenerationRun.start(key, [sp.name for sp in valid])
    st.session_state["sbs_run"] = run
    status.caption("Generating… (reading the prompt)")
    t0 = time.perf_counter()
    try:
        for steps in core.generate_many(lm, list(ids), [sp.config for sp in valid], max_new, seed=s.sampling.seed,
                                        seeds=[sp.config.seed for sp in valid],
                                        stop_at_eos=not past_end):
            run = run.add(steps, seconds=time.perf_counter() - t0)
            st.session_state["sbs_run"] = run   # replaced every step, so a Stop keeps the tokens so far
            status.caption(f"Generating… token {run.steps} of {max_new}")
            show(run, live=True)
        run = run.done()
    except core.Busy as e:   # the shared model is full: say so (before any token), never hang
        busy, run = e, None
    st.session_state["sbs_run"] = run
if busy is not None:
    status.warning(busy_note(busy.ahead))
elif run is None or run.key != key:
    status.info("Click **Generate** to continue the prompt in every column at once, token by token.")
else:
    show(run, live=False)
    status.caption(plain_text_for_markdown(view.run_status(run, max_new)))   # quotes model text: shown literally
    with steps_area.expander("Step by step: the random number and what each column drew with it"):
        st.dataframe(view.steps_table(run), hide_index=True, width="stretch")
