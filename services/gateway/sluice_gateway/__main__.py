"""``python -m sluice_gateway``: run the gateway."""

from __future__ import annotations

from sluice.process import run_main
from sluice_gateway import config
from sluice_gateway.server import serve


def main(argv: list[str] | None = None) -> None:
    run_main("sluice-gateway", lambda: config.load(argv), serve, lambda s: s.uvloop)


if __name__ == "__main__":
    main()
