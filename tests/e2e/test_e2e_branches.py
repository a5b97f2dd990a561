"""Tap to inspect, Copy text and branches on the Generate page, in a real browser on the bundled SmolLM2.

Run: .venv/bin/python -m pytest tests/e2e/test_e2e_branches.py -x
"""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Browser, Page, expect

from conftest import open_with_prompt, wait_idle

PROMPT = "Once upon a time, in a small village,"
TOKENS = "[data-testid='stMain'] .sl-tok"
SHOTS = os.environ.get("SAMPLING_LAB_SHOTS")   # a folder to keep screenshots in (optional)


def _shot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name), full_page=True)


def _open_generate(page: Page, app_url: str, tokens: int, phone: bool = False) -> None:
    """The Generate page with a finished run; on a phone (sidebar folded away) by its address, with the
    default prompt."""
    if phone:
        page.goto(f"{app_url}/generate")
        expect(page.get_by_role("heading", name="Generate")).to_be_visible(timeout=180_000)
    else:
        open_with_prompt(page, app_url, "Generate", PROMPT)
    wait_idle(page)
    box = page.get_by_label("Max new tokens")
    box.fill(str(tokens))
    box.press("Enter")
    expect(box).to_have_value(str(tokens))
    wait_idle(page)
    page.get_by_role("button", name=re.compile(r"^\W*Generate$")).click()
    expect(page.get_by_text(re.compile("^Finished:"))).to_be_visible(timeout=180_000)
    wait_idle(page)
    expect(page.locator(TOKENS)).to_have_count(tokens)


def _inspector(page: Page):
    return page.locator(".st-key-gen_inspector")


def _inspected(page: Page):
    """The inspector's token selector (a click on a token sets it)."""
    return _inspector(page).get_by_role("combobox", name="Token", exact=True)


def test_click_a_token_opens_its_alternatives_and_copy_text(page: Page, app_url: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _open_generate(page, app_url, 12)
    panel = _inspector(page)
    expect(panel.locator("[data-testid='stDataFrame']")).to_have_count(0)   # nothing picked yet
    token = page.locator(TOKENS).nth(4)
    token.click()
    wait_idle(page)
    expect(_inspected(page)).to_have_value(re.compile(r"^#5 "))    # the token selector now says #5
    expect(panel.get_by_text("Before filtering: the model's raw top 10")).to_be_visible()
    expect(panel.get_by_text("After filtering: what the sampler drew from")).to_be_visible()
    expect(panel.locator("[data-testid='stDataFrame']")).to_have_count(2)
    expect(page.locator(TOKENS).nth(4)).to_have_class(re.compile("sl-sel"))   # the picked token is marked
    _shot(page, "inspect_desktop_1400x1000.png")
    # keyboard: a token is a button; Enter inspects it
    page.locator(TOKENS).nth(1).focus()
    page.keyboard.press("Enter")
    wait_idle(page)
    expect(_inspected(page)).to_have_value(re.compile(r"^#2 "))
    # Copy text puts the generated text (not the prompt) on the clipboard
    shown = "".join(page.locator(TOKENS).all_text_contents())
    page.get_by_role("button", name="Copy text").click()
    expect(page.get_by_text("Copied.")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied and copied.replace("\n", "↵\n") == shown.replace("∅", "")


def test_tap_a_token_on_a_phone(browser: Browser, app_url: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
                                  device_scale_factor=2)
    page = context.new_page()
    try:
        _open_generate(page, app_url, 10, phone=True)
        page.locator(TOKENS).nth(2).tap()
        wait_idle(page)
        panel = _inspector(page)
        expect(_inspected(page)).to_have_value(re.compile(r"^#3 "))
        expect(panel.get_by_text("Before filtering: the model's raw top 10")).to_be_visible()
        panel.scroll_into_view_if_needed()
        box = panel.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1   # the panel fits the phone's width
        _shot(page, "inspect_phone_390x844.png")
    finally:
        context.close()


def test_branch_from_an_alternative_and_the_tree(page: Page, app_url: str) -> None:
    page.set_viewport_size({"width": 1400, "height": 1000})
    _open_generate(page, app_url, 12)
    original = page.locator(TOKENS).all_text_contents()
    page.locator(TOKENS).nth(3).click()
    wait_idle(page)
    panel = _inspector(page)
    expect(_inspected(page)).to_have_value(re.compile(r"^#4 "))
    first_alt = panel.get_by_role("combobox", name="Take this token instead").input_value().split("  ·  ")[0]
    panel.get_by_role("button", name=re.compile("Branch from here")).click()
    expect(page.get_by_text("Explored branches")).to_be_visible(timeout=180_000)
    wait_idle(page)
    # original and branch side by side: 12 tokens each, equal before the split, the split token marked
    texts = page.locator("[data-testid='stMain'] .sl-gen")
    expect(texts).to_have_count(2)
    left, right = texts.nth(0).locator(".sl-tok"), texts.nth(1).locator(".sl-tok")
    expect(left).to_have_count(12)
    expect(right).to_have_count(12)
    assert left.all_text_contents() == original
    assert right.all_text_contents()[:3] == original[:3]
    assert right.nth(3).inner_text() != original[3]
    assert right.nth(3).inner_text().replace("\n", "") == first_alt.replace("␣", " ", 1)   # the alternative taken
    expect(right.nth(3)).to_have_class(re.compile("sl-split"))
    tree = page.locator(".sl-tree")
    expect(tree.locator(".sl-node")).to_have_count(2)
    expect(tree).to_contain_text(re.compile(r"branch 1 from the original at #4: .+ instead of .+ · \d.*% after filters"))
    _shot(page, "branch_desktop_1400x1000.png")
    # a branch from the branch's own chosen token: the tree grows a level
    right.nth(3).click()
    wait_idle(page)
    expect(panel.get_by_text(re.compile(r"^You chose"))).to_be_visible()
    panel.get_by_role("button", name=re.compile("Branch from here")).click()
    expect(tree.locator(".sl-node")).to_have_count(3, timeout=180_000)
    wait_idle(page)
    expect(tree).to_contain_text("branch 2 from the original at #4")
    right.nth(6).click()
    wait_idle(page)
    panel.get_by_role("button", name=re.compile("Branch from here")).click()
    expect(tree.locator(".sl-node")).to_have_count(4, timeout=180_000)
    wait_idle(page)
    expect(tree).to_contain_text("branch 3 from branch 2 at #7")
    _shot(page, "branch_tree_1400x1000.png")
