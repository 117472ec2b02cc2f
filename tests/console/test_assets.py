"""The console's vendored libraries are the ones the npm lock file pins (``make console``
copies them; the console fetches nothing at run time), and the page names only local files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NPM = ROOT / "services/gateway/console/node_modules/uplot"
STATIC = ROOT / "services/gateway/sluice_gateway/static/console"


def test_the_vendored_uplot_is_the_locked_one() -> None:
    if not NPM.exists():
        why = "services/gateway/console/node_modules is missing (make test runs npm ci there)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    for shipped, source in (
        ("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("uPlot.LICENSE", "LICENSE"),
    ):
        assert (STATIC / "vendor" / shipped).read_bytes() == (NPM / source).read_bytes(), (
            f"run make console: {shipped}"
        )


def test_the_console_loads_nothing_from_elsewhere() -> None:
    page = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert refs and all(r.startswith("/console/assets/") for r in refs), refs
    script = (STATIC / "app.js").read_text()
    assert not re.search(r"https?://", script)
