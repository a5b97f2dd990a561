"""Generate: stream a continuation token by token, each token coloured by how likely it was."""
import functools
import secrets
import time

import streamlit as st

import core
from ui import bridge
from ui import generate_view as gv
from ui.controls import Settings, require_model, require_prompt_ids, settings
from ui.format import plain_text_for_markdown, show_token

RUN, ORIGIN, REQUEST, STOP, RUN_NO, IMPORTED, ASKED = (
    "gen_run", "gen_origin", "gen_request", "gen_stop_clicked", "gen_run_no", "gen_imported_id", "gen_asked_mode")
REDRAW_S = 0.08   # redraw the streaming text at most this often; every redraw is also where Stop lands


def _request(new_seed: bool = False) -> None:
    st.session_state[REQUEST] = True
    if new_seed:
        # Callbacks run before the sidebar is drawn, so the Seed widget shows the new value.
        st.session_state["seed"] = secrets.randbelow(2**31)


def _stop() -> None:
    st.session_state[STOP] = True


def _ready(s: Settings) -> bool:
    """Model loads and prompt is not blank: checked before the buttons are drawn, so a failure leaves them idle."""
    if s.model is None or not s.prompt.strip():
        return False
    try:
        with st.spinner(f"Loading {s.model_label}…"):
            bridge.get_model(s.model)
    except Exception:  # require_model names the problem on the page
        return False
    return True


def _stream(s: Settings, max_new: int, colour_by: str, slot) -> None:
    """Generate into session state step by step, so a Stop (a rerun) keeps every token so far."""
    lm = require_model(s)
    ids = require_prompt_ids(s, lm)
    mode = s.mode if lm.has_chat else "raw"
    run = gv.new_run(lm, s.model_label, s.prompt, mode, s.sampling, max_new)
    st.session_state[RUN], st.session_state[ORIGIN], st.session_state[ASKED] = run, None, s.mode
    st.session_state[RUN_NO] = st.session_state.get(RUN_NO, 0) + 1
    bridge.read_prompt(s.model, ids)  # a long prompt: a progress bar while it is read
    last = 0.0
    for step in core.generate(lm, ids, s.sampling, max_new, top_n=gv.TOP_N):
        run = run.add(step)
        st.session_state[RUN] = run
        if time.monotonic() - last > REDRAW_S:
            slot.html(gv.tokens_html(run, colour_by, streaming=True))
            last = time.monotonic()
    st.session_state[RUN] = run.with_status("done")
    st.rerun()   # redraw with the buttons back in their idle state


@st.fragment
def _inspector(run: gv.Run) -> None:
    """Pick a token, see what else the model considered (a fragment: only this part redraws)."""
    st.subheader("Inspect a token")
    i = st.selectbox("Token", range(len(run.steps)), format_func=lambda i: gv.inspect_label(run.steps[i]),
                     key=f"gen_inspect_{st.session_state.get(RUN_NO, 0)}",
                     help="Hover a token above for a quick look; pick it here for the full top-10 lists.")
    step = run.steps[i]
    st.text(f"Chose {show_token(step.text)} (id {step.token_id}): {gv.fmt_prob(step.prob)} after filters, "
            f"{gv.fmt_prob(step.raw_prob)} raw, rank {step.rank:,} under the raw logits. Entropy "
            f"{step.entropy:.2f} bits after filters ({step.raw_entropy:.2f} raw). "
            f"Random number u = {step.uniform:.4f}.")
    before, after = gv.alternatives_tables(step)
    pct = st.column_config.ProgressColumn
    # Fixed widths so both tables show every column side by side at a normal window width.
    config = {"rank": st.column_config.NumberColumn("rank", width=45),
              "token": st.column_config.TextColumn("token", width=105),
              "raw probability": pct("raw probability", format="percent", min_value=0.0, max_value=1.0, width=120),
              "after filters": pct("after filters", format="percent", min_value=0.0, max_value=1.0, width=120),
              "chosen": st.column_config.TextColumn("chosen", width=60)}
    left, right = st.columns(2)
    left.caption("Before filtering: the model's raw top 10")
    left.dataframe(before, hide_index=True, column_config=config)
    right.caption("After filtering: what the sampler drew from")
    right.dataframe(after, hide_index=True, column_config=config)


