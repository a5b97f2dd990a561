"""Untrusted text in a real browser: hostile prompts and model output run no script and fetch nothing.

A tracking HTTP server on loopback counts every request; the hostile strings point at it. The prompt is
typed into the sidebar, every model page is visited (Side by side and Generate generate from it), and a
crafted run file whose tokens ARE the hostile strings is replayed on the Generate page. Also: the
server refuses an upload over server.maxUploadSize (HTTP 413), and the browser tells the user.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import re
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import core
from ui import generate_view as gv

from conftest import ROOT, free_port, start_app, wait_idle

SHOTS = Path("/tmp/shots")


class _Tracker(BaseHTTPRequestHandler):
    hits: list[str] = []

    def _hit(self) -> None:
        _Tracker.hits.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_OPTIONS = _hit

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def tracker():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Tracker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urllib.request.urlopen(f"{base}/self-check").read()      # the tracker does count requests
    assert _Tracker.hits == ["GET /self-check"]
    _Tracker.hits.clear()
    yield base
    server.shutdown()
    _Tracker.hits.clear()


def payloads(base: str) -> list[str]:
    return [
        "<script>window.__xss=2;alert(2)</script>",
        '<img src=x onerror="window.__xss=1;alert(1)">',
        f'<img src="{base}/img-tag">',
        f"![x]({base}/leak)",
        f"[click me]({base}/link) <{base}/autolink>",
        "[js](javascript:window.__xss=3)",
        f'<svg onload="window.__xss=4"></svg><iframe src="{base}/iframe"></iframe>',
        f"<style>@import url({base}/css);</style>",
        f'"><img src=x onerror=window.__xss=5> \'><b onmouseover=window.__xss=6>hover</b>',
    ]


def hostile_run(base: str) -> bytes:
    """A saved run whose generated tokens (and their alternatives) are the hostile strings."""
    tiny = core.load_model("gpt2-tiny")
    cfg = core.SamplingConfig(seed=1)
    evil = payloads(base)
    steps = list(core.generate(tiny, "Hi", cfg, max_new_tokens=len(evil)))
    steps = [dataclasses.replace(s, text=text,
                                 top_before=tuple(dataclasses.replace(c, text=text) for c in s.top_before),
                                 top_after=tuple(dataclasses.replace(c, text=text) for c in s.top_after))
             for s, text in zip(steps, evil)]
    run = gv.new_run(tiny, f"<img src=x onerror=window.__xss=7> ![m]({base}/model)", evil[0], "raw", cfg,
                     len(evil))
    for s in steps:
        run = run.add(s)
    return gv.run_to_json(run.with_status("done")).encode()


def _generate_on(page: Page, title: str, key_prefix: str, tokens: int = 8) -> None:
    """Open a page, set its max-tokens box, press its Generate button and wait for the run to end."""
    _go(page, title)
    box = page.locator(f".st-key-{key_prefix}_max_tokens input")
    box.fill(str(tokens))
    box.press("Enter")
    wait_idle(page, 120_000)
    page.locator(f".st-key-{key_prefix}_generate button").click()
    page.wait_for_timeout(500)
    wait_idle(page, 180_000)


def _no_script_ran(page, dialogs: list) -> None:
    assert dialogs == []
    for frame in page.frames:
        assert frame.evaluate("() => window.__xss") is None, frame.url


def _go(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
    page.wait_for_timeout(300)
    wait_idle(page, 120_000)


def test_hostile_prompt_and_model_text_run_nothing_and_fetch_nothing(page, app_url: str, tracker: str,
                                                                      tmp_path: Path) -> None:
    dialogs: list = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(app_url)
    wait_idle(page, 120_000)
    hostile = "\n".join(payloads(tracker))
    box = page.locator(".st-key-prompt textarea")
    box.fill(hostile)
    box.press("Control+Enter")
    page.wait_for_timeout(300)
    wait_idle(page, 120_000)
    assert "window.__xss=2" in page.inner_text("[data-testid='stMain']")   # shown, as text
    _no_script_ran(page, dialogs)

    _generate_on(page, "Compare settings", "sbs")
    assert page.locator("[data-testid='sbs-text']").count() == 3
    _no_script_ran(page, dialogs)

    _generate_on(page, "Generate", "gen")
    # wait for the end of the run, not just an idle moment: the last redraw can land between two runs
    expect(page.get_by_text(re.compile("^Finished:"))).to_be_visible(timeout=180_000)
    expect(page.locator(".sl-tok")).to_have_count(8)
    assert "window.__xss=2" in page.locator(".sl-gen").inner_text()        # the prompt, as text
    _no_script_ran(page, dialogs)

    run_file = tmp_path / "hostile-run.json"
    run_file.write_bytes(hostile_run(tracker))
    page.locator("[data-testid='stExpander'] summary", has_text="Replay a saved run").click()
    page.locator(".st-key-gen_upload input[type=file]").set_input_files(str(run_file))
    page.wait_for_timeout(1000)
    wait_idle(page, 120_000)
    assert page.locator("[data-testid='stAlert']", has_text="Could not").count() == 0
    tokens = page.locator(".sl-tok")
    expect(tokens).to_have_count(len(payloads(tracker)))
    shown = page.locator(".sl-gen").inner_text()
    assert "<script>window.__xss=2;alert(2)</script>" in shown and f"![x]({tracker}/leak)" in shown
    for i in range(tokens.count()):                                        # tooltips and hover handlers
        tokens.nth(i).hover()
    page.locator("[data-testid='stSelectbox']", has_text="Token").click()  # the inspector's token list
    page.keyboard.press("Escape")
    page.mouse.wheel(0, 2000)
    page.wait_for_timeout(1500)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "security-generate-replay.png"), full_page=True)
    _no_script_ran(page, dialogs)

    assert _Tracker.hits == []
    assert [u for u in requests if u.startswith(tracker)] == []


def _put_status(url: str, body: bytes) -> int:
    """PUT body and return the HTTP status. The server may answer 413 and close before the whole body is
    sent, so a broken pipe while sending is expected: the answer is read all the same."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("PUT", parts.path)
        conn.putheader("Content-Type", "multipart/form-data; boundary=b")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return conn.getresponse().status
    finally:
        conn.close()


