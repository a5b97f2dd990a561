"""Sampling Lab: router plus the shared sidebar. Pages live in pages/; caching lives in ui/bridge.py."""
import streamlit as st

from ui.controls import render_sidebar

st.set_page_config(page_title="Sampling Lab", page_icon="🎲", layout="wide")

pages = [
    st.Page("pages/next_token.py", title="Next token", icon="📊", default=True),
    st.Page("pages/side_by_side.py", title="Temperatures side by side", icon="🌡️"),
    st.Page("pages/generate.py", title="Generate", icon="✍️"),
    st.Page("pages/lesson.py", title="How sampling works", icon="🎓"),
]
page = st.navigation(pages)
st.session_state["_settings"] = render_sidebar()
page.run()
