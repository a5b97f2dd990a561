"""Generate: stream a continuation token by token, each token coloured by how likely it was."""
import functools
import time

import streamlit as st

import core
from ui import bridge
from ui import branches
from ui import generate_view as gv
from ui.controls import (chat_temperature_hint, continue_past_end, load_model, prompt_mode, require_prompt_ids,
                         settings, template_expander)
from ui.token_picker import token_picker
from ui.format import fmt_bits, fmt_prob, plain_text_for_markdown, settings_label, show_token, with_prob_text

PROB_COLUMNS = ["raw probability", "after filters"]
REDRAW_S = 0.08   # redraw the streaming text at most this often; every redraw is also where Stop lands
state = st.session_state


def _stream(lm: core.LanguageModel, ids: tuple[int, ...], max_new: int, past_end: bool, colour_by: str, slot) -> None:
    """Generate into session state step by step (each step replaces the run), so a Stop keeps every token."""
    run = gv.new_run(lm, s.model_label, s.prompt, prompt_mode(s, lm), s.sampling, max_new, asked_mode=s.mode,
                     stop_at_eos=not past_end, previous=state.get(gv.RUN_KEY))
    state[gv.RUN_KEY] = run
    progress, hide_bar = bridge.reading_progress()  # a long prompt: a bar while generation reads it
    last = 0.0
    try:
        for step in core.generate(lm, ids, s.sampling, max_new, top_n=gv.TOP_N, stop_at_eos=not past_end,
                                  progress=progress):
            if step.index == 0:
                hide_bar()
            run = run.add(step)
            state[gv.RUN_KEY] = run
            if time.monotonic() - last > REDRAW_S:
                slot.html(gv.tokens_html(run, colour_by, streaming=True))
                last = time.monotonic()
    except core.Busy as e:   # the shared model is full: say so (before any token), never hang
        hide_bar()
        run = run.busy(e.ahead)
    state[gv.RUN_KEY] = run if run.status == "busy" else run.with_status("done")
    st.rerun()   # redraw with the buttons back in their idle state


def _pick(run: gv.Run, b: int, steps: tuple, split: int | None, colour_by: str, key: str) -> None:
    """Branch b's text, each token a button: a click opens the inspector below on that token."""
    ends = frozenset() if run.stop_at_eos else frozenset(run.eos_ids)   # marked only where generation went past one
    selected = state.get(gv.inspect_key(run, b)) if state.get(gv.inspect_branch_key(run), 0) == b else None
    token_picker(gv.picker_data(run.prompt, run.prompt_mode, steps, colour_by, ends, selected, split), key,
                 on_pick=functools.partial(gv.take_pick, state, b, key))


def _inspector(run: gv.Run, b: int) -> None:
    """The token picked above: what else the model considered, and a branch from any alternative."""
    steps = run.path(b)
    i = st.selectbox("Token", range(len(steps)), format_func=lambda i: gv.inspect_label(steps[i]),
                     key=gv.inspect_key(run, b), index=None, placeholder="click or tap a token above",
                     help="Click or tap a token in the text above, or pick it here.")
    if i is None:
        return
    step = steps[i]
    chose = f"Chose {show_token(step.text)} (id {step.token_id}): "
    if b and gv.forced(run, b, i):
        chose = f"You chose {show_token(step.text)} (id {step.token_id}) here, branch {b}: nothing was drawn. "
    st.text(f"{chose}{fmt_prob(step.prob)} after filters, "
            f"{fmt_prob(step.raw_prob)} raw, rank {step.rank:,} under the raw logits. Entropy "
            f"{fmt_bits(step.entropy)} after filters ({fmt_bits(step.raw_entropy)} raw)."
            + ("" if b and gv.forced(run, b, i) else f" Random number u = {step.uniform:.4f}."))
    before, after = gv.alternatives_tables(step)
    # Fixed widths so both tables show every column side by side at a normal window width.
    config = {"rank": st.column_config.NumberColumn("rank", width=45),
              "token": st.column_config.TextColumn("token", width=105),
              "raw probability": st.column_config.TextColumn("raw probability", width=120),
              "after filters": st.column_config.TextColumn("after filters", width=120),
              "chosen": st.column_config.TextColumn("chosen", width=60)}
    left, right = st.columns(2)
    left.caption("Before filtering: the model's raw top 10")
    left.dataframe(with_prob_text(before, PROB_COLUMNS), hide_index=True, column_config=config)
    right.caption("After filtering: what the sampler drew from")
    right.dataframe(with_prob_text(after, PROB_COLUMNS), hide_index=True, column_config=config)
    _branch_choice(run, b, i)


