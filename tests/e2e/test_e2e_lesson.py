"""The lesson page in a real browser: it loads fast, the keyboard moves its slider, the charts follow."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page

from conftest import start_app, wait_idle

SHOTS = Path("/tmp/shots")


def _bars(page: Page) -> list[list[float]]:
    """The y values of every plotly bar chart on the page, as drawn in the browser."""
    return page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(el => Array.from(el.data[0].x))")


def _wait_charts(page: Page, condition: str = "true") -> None:
    """Wait until both charts are drawn and `condition` holds (JS; `probs` and `draws` are the x values).

    While a rerun swaps a chart the page can briefly hold three plots, or none, so check them all.
    """
    page.wait_for_function(f"""() => {{
        const els = [...document.querySelectorAll('.js-plotly-plot')];
        if (els.length !== 2 || !els.every(el => el.data && el.data[0])) return false;
        const [probs, draws] = els.map(el => Array.from(el.data[0].x));
        return {condition};
    }}""")
    wait_idle(page)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 2")


def test_lesson_page_in_browser(page: Page, app_url: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(app_url)
    wait_idle(page)
    start = time.perf_counter()
    page.get_by_role("link", name="How sampling works").click()
    _wait_charts(page)
    load_s = time.perf_counter() - start
    # No model is loaded for this page (AppTest proves it); the time is reported, never asserted.
    print(f"\nlesson page drawn {load_s:.2f} s after the click")
    assert page.get_by_text("How sampling works").first.is_visible()

    probs, counts = _bars(page)
    assert round(probs[0], 1) == 57.2, probs          # "forward" at temperature 1
    assert sum(counts) == 1000, counts

    # The lesson's own slider (the sidebar has a plain "Temperature" one too).
    slider = page.locator("[data-testid='stMain'] input[type=range][aria-label='Temperature']")
    slider.focus()
    for _ in range(5):                                 # 1.0 -> 0.5
        slider.press("ArrowLeft")
    _wait_charts(page, "Math.abs(probs[0] - 71.32) < 0.01")   # the chart for T = 0.5, not an earlier one
    assert float(slider.input_value()) == 0.5
    sharp, sharp_counts = _bars(page)
    assert abs(sharp[0] - 71.3) < 0.1, sharp           # exp(13.5) / sum(exp(2 * scores))
    assert sharp_counts != counts and sum(sharp_counts) == 1000
    assert page.get_by_text("Temperature 0.5 (below 1)").is_visible()

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "lesson.png"), full_page=True)

    # A one-click experiment: top-k 1 leaves one bar and every draw on it.
    page.get_by_role("button", name="Top-k = 1").click()
    _wait_charts(page, "probs.filter(v => v > 0).length === 1")
    only, only_counts = _bars(page)
    assert only[0] == 100 and only_counts[0] == 1000
    # Streamlit scrolls inside its own container, so a tall viewport is what shows the whole page.
    page.set_viewport_size({"width": 1400, "height": 1900})
    wait_idle(page)
    page.screenshot(path=str(SHOTS / "lesson_topk1_full.png"), full_page=True)


def test_deep_link_on_a_fresh_server_shows_the_app(page: Page) -> None:
    proc, url = start_app()
    try:
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(f"{url}/lesson")
        _wait_charts(page)
        sidebar = page.locator("[data-testid='stSidebar']")
        assert sidebar.get_by_text("How sampling works").is_visible()   # the app's own page titles
        assert sidebar.get_by_text("Prompt mode").is_visible()          # and its shared controls
    finally:
        proc.terminate()
        proc.wait(10)
