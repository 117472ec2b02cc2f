"""``python -m sluice_sidecar``: run a sidecar."""

from __future__ import annotations

import asyncio
import logging
import sys

from sluice_sidecar import config
from sluice_sidecar.server import serve


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load(argv)
    except config.ConfigError as e:
        sys.exit(f"sluice-sidecar: configuration error: {e}")
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.install()
    try:
        asyncio.run(serve(settings))
    except OSError as e:
        sys.exit(f"sluice-sidecar: {e}")


if __name__ == "__main__":
    main()