def _branch_choice(run: gv.Run, b: int, i: int) -> None:
    """Take another token at this position and continue generating from it (a branch)."""
    base = branches.home(run.branches, b, i)   # a chosen token's siblings split from where it split
    alts = branches.alternatives(run.path(base)[i])
    if not alts:
        return
    explored = [branches.find(run.branches, base, i, c.token_id) for c in alts]
    c_alt, c_go = st.columns([3, 1.2], vertical_alignment="bottom")
    j = c_alt.selectbox("Take this token instead", range(len(alts)), key=f"gen_alt_{run.number}_{base}_{i}",
                        index=next((j for j, e in enumerate(explored) if e is None), 0),
                        format_func=lambda j: f"{show_token(alts[j].text)}  ·  {fmt_prob(alts[j].prob)} after filters"
                                              f"  ·  {fmt_prob(alts[j].raw_prob)} raw"
                                              + (f"  ·  branch {explored[j]}" if explored[j] else ""),
                        help="Continue the text from this token with the run's settings and seed; the original "
                             "stays, side by side with the branch.")
    if explored[j] is not None:
        c_go.button(f"Show branch {explored[j]}", key="gen_show_branch", width="stretch", on_click=gv.show_branch,
                    args=(state, run, explored[j]))
    else:
        c_go.button("Branch from here", icon=":material/call_split:", key="gen_branch", width="stretch",
                    on_click=gv.request_branch, args=(state, run, base, i, alts[j].token_id))


def _branch(lm: core.LanguageModel, colour_by: str, slot) -> str | None:
    """Add the requested branch and generate its continuation into session state, step by step, then
    rerun; or say why it cannot be done."""
    run: gv.Run | None = state.get(gv.RUN_KEY)
    request = state.get(gv.BRANCH_KEY)
    state[gv.BRANCH_KEY] = None
    if run is None or request is None or request[0] != run.number:
        return None
    if lm.name != run.model:
        return f"This run was made with {run.model}: choose that model in the sidebar to branch from it."
    _, parent, at, token = request
    prompt_ids = lm.encode_prompt(run.prompt, run.prompt_mode)
    ids_before = branches.continuation_ids(prompt_ids, run.path(parent)[:at], (), 0)
    rank = gv.choice_rank(run, parent, at, token, lambda: lm.next_token_logits(ids_before))
    run, b, remaining = gv.start_branch(run, parent, at, token, rank)
    state[gv.RUN_KEY] = run
    gv.show_branch(state, run, b)
    if remaining:
        ids = branches.continuation_ids(prompt_ids, run.steps, run.branches, b)
        last = 0.0
        for step in core.generate(lm, ids, run.sampling, remaining, top_n=gv.TOP_N, stop_at_eos=run.stop_at_eos):
            run = run.with_branches(branches.extend(run.branches, b, step))
            state[gv.RUN_KEY] = run
            if time.monotonic() - last > REDRAW_S:
                slot.html(gv.tokens_html(gv.branch_run(run, b), colour_by, streaming=True))
                last = time.monotonic()
    st.rerun()


def _show_run(run: gv.Run, colour_by: str, max_new: int, past_end: bool) -> None:
    kind, note = gv.status_note(run)
    getattr(st, kind)(note)   # trusted: numbers and fixed words, no model text
    st.text(f"{'Replayed from ' + run.origin + ' (no model needed) · ' if run.origin else ''}{run.model} · "
            f"{run.prompt_mode} prompt · {settings_label(run.sampling, seed=True)} · max {run.max_new_tokens} tokens")
    if not run.origin:
        changed = gv.settings_changes(run, s.model_label, s.prompt, s.mode, s.sampling, max_new,
                                      stop_at_eos=not past_end)
        if changed:
            st.caption(f"The settings have changed since this run ({', '.join(changed)}): press Generate to "
                       "run again.")
        if run.asked_mode == "chat" and run.prompt_mode == "raw":
            st.caption(plain_text_for_markdown(f"{run.model} has no chat template: the prompt was used as raw text."))
    if run.steps and run.steps[0].truncated:
        st.caption(f"The prompt was cut to its last {run.steps[0].prompt_tokens:,} tokens to fit the model's "
                   "context window.")
    if run.sampling.greedy and colour_by == "sampled":
        st.caption("Temperature 0 always takes the top token, so every token is 100% after filters: colour by "
                   "raw probability to see how sure the model was.")
    st.html(gv.legend_html(colour_by))
    b = 0
    if run.branches:
        b = st.selectbox("Show", range(len(run.branches) + 1), key=gv.view_key(run),
                         format_func=lambda b: branches.label(run.steps, run.branches, b),
                         help="The original run, or a branch beside the text it split from.")
    if b == 0:
        _pick(run, 0, run.steps, None, colour_by, f"gen_text_{run.number}_0")
    else:
        br = run.branches[b - 1]
        left, right = st.columns(2)
        with left:
            st.caption(plain_text_for_markdown(f"{branches.label(run.steps, run.branches, br.parent).capitalize()}: "
                                               f"it took {show_token(run.path(br.parent)[br.at].text)} at #{br.at + 1}"))
            _pick(run, br.parent, run.path(br.parent), br.at, colour_by, f"gen_text_{run.number}_{br.parent}")
        with right:
            st.caption(plain_text_for_markdown(f"Branch {b}: {show_token(br.choice.text)} at #{br.at + 1} "
                                               f"({fmt_prob(br.choice.prob)} after filters), then generated"))
            _pick(run, b, run.path(b), br.at, colour_by, f"gen_text_{run.number}_{b}")
    if not run.steps:
        return
    inspected = state.get(gv.inspect_branch_key(run), 0)
    if inspected not in (b, run.branches[b - 1].parent if b else 0):
        inspected = b
    with st.container(border=True, key="gen_inspector"):
        st.markdown(f"**Inspect a token** · {plain_text_for_markdown(branches.label(run.steps, run.branches, inspected))}")
        _inspector(run, inspected)
    if run.branches:
        st.subheader("Explored branches")
        st.html(branches.tree_html(run.steps, run.branches, b))
    smooth = st.toggle("Smooth the chart (average of 10 tokens)", key="gen_smooth",
                       help="A moving average over the last 10 tokens shows the trend in a long run.")
    st.plotly_chart(gv.chart_figure(run.path(b), smooth=10 if smooth else None), width="stretch")
    name = f"sampling-lab-run-seed{run.sampling.seed}-{len(run.steps)}tok.json"
    # A callable is only run on click: a long run's JSON is not rebuilt on every rerun.
    st.download_button("Download this run (JSON)", functools.partial(gv.run_to_json, run), file_name=name,
                       mime="application/json", on_click="ignore", icon=":material/download:", key="gen_download")


