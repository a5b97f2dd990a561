"""Fixture app for tests/load/test_st_client.py (exercises st_client.StreamlitSession)."""

import streamlit as st

st.session_state.setdefault("runs", 0)
st.session_state.setdefault("clicks", 0)
st.session_state.setdefault("reruns_done", 0)
st.session_state.runs += 1


def reset_prompt() -> None:
    # Server-side write to a widget's state: the client must adopt it.
    st.session_state.prompt = "hello"


def main_page() -> None:
    prompt = st.text_input("Prompt", value="hello", key="prompt")
    temperature = st.slider("Temperature", 0.0, 2.0, 0.7, step=0.1, key="temperature")
    boom = st.checkbox("Raise an error", key="boom")
    if st.button("Generate", key="go"):
        st.session_state.clicks += 1
        st.text(f"generated: {prompt.upper()} @ {temperature:.1f}")
    st.button("Reset prompt", key="reset", on_click=reset_prompt)
    if st.button("Rerun", key="rerun"):
        st.session_state.reruns_done += 1
        st.rerun()
    st.text(f"prompt={prompt}")
    st.text(f"temperature={temperature:.1f}")
    st.text(f"clicks={st.session_state.clicks}")
    st.text(f"reruns_done={st.session_state.reruns_done}")
    st.markdown(f"**runs={st.session_state.runs}**")
    if boom:
        raise ValueError("boom requested")


def stats_page() -> None:
    st.header("Stats page")
    n = st.number_input("N", min_value=1, max_value=10, value=3, key="n")
    st.text(f"n squared={n * n}")
    st.text(f"stats clicks={st.session_state.clicks}")


pg = st.navigation(
    [
        st.Page(main_page, title="Main", url_path="main", default=True),
        st.Page(stats_page, title="Stats", url_path="stats"),
    ]
)
pg.run()
