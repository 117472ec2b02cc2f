"""A plain HTTP app for the sidecar benchmark: counts the events pushed to it.

POST /events        one event (CloudEvents binary mode) or a batch (cloudevents-batch+json)
GET  /count         how many events arrived since the last reset, and when the first and
                    the latest arrived (monotonic seconds), so rates leave out start-up
POST /reset         start counting again
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

count = 0
first = last = 0.0


async def events(request: web.Request) -> web.Response:
    global count, first, last
    body = await request.read()
    now = time.monotonic()
    if not count:
        first = now
    if request.headers.get("content-type") == "application/cloudevents-batch+json":
        count += len(json.loads(body))
    else:
        count += 1
    last = now
    return web.Response(status=204)


async def get_count(_: web.Request) -> web.Response:
    return web.json_response({"count": count, "first": first, "last": last})


async def reset(_: web.Request) -> web.Response:
    global count, first, last
    count, first, last = 0, 0.0, 0.0
    return web.json_response({"count": 0})


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:port (0: any free port), announcing the address bound."""
    app = web.Application()
    app.add_routes([web.post("/events", events), web.get("/count", get_count), web.post("/reset", reset)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    print(f"bench app listening on {host}:{bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))


if __name__ == "__main__":
    main()
