"""The sidecar's settings: what it refuses at start, before it talks to anyone."""

from __future__ import annotations

import pytest

from sluice.names import MAX_MEMBER_ID
from sluice.settings import ConfigError
from sluice_sidecar import config

BASE = ["--store", "127.0.0.1:1", "--group", "g", "--app-url", "http://127.0.0.1:1/events"]


def test_a_member_id_the_store_would_refuse_stops_the_sidecar_at_start() -> None:
    longest = "p" * MAX_MEMBER_ID
    assert config.load([*BASE, "--member-id", longest], env={}).member_id == longest
    for bad in ("p" * (MAX_MEMBER_ID + 1), "pod\n1"):
        with pytest.raises(ConfigError, match=r"member[-_]id"):
            config.load([*BASE, "--member-id", bad], env={})


def test_the_member_id_defaults_to_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "billing-7d9f")
    assert config.load(BASE, env={}).member_id == "billing-7d9f"
    monkeypatch.setenv("POD_NAME", "p" * (MAX_MEMBER_ID + 1))
    with pytest.raises(ConfigError, match=r"member[-_]id"):
        config.load(BASE, env={})
