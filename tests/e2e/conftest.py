"""Real-browser tests: a Streamlit server on a free loopback port + Debian chromium via Playwright.

Never `playwright install`: the browser is /usr/bin/chromium from apt.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(config, items) -> None:
    """Without chromium, browser tests skip locally; CI sets SAMPLING_LAB_REQUIRE_BROWSER=1 and fails."""
    if os.path.exists(CHROMIUM) or os.environ.get("SAMPLING_LAB_REQUIRE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not found (apt-get install chromium)")
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("streamlit did not start within 60 s")


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """The app on the bundled SmolLM2 (what users get)."""
    proc, url = start_app()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until the script run finished and no skeleton placeholder is left."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout)
    page.wait_for_function("() => !document.querySelector(\"[data-testid='stSkeleton']\")", timeout=timeout)


def open_with_prompt(page, app_url: str, title: str, prompt: str) -> None:
    """Arrive the way a user does: the home page, then the sidebar link; then type the prompt."""
    from playwright.sync_api import expect

    page.goto(app_url)
    wait_idle(page, 180_000)
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
    expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=60_000)
    wait_idle(page)
    box = page.locator("[data-testid='stSidebar'] textarea").first
    box.fill(prompt)
    box.press("Control+Enter")
    wait_idle(page)
