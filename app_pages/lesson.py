"""How sampling works: the book's 9-word toy example, with its own sliders and no model to load."""
import streamlit as st

from ui import lesson_view as lv

ALL = len(lv.WORDS)
DEFAULTS = {"lesson_temperature": 1.0, "lesson_top_k": ALL, "lesson_seed": lv.DEFAULT_SEED}
# (label, icon, settings it applies): one click per classroom experiment.
EXPERIMENTS = [
    ("Cold: T = 0.1", ":material/ac_unit:", {"lesson_temperature": 0.1}),
    ("Hot: T = 5", ":material/local_fire_department:", {"lesson_temperature": 5.0}),
    ("Greedy: T = 0", ":material/target:", {"lesson_temperature": 0.0}),
    ("Top-k = 1", ":material/content_cut:", {"lesson_top_k": 1}),
    ("Reset", ":material/restart_alt:", {"lesson_temperature": 1.0, "lesson_top_k": ALL}),
]
EXPLANATIONS = [
    "**Scores (logits).** The model rates every word: higher means “fits better here”. "
    "Scores can be negative.",
    "**Softmax.** Turns scores into chances that add up to 100%. "
    "One point more score makes a word about 2.7× as likely.",
    "**Temperature.** Divides every score before softmax. Below 1 the favourite wins more often; "
    "above 1 surprises get likelier; 0 always takes the favourite.",
    "**Top-k.** Before the die is rolled, all but the k best words are thrown away.",
]

# Widget values come from session state only (no value=), so the buttons below may set them.
for key, value in DEFAULTS.items():
    st.session_state.setdefault(key, value)


def _apply(changes: dict) -> None:
    st.session_state.update(changes)


def _roll_again() -> None:
    st.session_state["lesson_seed"] += 1


st.title("How sampling works", icon=":material/school:")
st.markdown(f"A language model gives **every word a score**, then rolls a weighted die to pick the next one. "
            f"Here is a tiny 9-word version: the word after *“{lv.PROMPT} …”*")


@st.fragment
def lesson() -> None:
    # A fragment: moving these sliders redraws only the lesson, not the sidebar or the title.
    left, right = st.columns(2, gap="large")
    t = left.slider("Temperature", 0.0, 5.0, step=0.1, key="lesson_temperature",
                    help="0 = always the top word. Below 1 sharpens, above 1 flattens.")
    k = right.slider("Top-k: keep only the k best words", 1, ALL, key="lesson_top_k",
                     help=f"{ALL} = keep every word (top-k off).")
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown("**Try this:**", width="content")
        for label, icon, changes in EXPERIMENTS:
            st.button(label, icon=icon, on_click=_apply, args=(changes,))
        st.button(f"Roll {lv.N_DRAWS:,} again", icon=":material/casino:", on_click=_roll_again)

    t = round(t, 2)   # slider floats such as 0.30000000000000004 read badly in the notes
    result = lv.run_lesson(lv.lesson_config(t, k, st.session_state["lesson_seed"]))
    st.info(f"{lv.temperature_note(t)}  \n{lv.top_k_note(k, t)}", icon=":material/lightbulb:")

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Probability of each word")
        st.plotly_chart(lv.probability_figure(result), width="stretch", config={"displayModeBar": False})
    with right:
        st.subheader(f"{lv.N_DRAWS:,} random picks")
        st.plotly_chart(lv.draws_figure(result), width="stretch", config={"displayModeBar": False})

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("What is going on?")
        for number, text in enumerate(EXPLANATIONS, 1):
            st.markdown(f"{number}. {text}")
    with right:
        st.subheader("The exact numbers")
        st.dataframe(lv.numbers_table(result), hide_index=True, width="stretch",
                     column_config={"score": st.column_config.NumberColumn(format="%.2f")})
    st.caption("This page has its own sliders; the sidebar settings apply to the model pages.")


lesson()
