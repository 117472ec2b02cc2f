"""``python -m sluice_store``: run the store."""

from __future__ import annotations

from sluice.process import run_main
from sluice_store import config
from sluice_store.server import serve


def main(argv: list[str] | None = None) -> None:
    run_main("sluice-store", lambda: config.load(argv), serve, lambda s: s.uvloop)


if __name__ == "__main__":
    main()