def _import() -> None:
    with st.expander("Replay a saved run (no model needed)"):
        up = st.file_uploader("Run file (.json from the Download button)", type=["json"], key="gen_upload")
        if up is None:
            return
        try:
            gv.import_upload(state, up.file_id, up.name, up.getvalue())
        except gv.RunFormatError as e:
            # The file name and the quoted bad value are untrusted: keep Markdown from reading them.
            st.error(plain_text_for_markdown(f"Could not replay {up.name}: {e}"), icon=":material/error:")


s = settings()
st.title("Generate")
st.caption("Watch the model write, one token at a time. Each token is coloured by how likely it was; click or "
           "tap it to see what else the model considered, and branch from any alternative.")

# Settle a run a rerun cut short; a Generate click loads the model now, before the buttons are drawn,
# so a model that fails leaves them idle.
command = gv.take_command(state)
lm, problem = load_model(s) if command else (None, None)
generating = lm is not None and (command == "branch" or bool(s.prompt.strip()))

c_max, c_colour, c_end = st.columns([1, 1.6, 1.4], vertical_alignment="bottom")
max_new = int(c_max.number_input("Max new tokens", 1, 1000, state.get("gen_max_saved", 60), 10,
                                  key="gen_max_tokens"))
state["gen_max_saved"] = max_new   # page widgets are forgotten on page switch; keep the value
colour_by = c_colour.radio("Colour tokens by", list(gv.COLOUR_BY), key="gen_colour_by", horizontal=True,
                           format_func={"sampled": "probability after filters", "raw": "raw probability"}.get)
mode = s.mode if lm is None else prompt_mode(s, lm)
past_end = continue_past_end(c_end, s.mode, "gen_past_end")   # keyed by the asked mode: stable between runs
if hint := chat_temperature_hint(s, mode):
    st.caption(hint)
b1, b2, b3, _ = st.columns([1, 1.4, 1, 2.6])
b1.button("Generate", type="primary", icon=":material/play_arrow:", on_click=gv.request, args=(state, "generate"),
          disabled=generating, key="gen_generate", width="stretch")
b2.button("New seed + generate", icon=":material/casino:", on_click=gv.request, args=(state, "generate"),
          kwargs={"new_seed": True}, disabled=generating, key="gen_reroll", width="stretch",
          help="Pick a random seed (shown in the sidebar) and generate.")
b3.button("Stop", icon=":material/stop:", on_click=gv.request, args=(state, "stop"), disabled=not generating,
          key="gen_stop", width="stretch")

slot = st.empty()
if problem:
    slot.error(plain_text_for_markdown(problem), icon="⚠️")   # names a user-typed path: shown literally
elif lm is not None and command == "branch":
    problem = _branch(lm, colour_by, slot)   # reruns when the branch is done; else says why not
    if problem:
        st.error(plain_text_for_markdown(problem), icon=":material/error:")   # names a model: shown literally
        problem = None
elif lm is not None:
    with slot.container():
        ids = require_prompt_ids(s, lm)   # says so and stops on a blank prompt
        template_expander(lm, ids, mode)
    _stream(lm, ids, max_new, past_end, colour_by, slot)
_import()
if problem:
    pass
elif (run := state.get(gv.RUN_KEY)) is not None:
    with slot.container():
        _show_run(run, colour_by, max_new, past_end)
else:
    slot.info("Press **Generate** to continue the prompt from the sidebar with its sampling settings.")
