"""Issue 18 in a real browser: share links (a fresh context reproduces the view), presenter mode and its
keyboard keys, the guess round, the phone layout (390x844) and the dark theme. Screenshots go to
/tmp/shots (look at them)."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import wait_idle

CHART = "[data-testid='stPlotlyChart'] .js-plotly-plot"
TEXT_SO_FAR = "[data-testid='stHtml']"
GENERATED_TOKENS = "[data-testid='stMain'] .sl-tok"   # the Generate page's clickable tokens (ui/token_picker.py)
SHOTS = "/tmp/shots"


def open_url(page, url: str, width: int = 1400, height: int = 1000) -> None:
    page.set_viewport_size({"width": width, "height": height})
    page.goto(url)
    wait_idle(page, 180_000)
    page.wait_for_selector(CHART, timeout=180_000)
    wait_idle(page)


def text_so_far(page) -> str:
    return page.locator(TEXT_SO_FAR).first.inner_text().rstrip("▌")   # without the cursor mark


def chart_bars(page) -> dict:
    return page.evaluate(f"""() => {{ const gd = document.querySelector("{CHART}");
        return {{y: gd.data[0].y, raw: gd.data[0].x, filtered: gd.data[1].x}}; }}""")


def press(page, key: str) -> None:
    page.evaluate("() => document.activeElement?.blur()")   # Streamlit ignores keys typed into a field
    page.keyboard.press(key)
    page.wait_for_timeout(300)
    wait_idle(page)


def temperature(page):
    return page.locator("[data-testid='stSlider']").filter(has_text="Temperature").get_by_role("slider")


def cool(page, steps: int) -> None:
    """Lower the sidebar temperature by `steps` slider steps of 0.05."""
    temperature(page).focus()
    for _ in range(steps):
        page.keyboard.press("ArrowLeft")
        page.wait_for_timeout(100)
    page.wait_for_timeout(300)
    wait_idle(page)


def luminance(css: str) -> float:
    """WCAG relative luminance of a CSS rgb()/rgba() colour."""
    r, g, b = (float(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def query(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_link_round_trip_in_a_fresh_context(browser, app_url):
    sender = browser.new_context()
    page = sender.new_page()
    open_url(page, app_url)
    cool(page, 4)   # 1.00 -> 0.80
    for _ in range(3):
        page.get_by_role("button", name="Sample").click()
        wait_idle(page)
    page.wait_for_function("() => new URLSearchParams(location.search).get('a')?.split('.').length === 3")
    wait_idle(page)   # the address is written before the page draws: let the run finish
    params = query(page)
    assert params["t"] == "0.8" and params["m"] == "smollm2" and params["seed"] == "123"
    link, text, bars = page.url, text_so_far(page), chart_bars(page)
    page.get_by_role("button", name="Copy link").click()
    assert page.locator("[data-testid='stCode']").inner_text().strip() == link
    sender.close()

    fresh = browser.new_context()   # no cookies, no session: only the link
    page = fresh.new_page()
    open_url(page, link)
    assert text_so_far(page) == text
    assert chart_bars(page) == bars
    assert float(temperature(page).input_value()) == pytest.approx(0.8)
    assert page.url == link   # the address bar already holds the same state
    fresh.close()


def test_hostile_link_gives_defaults_and_a_message(page, app_url):
    hostile = '<img src=x onerror="window.__pwned=1">**bold** [a](http://127.0.0.1:9/leak)'
    page.goto(f"{app_url}/?t=abc&k=-1&o=__class__&zz=1&a=s99999999999&p=" + re.sub(" ", "%20", hostile)
              .replace("&", "%26").replace("#", "%23").replace('"', "%22"))
    wait_idle(page, 180_000)
    page.wait_for_selector(CHART, timeout=180_000)
    warning = page.locator("[data-testid='stAlert']").filter(has_text="This link had settings")
    assert "t is not a number" in warning.inner_text() and "1 unknown parameter ignored" in warning.inner_text()
    assert page.locator("[data-testid='stException']").count() == 0
    assert hostile in text_so_far(page)                  # the prompt came through, shown literally
    assert page.locator("img[src='x']").count() == 0 and page.evaluate("() => window.__pwned") is None
    assert page.locator("a[href*='leak']").count() == 0
    assert query(page)["t"] == "1" and "zz" not in query(page)   # defaults, and the bad values left the URL


def test_presenter_keyboard_stepping(page, app_url):
    open_url(page, app_url, 1024, 768)
    page.get_by_role("button", name="Keep these settings to flip to").click()
    wait_idle(page)
    cool(page, 10)   # 1.00 -> 0.50
    press(page, "p")   # presenter mode, from the keyboard
    page.wait_for_function("() => new URLSearchParams(location.search).get('present') === '1'")
    page.wait_for_selector(CHART)
    wait_idle(page)
    page.screenshot(path=f"{SHOTS}/e2e_presenter_1024.png")
    assert not page.locator("[data-testid='stSidebar']").is_visible()
    sizes = page.evaluate("""() => ({
        body: parseFloat(getComputedStyle(document.querySelector("[data-testid='stMainBlockContainer'] [data-testid='stText']")).fontSize),
        ticks: [...document.querySelectorAll("[data-testid='stPlotlyChart'] .ytick text, [data-testid='stPlotlyChart'] .xtick text")].map(t => parseFloat(t.style.fontSize)),
        chart: document.querySelector("[data-testid='stPlotlyChart']").getBoundingClientRect().toJSON()})""")
    assert sizes["body"] >= 24 and min(sizes["ticks"]) >= 18
    assert sizes["chart"]["bottom"] <= 768, f"the chart ends at {sizes['chart']['bottom']} px"

    start = text_so_far(page)
    press(page, "s")   # sample
    after_s = text_so_far(page)
    assert after_s.startswith(start) and len(after_s) > len(start), (start, after_s)
    top_token = chart_bars(page)["y"][0].replace("␣", " ")
    press(page, "t")   # take the top choice
    assert text_so_far(page) == after_s + top_token
    press(page, "u")   # undo
    assert text_so_far(page) == after_s
    press(page, "x")   # reset
    assert text_so_far(page) == start
    assert query(page).get("a") is None

    assert "T = 0.5" in page.locator("[data-testid='stText']").first.inner_text()
    press(page, "f")   # flip to the kept settings
    assert "T = 1" in page.locator("[data-testid='stText']").first.inner_text() and query(page)["t"] == "1"

    press(page, "g")   # the guess round: the chart (which gives the answer away) is hidden
    page.wait_for_selector(".st-key-present_guess_pick input[type='radio']")
    options = page.locator(".st-key-present_guess_pick input[type='radio']")
    assert options.count() == 5 and page.locator(".st-key-nt_chart").count() == 0
    assert not page.locator(".st-key-nt_pick").is_visible(), "the picker shows probabilities: hidden"
    options.nth(1).click(force=True)   # the input sits under its styled label
    wait_idle(page)
    press(page, "v")
    reveal = page.locator("[data-testid='stText']").filter(has_text="The room picked").inner_text()
    assert "raw" in reveal and "The model's favourite" in reveal
    page.screenshot(path=f"{SHOTS}/e2e_presenter_guess_1024.png")


@pytest.mark.parametrize("path", ["/", "/generate?n=12&run=1"])
def test_phone_layout(browser, app_url, path):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                              device_scale_factor=2)
    page = ctx.new_page()
    page.goto(app_url + path)
    wait_idle(page, 180_000)
    page.wait_for_selector(CHART, timeout=180_000)
    wait_idle(page)
    layout = page.evaluate("""() => ({
        width: document.documentElement.scrollWidth,
        modebars: [...document.querySelectorAll('.modebar-container')].map(m => getComputedStyle(m).display),
        legends: [...document.querySelectorAll('.legend')].map(l => l.getBoundingClientRect().right),
        tables: [...document.querySelectorAll("[data-testid='stDataFrame']")].map(t => t.getBoundingClientRect().right),
    })""")
    assert layout["width"] <= 390, "nothing wider than the phone"
    assert layout["modebars"] and set(layout["modebars"]) == {"none"}, "no plotly toolbar over the legends"
    assert layout["legends"] and max(layout["legends"]) <= 390
    assert max(layout["tables"], default=0) <= 390
    name = "next_token" if path == "/" else "generate"
    page.screenshot(path=f"{SHOTS}/e2e_phone_{name}_top.png")
    page.locator(CHART).first.scroll_into_view_if_needed()   # the app scrolls inside its own container
    page.screenshot(path=f"{SHOTS}/e2e_phone_{name}_chart.png")
    if path == "/":
        page.locator("[data-testid='stDataFrame']").first.scroll_into_view_if_needed()
        page.screenshot(path=f"{SHOTS}/e2e_phone_{name}_table.png")
    ctx.close()


def test_dark_theme(browser, app_url):
    ctx = browser.new_context(color_scheme="dark", viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.goto(app_url + "/generate?n=12&run=1")
    wait_idle(page, 180_000)
    page.wait_for_selector(GENERATED_TOKENS, timeout=180_000)
    wait_idle(page)
    # the tokens live in a component's shadow root: Playwright's locator reaches them, querySelector does not
    pairs = page.locator(GENERATED_TOKENS).evaluate_all(
        "els => els.map(s => { const st = getComputedStyle(s); return [st.color, st.backgroundColor]; })")
    app = page.locator("[data-testid='stApp']").evaluate(
        "a => { const st = getComputedStyle(a); return [st.color, st.backgroundColor]; }")
    colours = {"background": luminance(app[1]), "text": contrast(*app), "tokens": [contrast(*p) for p in pairs]}
    assert colours["background"] < 0.05, "the viewer prefers dark: the app is dark"
    assert colours["text"] >= 7
    assert colours["tokens"] and min(colours["tokens"]) >= 4.5, colours["tokens"]
    page.screenshot(path=f"{SHOTS}/e2e_dark_generate.png", full_page=True)
    ctx.close()
