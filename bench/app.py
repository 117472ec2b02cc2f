"""A plain HTTP app for the sidecar benchmark: counts the events pushed to it.

POST /events        one event (CloudEvents binary mode) or a batch (cloudevents-batch+json)
GET  /count         how many events arrived since the last reset, and when the first and
                    the latest arrived (monotonic seconds), so rates leave out start-up
POST /reset         start counting again
"""

from __future__ import annotations

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


def main() -> None:
    app = web.Application()
    app.add_routes([web.post("/events", events), web.get("/count", get_count), web.post("/reset", reset)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=lambda *_: None)


if __name__ == "__main__":
    main()
