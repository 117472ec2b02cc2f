"""The fault suite: real processes killed, disks filled, garbage sent; each test reports
its figures in a table at the end of the run.

``make test`` runs a CI-sized number of kill cycles (SLUICE_FAULT_CYCLES, default 3);
``make faults`` runs this folder alone with 20.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

CYCLES = int(os.environ.get("SLUICE_FAULT_CYCLES", "3"))

_rows: list[dict[str, Any]] = []


class Report:
    """One row of the fault table per test: what was done, and what came of it."""

    def __init__(self, name: str) -> None:
        self.row: dict[str, Any] = {"fault": name}

    def __setitem__(self, key: str, value: Any) -> None:
        self.row[key] = value


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    r = Report(request.node.name)
    yield r
    if len(r.row) > 1:
        _rows.append(r.row)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _rows:
        return
    terminalreporter.section("fault suite")
    for row in _rows:
        terminalreporter.write_line("  ".join(f"{k}={v}" for k, v in row.items()))