def test_upload_over_the_size_limit_is_refused(page, tmp_path: Path) -> None:
    import sys
    sys.path.insert(0, str(ROOT / "tests" / "load"))
    from st_client import StreamlitSession

    # XSRF off only so a plain HTTP client can reach the size check (with it on, a PUT without the
    # browser's token is refused with 403 before its size is read).
    proc, url = start_app({"STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "1", "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION": "false"})
    try:
        with StreamlitSession(url, timeout=120) as s:
            s.run()
            endpoint = f"{url}/_stcore/upload_file/{s.session_id}/big-file"
            body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pth\"\r\n\r\n" \
                   + b"\0" * (2 * 2**20) + b"\r\n--b--\r\n"
            assert _put_status(endpoint, body) == 413
            small = body.replace(b"\0" * (2 * 2**20), b"\0" * 1000)
            assert _put_status(endpoint, small) in (200, 204)   # the route itself works

        big = tmp_path / "big.pth"
        big.write_bytes(b"\0" * (2 * 2**20))
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(url)
        wait_idle(page, 120_000)
        page.locator(".st-key-model_label").click()
        page.get_by_role("option", name="Local checkpoint…").click()
        wait_idle(page, 120_000)
        page.locator(".st-key-ckpt_upload input[type=file]").set_input_files(str(big))
        page.wait_for_timeout(1000)
        message = page.locator(".st-key-ckpt_upload").inner_text()
        assert "1.0MB" in message.replace(" ", "") or "too large" in message.lower(), message
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "security-upload-limit.png"), full_page=True)
        assert page.locator("[data-testid='stException']").count() == 0
    finally:
        proc.terminate()
        proc.wait(10)
