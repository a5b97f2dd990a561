"""Sampling Lab: router plus the shared sidebar. Pages live in app_pages/; caching lives in ui/bridge.py.

(Not `pages/`: Streamlit treats a `pages/` folder beside the main script as a legacy multipage app, which
runs a deep-linked page without this router on a fresh server.)
"""
import streamlit as st

from core.engines import EngineError
from core.runtime import configure_threads
from ui import bridge
from ui import link, presenter
from ui.controls import model_choices, render_sidebar
from ui.model_view import engine_failure_message

# An emoji icon becomes a data: URL; for a :material/ icon Streamlit 1.67's frontend fetches an SVG from
# fonts.gstatic.com (test_e2e_generate.py, which forbids outside requests, caught it once share links were on).
st.set_page_config(page_title="Sampling Lab", page_icon="🎲", layout="wide")
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
link.apply_once(st.session_state, model_choices())   # a shared link: before the widgets are drawn
st.session_state["_settings"] = render_sidebar()
presenter.setup(st.session_state)
link.copy_link(st.sidebar, link.sync(st.session_state, model_choices(), page.url_path))
link.show_problem(st.session_state)
try:
    page.run()
except EngineError as e:  # an inference server failed mid-page: say so; session state (prompt, tokens so far) stays
    st.error(engine_failure_message(e), icon=":material/link_off:")
