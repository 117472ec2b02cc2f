"""``python -m sluice_gateway``: run the gateway (or, with ``--workers``, several)."""

from __future__ import annotations

import os
import sys

from sluice.process import run_main
from sluice.settings import ConfigError
from sluice_gateway import config, workers
from sluice_gateway.server import serve


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = config.load(args)
    except ConfigError:
        settings = None  # run_main says what is wrong
    if settings is not None and workers.WORKER_ENV not in os.environ:
        count = settings.workers or workers.usable_cpus()
        if count > 1:
            addrs = {"--addr": settings.addr, "--http-addr": settings.http_addr}
            if settings.health_addr:
                addrs["--health-addr"] = settings.health_addr
            workers.supervise(args, count, {k: v for k, v in addrs.items() if v}, settings.store)
            return
    run_main("sluice-gateway", lambda: settings or config.load(args), serve, lambda s: s.uvloop)


if __name__ == "__main__":
    main()
