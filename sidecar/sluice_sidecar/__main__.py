"""``python -m sluice_sidecar``: run a sidecar."""

from __future__ import annotations

from sluice.process import run_main
from sluice_sidecar import config
from sluice_sidecar.server import serve


def main(argv: list[str] | None = None) -> None:
    run_main("sluice-sidecar", lambda: config.load(argv), serve)


if __name__ == "__main__":
    main()
