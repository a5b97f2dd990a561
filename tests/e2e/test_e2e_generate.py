"""The Generate page in a real browser on the bundled SmolLM2: streaming, hover, Stop, download + replay.

Run: .venv/bin/python -m pytest tests/e2e/test_e2e_generate.py -x
"""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from conftest import open_with_prompt, wait_idle
from ui import generate_view as gv

PROMPT = "Once upon a time, in a small village,"   # seed 123, T=1: 30+ tokens before an end-of-text
TOKENS = "[data-testid='stMain'] .sl-tok"


@pytest.fixture
def gen_page(page: Page, app_url: str) -> Page:
    page.set_viewport_size({"width": 1400, "height": 1000})
    open_with_prompt(page, app_url, "Generate", PROMPT)
    return page


def _set_max_tokens(page: Page, n: int) -> None:
    box = page.get_by_label("Max new tokens")
    box.fill(str(n))
    box.press("Enter")
    expect(box).to_have_value(str(n))
    wait_idle(page)


def _generate_button(page: Page):
    return page.get_by_role("button", name=re.compile(r"^\W*Generate$"))


def test_tokens_stream_in_and_hover_shows_alternatives(gen_page: Page) -> None:
    page = gen_page
    _set_max_tokens(page, 20)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    _generate_button(page).click()
    counts, deadline = [], time.time() + 300
    while time.time() < deadline:
        counts.append(page.locator(TOKENS).count())
        if page.get_by_text("Finished:").count():
            break
        time.sleep(0.1)
    assert page.get_by_text("Finished: reached the limit of 20 tokens.").count() == 1, counts
    seen = sorted({c for c in counts if 0 < c < 20})
    # Streaming: the page showed several partial texts on the way, growing, before the final one.
    assert len(seen) >= 3, counts
    positive = [c for c in counts if c]
    assert positive == sorted(positive), counts    # tokens are only ever added while streaming
    wait_idle(page)
    expect(page.locator(TOKENS)).to_have_count(20)

    token = page.locator(TOKENS).nth(1)
    title = token.get_attribute("title")
    assert title.startswith("#2 ") and "Top alternatives" in title and "← chosen" in title
    token.hover()
    # The hover affordance: an outline on the hovered token (the tooltip itself is the browser's).
    assert token.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    expect(page.get_by_text("Inspect a token")).to_be_visible()
    expect(page.locator("[data-testid='stPlotlyChart']")).to_have_count(1)
    assert not [u for u in requests if "127.0.0.1" not in u and "localhost" not in u], requests
    page.screenshot(path="/tmp/shots/e2e_generate.png")


def test_stop_keeps_the_tokens_so_far(gen_page: Page) -> None:
    page = gen_page
    _set_max_tokens(page, 300)
    _generate_button(page).click()
    expect(page.locator(TOKENS).nth(2)).to_be_attached(timeout=120_000)
    page.get_by_role("button", name=re.compile("Stop")).click()
    note = page.get_by_text(re.compile(r"^Stopped after \d+ tokens"))
    expect(note).to_be_visible(timeout=60_000)
    wait_idle(page)
    n = int(re.search(r"after (\d+) tokens", note.inner_text()).group(1))
    assert 3 <= n < 300
    expect(page.locator(TOKENS)).to_have_count(n)
    expect(_generate_button(page)).to_be_enabled()
    expect(page.get_by_role("button", name=re.compile("Stop"))).to_be_disabled()


def test_download_then_replay_the_file(gen_page: Page, tmp_path) -> None:
    page = gen_page
    _set_max_tokens(page, 8)
    _generate_button(page).click()
    expect(page.get_by_text(re.compile("^Finished:"))).to_be_visible(timeout=180_000)
    wait_idle(page)
    shown = page.locator(TOKENS).all_inner_texts()
    with page.expect_download() as info:
        page.get_by_role("button", name=re.compile("Download this run")).click()
    path = tmp_path / "run.json"
    info.value.save_as(path)
    run = gv.parse_run(path.read_bytes())
    assert [gv.token_display(s.text) for s in run.steps] == shown and run.prompt == PROMPT

    page.get_by_text("Replay a saved run").click()
    page.locator("[data-testid='stFileUploader'] input[type=file]").set_input_files(str(path))
    expect(page.get_by_text(re.compile("^Replayed from run.json"))).to_be_visible(timeout=60_000)
    wait_idle(page)
    assert page.locator(TOKENS).all_inner_texts() == shown

    bad = tmp_path / "broken.json"
    bad.write_text('{"format": "sampling-lab-run", "version": 1')
    page.locator("[data-testid='stFileUploader'] input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text(re.compile("Could not replay broken.json: the file is not valid JSON"))).to_be_visible()
