"""Settings every process shares the rules of: what each refuses at start."""

from __future__ import annotations

import pytest

from sluice.settings import ConfigError
from sluice_gateway import config as gateway_config
from sluice_sidecar import config as sidecar_config
from sluice_store import config as store_config

SIDECAR = ["--store", "127.0.0.1:1", "--group", "g", "--app-url", "http://127.0.0.1:1/events"]


def test_listen_addresses_take_a_port_from_0_to_65535_in_every_process() -> None:
    """gRPC takes a port past 65535 modulo 65536: --addr 127.0.0.1:99999 listened on 34463."""
    for load, flag in (
        (lambda argv: store_config.load(argv, env={}), "--addr"),
        (lambda argv: store_config.load(argv, env={}), "--health-addr"),
        (lambda argv: store_config.load(argv, env={}), "--metrics-addr"),
        (lambda argv: gateway_config.load(argv, env={}), "--http-addr"),
        (lambda argv: sidecar_config.load([*SIDECAR, *argv], env={}), "--grpc-addr"),
        (lambda argv: sidecar_config.load([*SIDECAR, *argv], env={}), "--probe-addr"),
    ):
        for good in ("127.0.0.1:0", "127.0.0.1:65535", "[::1]:8080"):
            assert getattr(load([flag, good]), flag[2:].replace("-", "_")) == good
        for bad in ("127.0.0.1:65536", "127.0.0.1:99999", "127.0.0.1", "host:port", "127.0.0.1:-1"):
            with pytest.raises(ConfigError, match=f"{flag}: expected host:port with a port from 0 to 65535"):
                load([flag, bad])
