"""The console in a real browser: Debian's Chromium driven by Playwright (from PyPI; its
own browser download is never used), against a real store, gateway and sidecar."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.conftest import sidecars, store_proc  # noqa: F401 (fixtures used here too)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
#: Where the tests leave a screenshot of each page they visit.
SHOTS = ROOT / "build" / "console-screenshots"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        why = "chromium is not installed (make test installs it as root: scripts/system-packages.sh)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"], timeout=60_000
        )
        try:
            yield b
        finally:
            await b.close()


async def shot(page: Any, name: str) -> Path:
    """A full-page screenshot as build/console-screenshots/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
