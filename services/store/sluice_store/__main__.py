"""``python -m sluice_store``: run the store."""

from __future__ import annotations

import asyncio
import logging
import sys

from sluice_store import config
from sluice_store.server import serve


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load(argv)
    except config.ConfigError as e:
        sys.exit(f"sluice-store: configuration error: {e}")
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.install()
    try:
        asyncio.run(serve(settings))
    except config.ConfigError as e:
        sys.exit(f"sluice-store: configuration error: {e}")
    except OSError as e:
        sys.exit(f"sluice-store: {e}")


if __name__ == "__main__":
    main()
