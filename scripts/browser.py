"""A real browser on a report page: Debian's chromium, driven by Playwright for Python.

Shared by scripts/screenshot_report.py (the README's picture) and tests/experiments/test_report_browser.py
(the page loads, its pictures show, its table sorts). It lives here, not in common/ (the product's
ground floor imports no third-party library, and Playwright is a test extra) nor in tests/ (a script
should not import the tests).

The browser is the system's chromium (`apt-get install chromium`), never Playwright's own download
(`playwright install` needs a CDN this project's machines cannot reach)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INSTALL_CHROMIUM = "install Debian's: apt-get update && apt-get install -y chromium (.ci/run does this)"
INSTALL_PLAYWRIGHT = (
    "install it with the test extra: .venv/bin/pip install -e '.[test]' "
    "(no `playwright install`: the system's chromium is used)"
)


class BrowserMissing(RuntimeError):
    """No chromium on PATH, or no Playwright: the message says how to install it."""


def chromium_path() -> str:
    """The system's chromium, or BrowserMissing saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(f"no chromium on PATH: {INSTALL_CHROMIUM}")


@contextmanager
def open_page(html: Path, width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright Page (headless chromium, `width` x `height` viewport) with the file `html` loaded,
    its pictures included; the browser is closed on leaving."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise BrowserMissing(f"Playwright for Python is not installed: {INSTALL_PLAYWRIGHT}") from error
    with sync_playwright() as playwright:
        # --no-sandbox: chromium refuses to run as root with its sandbox (CI runs as root)
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()


def screenshot(html: Path, out_png: Path, width: int = 1280) -> Path:
    """A full-page PNG of the page `html`, `width` pixels wide, written to `out_png`."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with open_page(html, width=width) as page:
        page.screenshot(path=str(out_png), full_page=True)
    return out_png
