"""End-to-end tests for tests/load/st_client.py against a real `streamlit run`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from st_client import StreamlitSession, wait_for_health

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(HERE / "demo_app.py"),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        # The project's .streamlit/config.toml (picked up from cwd) may redact
        # exception details; these tests assert on them.
        "--client.showErrorDetails", "full",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_for_health(url, timeout=60)
            except TimeoutError as e:
                raise RuntimeError(
                    f"streamlit did not start (rc={proc.poll()}):\n"
                    + log_path.read_text(errors="replace")[-4000:]
                ) from e
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_defaults(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        r = s.run()
        assert r.status == "FINISHED_SUCCESSFULLY"
        assert s.session_id
        assert "prompt=hello" in r.texts
        assert "temperature=0.7" in r.texts
        assert "clicks=0" in r.texts
        assert r.find_text("runs=1")
        assert not r.find_text("generated:")
        assert r.exceptions == []
        assert r.duration_s > 0
        # keyed widget ids: "$$ID-<hash>-<key>"
        assert {"prompt", "temperature", "go", "boom"} <= set(r.widget_ids)
        wid = r.widget_ids["prompt"]
        assert wid.startswith("$$ID-") and wid.endswith("-prompt")
        assert [e.WhichOneof("type") for e in r.elements].count("text") == 4
        # displayed defaults are tracked like a browser would
        assert s.widget_values["prompt"] == "hello"
        assert s.widget_values["temperature"] == [0.7]
        assert s.widget_values["boom"] is False


def test_set_widgets_and_state_persists(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        s.run()
        r = s.run({"prompt": "abc", "temperature": 1.2})
        assert "prompt=abc" in r.texts
        assert "temperature=1.2" in r.texts
        assert "runs=2" in r.text
        # Only change one widget: the other keeps its value (merged state).
        r = s.run({"temperature": 0.3})
        assert "prompt=abc" in r.texts
        assert "temperature=0.3" in r.texts
        r = s.run()
        assert "prompt=abc" in r.texts and "temperature=0.3" in r.texts
        assert "runs=4" in r.text


def test_button_click(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        s.run()
        r = s.run({"prompt": "hi there", "go": True})
        assert "generated: HI THERE @ 0.7" in r.texts
        assert "clicks=1" in r.texts
        # The trigger is one-shot: a plain rerun does not click again.
        r = s.run()
        assert not r.find_text("generated:")
        assert "clicks=1" in r.texts
        r = s.run({"go": True})
        assert "clicks=2" in r.texts


def test_server_side_widget_update_is_adopted(app_url):
    """on_click sets st.session_state.prompt; later runs must not resend the old value."""
    with StreamlitSession(app_url, timeout=30) as s:
        s.run()
        assert "prompt=abc" in s.run({"prompt": "abc"}).texts
        r = s.run({"reset": True})
        assert "prompt=hello" in r.texts
        assert s.widget_values["prompt"] == "hello"
        r = s.run()
        assert "prompt=hello" in r.texts


def test_st_rerun_is_followed(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        s.run()
        r = s.run({"rerun": True})
        assert r.status == "FINISHED_SUCCESSFULLY"
        assert r.script_passes == 2
        assert "reruns_done=1" in r.texts
        # Only the last script pass is on screen: one "runs=" line, for run 3.
        assert r.texts_matching("**runs=") == ["**runs=3**"]


def test_exception_reported(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        s.run()
        r = s.run({"boom": True})
        assert r.exceptions == ["ValueError: boom requested"]
        assert r.find_text("boom requested")
        r = s.run({"boom": False})
        assert r.exceptions == []


def test_unknown_widget_key(app_url):
    with StreamlitSession(app_url, timeout=30) as s:
        with pytest.raises(KeyError):
            s.run({"prompt": "x"})  # page not loaded yet
        s.run()
        with pytest.raises(KeyError):
            s.run({"no_such_key": 1})


def test_two_sessions_keep_separate_state(app_url):
    barrier = threading.Barrier(2)
    results = {}

    def user(name, clicks):
        with StreamlitSession(app_url, timeout=30) as s:
            s.run()
            barrier.wait()
            s.run({"prompt": name})
            for _ in range(clicks):
                s.run({"go": True})
            barrier.wait()
            results[name] = (s.session_id, s.run())

    threads = [threading.Thread(target=user, args=a) for a in (("alpha", 2), ("beta", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    (sid_a, ra), (sid_b, rb) = results["alpha"], results["beta"]
    assert sid_a != sid_b
    assert "prompt=alpha" in ra.texts and "clicks=2" in ra.texts and "runs=5" in ra.text
    assert "prompt=beta" in rb.texts and "clicks=1" in rb.texts and "runs=4" in rb.text


def test_many_concurrent_sessions(app_url):
    def user(i):
        with StreamlitSession(app_url, timeout=60) as s:
            s.run()
            for j in range(3):
                r = s.run({"prompt": f"user{i}-{j}", "go": True})
                assert f"generated: USER{i}-{j} @ 0.7" in r.texts, r.texts
            return r

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(user, range(12)))
    for i, r in enumerate(results):
        assert f"prompt=user{i}-2" in r.texts
        assert "clicks=3" in r.texts


def test_pages(app_url):
    with StreamlitSession(app_url, page="stats", timeout=30) as s:
        r = s.run()
        assert not r.page_not_found
        assert r.page == "stats"
        assert "Stats page" in r.texts and "n squared=9" in r.texts
        assert set(s.pages) == {"", "stats"}
        r = s.run({"n": 7})
        assert "n squared=49" in r.texts
        # switch to the default page; session state is shared across pages
        r = s.switch_page("")
        assert "prompt=hello" in r.texts and not r.find_text("Stats page")
        r = s.run({"go": True})
        assert "clicks=1" in r.texts
        r = s.switch_page("stats")
        assert "stats clicks=1" in r.texts
        # widget ids include the page: "n" is only known while on the stats page
        assert "n" in r.widget_ids and "prompt" not in r.widget_ids


def test_unknown_page_falls_back_to_default(app_url):
    with StreamlitSession(app_url, page="no-such-page", timeout=30) as s:
        r = s.run()
        assert r.page_not_found
        assert r.page == ""
        assert "prompt=hello" in r.texts
        r = s.run({"prompt": "still here"})
        assert not r.page_not_found
        assert "prompt=still here" in r.texts
