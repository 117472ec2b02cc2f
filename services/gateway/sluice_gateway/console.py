"""The web console at ``/console/``: static files shipped inside this package (no CDN, nothing
fetched at run time; uPlot is vendored from npm by ``make console``), speaking only the
gateway's HTTP API, so every action it offers goes through the same authentication and
authorization as any other caller's."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from sluice_gateway.config import Settings

STATIC = Path(__file__).parent / "static" / "console"


def add_routes(app: web.Application, settings: Settings) -> None:
    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/console/")

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(_: web.Request) -> web.Response:
        return web.json_response({"trace_url": settings.console_trace_url})

    app.router.add_get("/console", redirect)
    app.router.add_get("/console/", index)
    app.router.add_get("/console/config.json", config)
    app.router.add_static("/console/assets/", STATIC, show_index=False, follow_symlinks=False)
