"""The "Next token" page in a real browser on the bundled SmolLM2-135M-Instruct.

Measures what a user feels: the time from a key press on the temperature slider to the redrawn chart.
"""
from __future__ import annotations

import http.server
import statistics
import threading

import pandas as pd
import pytest

from conftest import wait_idle

CHART = "[data-testid='stPlotlyChart'] .js-plotly-plot"
READ_CHART = f"""() => {{
    const gd = document.querySelector("{CHART}");
    return {{y: gd.data[0].y, raw: gd.data[0].x, filtered: gd.data[1].x}};
}}"""
# Records, in the page's own clock, the time from each keydown to the frame where the chart's
# "after settings" bars have new values.
INSTALL_TIMER = f"""() => {{
    const sig = () => {{
        const gd = document.querySelector("{CHART}");
        return gd && gd.data && gd.data[1] ? JSON.stringify(gd.data[1].x) : null;
    }};
    const nt = window.__nt = {{t0: null, base: null, times: []}};
    document.addEventListener("keydown", () => {{ nt.t0 = performance.now(); nt.base = sig(); }}, true);
    const check = () => {{
        const s = sig();
        if (nt.t0 !== null && s !== null && s !== nt.base) {{ nt.times.push(performance.now() - nt.t0); nt.t0 = null; }}
    }};
    const frame = () => {{ check(); requestAnimationFrame(frame); }};
    requestAnimationFrame(frame);
    setInterval(check, 10);   // in case a hidden page throttles animation frames
}}"""


def open_page(page, url: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url)
    wait_idle(page, 120_000)
    page.wait_for_selector(CHART, timeout=120_000)
    wait_idle(page)


def test_temperature_slider_redraws_the_chart(page, app_url):
    open_page(page, app_url)
    first = page.evaluate(READ_CHART)
    # Golden values for "Every effort moves you" (see FACTS.md).
    assert first["y"][:2] == ["␣away", "␣forward"]
    assert first["raw"][:2] == pytest.approx([0.310, 0.176], abs=0.002)
    assert first["filtered"] == first["raw"]   # T = 1, no filters
    page.evaluate(INSTALL_TIMER)

    slider = page.locator("[data-testid='stSlider']").filter(has_text="Temperature").get_by_role("slider")
    slider.focus()
    tops, moves = [first["filtered"][0]], 5
    for i in range(moves):
        page.keyboard.press("ArrowLeft")   # 1.00 -> 0.95 -> ... -> 0.75
        page.wait_for_function(f"() => window.__nt.times.length >= {i + 1}", timeout=30_000)
        wait_idle(page)
        now = page.evaluate(READ_CHART)
        assert now["raw"] == first["raw"], "the raw bars do not depend on the temperature"
        tops.append(now["filtered"][0])
    assert float(slider.input_value()) == pytest.approx(0.75)
    assert all(b > a for a, b in zip(tops, tops[1:])), f"cooling must sharpen the top token: {tops}"
    times = page.evaluate("() => window.__nt.times")
    median = statistics.median(times)
    print(f"\nkey press -> updated chart, {moves} temperature moves: "
          f"{', '.join(f'{t:.0f}' for t in times)} ms; median {median:.0f} ms")
    page.screenshot(path="/tmp/shots/e2e_next_token.png", full_page=True)


def test_sample_and_undo(page, app_url):
    open_page(page, app_url)
    page.get_by_role("button", name="Sample").click()
    message = page.locator("[data-testid='stAlert']").filter(has_text="Sampled")
    message.wait_for(timeout=30_000)
    wait_idle(page)
    text = message.inner_text()
    assert "of 49,152" in text and ("the top choice" in text or "a random draw, not the top choice" in text)
    token = text.split("'")[1].replace("␣", " ")
    assert page.locator("[data-testid='stHtml']").first.inner_text().startswith("Every effort moves you" + token)
    page.get_by_role("button", name="Undo").click()
    message.wait_for(state="detached", timeout=30_000)
    wait_idle(page)
    assert page.evaluate(READ_CHART)["y"][0] == "␣away"


def test_full_vocabulary_csv(page, app_url):
    open_page(page, app_url)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="All 49,152 tokens (CSV)").click()
    table = pd.read_csv(download.value.path(), keep_default_na=False)
    assert len(table) == 49_152 and sorted(table["id"]) == list(range(49_152))
    assert table["token"][0] == "␣away" and table["text"][0] == " away"
    assert table["raw probability"][0] == pytest.approx(0.310, abs=0.002)
    assert table["filtered probability"].sum() == pytest.approx(1.0, abs=1e-4)
    assert (table["status"] == "kept").all()


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_prompt_markup_is_shown_as_text(page, app_url):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        open_page(page, app_url)
        prompt = f'![x]({host}/md) <img src="{host}/img"> <b>bold</b>'
        box = page.locator("[data-testid='stSidebar'] textarea")
        box.fill(prompt)
        box.press("Control+Enter")
        page.wait_for_function(f"() => document.querySelector(\"[data-testid='stHtml']\").innerText.includes('<b>bold</b>')",
                               timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Sample").click()
        page.locator("[data-testid='stAlert']").filter(has_text="Sampled").wait_for(timeout=30_000)
        wait_idle(page)
        page.wait_for_timeout(500)
        assert page.locator("[data-testid='stHtml']").first.inner_text().startswith(prompt)
        assert page.locator("[data-testid='stHtml'] img, [data-testid='stHtml'] b").count() == 0
        assert _Recorder.hits == []
    finally:
        server.shutdown()
