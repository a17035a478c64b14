"""Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's Python package) against the dashboard."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "client"))
from client_helpers import api, live, teacher_pth  # noqa: E402,F401  (fixtures)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, token=None) → a page in a fresh context; with a token it starts signed in. Errors that the
    page's scripts throw fail the test."""
    contexts, errors = [], []

    def _open(url: str, token: str | None = None):
        context = browser.new_context(accept_downloads=True)
        context.set_default_timeout(15_000)
        if token:
            context.add_init_script(f"localStorage.setItem('ttm.token', {token!r})")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        page.goto(url)
        return page

    yield _open
    for c in contexts:
        c.close()
    assert not errors, errors
