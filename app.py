"""Sampling Lab: router plus the shared sidebar. Pages live in app_pages/; caching lives in ui/bridge.py.

(Not `pages/`: Streamlit treats a `pages/` folder beside the main script as a legacy multipage app, which
runs a deep-linked page without this router on a fresh server.)
"""
import streamlit as st

from core.engines import EngineError
from core.runtime import configure_threads
from ui import bridge
from ui.controls import render_sidebar
from ui.model_view import engine_failure_message

st.set_page_config(page_title="Sampling Lab", page_icon=":material/casino:", layout="wide")
# On every run: each rerun is a new thread, which starts from torch's process-wide thread count.
# One thread: bench/RESULTS.md (the fast backend's decode steps take the second core through its own
# policy, core/backends/fast/cores.py).
configure_threads()
bridge.preload()  # the default model loads on its own thread while this run draws the sidebar and page

pages = [
    st.Page("app_pages/next_token.py", title="Next token", icon=":material/bar_chart:", default=True),
    st.Page("app_pages/side_by_side.py", title="Compare settings", icon=":material/thermostat:"),
    st.Page("app_pages/generate.py", title="Generate", icon=":material/edit_note:"),
    st.Page("app_pages/quantization.py", title="Quantized vs full precision", icon=":material/compress:"),
    st.Page("app_pages/lesson.py", title="How sampling works", icon=":material/school:"),
]
page = st.navigation(pages)
st.session_state["_settings"] = render_sidebar()
try:
    page.run()
except EngineError as e:  # an inference server failed mid-page: say so; session state (prompt, tokens so far) stays
    st.error(engine_failure_message(e), icon=":material/link_off:")