def _show_run(run: gv.Run, colour_by: str, s: Settings, max_new: int) -> None:
    origin = st.session_state.get(ORIGIN)
    kind, note = gv.status_note(run)
    getattr(st, kind)(note)
    st.text(f"{'Replayed from ' + origin + ' (no model needed) · ' if origin else ''}{run.model} · "
            f"{run.prompt_mode} prompt · {gv.settings_label(run.sampling)} · max {run.max_new_tokens} tokens")
    if not origin:
        changed = gv.settings_changes(run, s.model_label, s.prompt, s.mode, s.sampling, max_new,
                                      st.session_state.get(ASKED))
        if changed:
            st.caption(f"The settings have changed since this run ({', '.join(changed)}): press Generate to "
                       "run again.")
        if st.session_state.get(ASKED) == "chat" and run.prompt_mode == "raw":
            st.caption(plain_text_for_markdown(f"{run.model} has no chat template: the prompt was used as raw text."))
    if run.steps and run.steps[0].truncated:
        st.caption(f"The prompt was cut to its last {run.steps[0].prompt_tokens:,} tokens to fit the model's "
                   "context window.")
    if run.sampling.greedy and colour_by == "sampled":
        st.caption("Temperature 0 always takes the top token, so every token is 100% after filters: colour by "
                   "raw probability to see how sure the model was.")
    st.html(gv.legend_html(colour_by))
    st.html(gv.tokens_html(run, colour_by))
    if not run.steps:
        return
    st.plotly_chart(gv.chart_figure(run.steps), width="stretch")
    _inspector(run)
    name = f"sampling-lab-run-seed{run.sampling.seed}-{len(run.steps)}tok.json"
    # A callable is only run on click: a long run's JSON is not rebuilt on every rerun.
    st.download_button("Download this run (JSON)", functools.partial(gv.run_to_json, run), file_name=name,
                       mime="application/json", on_click="ignore", icon=":material/download:", key="gen_download")


def _import() -> None:
    with st.expander("Replay a saved run (no model needed)"):
        up = st.file_uploader("Run file (.json from the Download button)", type=["json"], key="gen_upload")
        if up is None or st.session_state.get(IMPORTED) == up.file_id:
            return
        st.session_state[IMPORTED] = up.file_id   # load each upload once, so Generate can replace it
        try:
            run = gv.parse_run(up.getvalue())
        except gv.RunFormatError as e:
            # The file name and the quoted bad value are untrusted: keep Markdown from reading them.
            st.error(plain_text_for_markdown(f"Could not replay {up.name}: {e}"), icon=":material/error:")
            return
        st.session_state[RUN], st.session_state[ORIGIN] = run, up.name
        st.session_state[RUN_NO] = st.session_state.get(RUN_NO, 0) + 1


s = settings()
st.title("Generate")
st.caption("Watch the model write, one token at a time. Each token is coloured by how likely it was; hover it "
           "to see what else the model considered.")

# A run still marked "running" was cut short by a rerun: Stop, or a widget that changed meanwhile.
if (prev := st.session_state.get(RUN)) is not None and prev.status == "running":
    st.session_state[RUN] = prev.with_status("stopped" if st.session_state.get(STOP) else "interrupted")
st.session_state[STOP] = False
generating = st.session_state.pop(REQUEST, False)
blocked = generating and not _ready(s)
generating = generating and not blocked

c_max, c_colour = st.columns([1, 2])
max_new = int(c_max.number_input("Max new tokens", 1, 1000, st.session_state.get("gen_max_saved", 60), 10,
                                  key="gen_max_tokens"))
st.session_state["gen_max_saved"] = max_new   # page widgets are forgotten on page switch; keep the value
colour_by = c_colour.radio("Colour tokens by", list(gv.COLOUR_BY), key="gen_colour_by", horizontal=True,
                           format_func={"sampled": "probability after filters", "raw": "raw probability"}.get)
b1, b2, b3, _ = st.columns([1, 1.4, 1, 2.6])
b1.button("Generate", type="primary", icon=":material/play_arrow:", on_click=_request, disabled=generating,
          key="gen_generate", width="stretch")
b2.button("New seed + generate", icon=":material/casino:", on_click=_request, kwargs={"new_seed": True},
          disabled=generating, key="gen_reroll", width="stretch",
          help="Pick a random seed (shown in the sidebar) and generate.")
b3.button("Stop", icon=":material/stop:", on_click=_stop, disabled=not generating, key="gen_stop", width="stretch")

slot = st.empty()
if blocked:
    with slot.container():
        require_prompt_ids(s, require_model(s))   # says why (bad checkpoint, blank prompt) and stops
if generating:
    _stream(s, max_new, colour_by, slot)
_import()
if (run := st.session_state.get(RUN)) is not None:
    with slot.container():
        _show_run(run, colour_by, s, max_new)
else:
    slot.info("Press **Generate** to continue the prompt from the sidebar with its sampling settings.")
