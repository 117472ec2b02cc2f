"""The whole mesh on one machine, with an existing service attached, until Ctrl-C.

    python scripts/demo.py [--data DIR] [--seconds N] [--rate R] [--any-ports]

Starts, each as its own process: the store (embedded SQLite) and the gateway, as
`make run` does; orders-app (examples/orders-app, a plain HTTP service that knows nothing
of Sluice) with a sidecar that joins the consumer group "orders-app" and pushes it the
events of the streams "orders-*". Then a producer appends orders and a subscriber
watches them through the gateway, and a line a second says where the events are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from processes import Processes, until_interrupted  # scripts/ is run as a folder of scripts

from sluice import Client, new_event
from sluice.gateway import GatewayClient
from sluice.v1 import streams_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
# The first line each component prints: the addresses it bound.
LISTENING = r"listening on (\S+)"
GATEWAY = r"listening on (\S+), HTTP on (\S+) "
APP = r"listening on :(\d+)"
SIDECAR = r"http (\S+), grpc (\S+),"
COLUMNS = ("seconds", "produced", "store head", "app has", "gateway saw", "sidecar lag")


async def http_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            if r.status >= 400:
                return {}
            body: dict[str, Any] = await r.json()
            return body
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}


def row(values: tuple[object, ...]) -> str:
    return "  ".join(f"{v:>{len(c)}}" for v, c in zip(values, COLUMNS, strict=True))


async def main(a: argparse.Namespace) -> int:
    # The usual ports, or (--any-ports) port 0 everywhere: each component binds a free
    # port and says which on its first line, and the next one is given that address.
    def port(usual: int) -> int:
        return 0 if a.any_ports else usual

    store = f"127.0.0.1:{port(50051)}"
    gateway = f"127.0.0.1:{port(50052)}"
    gateway_http = f"127.0.0.1:{port(8052)}"
    app = port(8080)
    sidecar_http = f"127.0.0.1:{port(3500)}"
    sidecar_grpc = f"127.0.0.1:{port(50061)}"
    py = sys.executable
    env = dict(os.environ)
    mesh = Processes()
    produced: list[str] = []
    watched: set[str] = set()
    async with until_interrupted() as stop, aiohttp.ClientSession() as http:

        async def ok(url: str, key: str = "") -> bool:
            got = await http_json(http, url)
            return bool(got) and (not key or bool(got.get(key)))

        async def store_up() -> bool:
            with contextlib.suppress(Exception):
                async with Client(store, timeout=1) as c:
                    await c.stream_info("demo-probe")
                    return True
            return False

        print("starting: store, gateway, orders-app and its sidecar")
        try:
            db = f"sqlite:///{a.data}/demo.db"
            said = await mesh.start(
                "store", [py, "-m", "sluice_store", "--addr", store, "--db", db], env, None, True, LISTENING
            )
            store = said.group(1) if said else store
            await mesh.ready("store", store_up)
            gw_env = {
                **env,
                "SLUICE_STORE_ADDR": store,
                "SLUICE_GATEWAY_ADDR": gateway,
                "SLUICE_GATEWAY_HTTP_ADDR": gateway_http,
            }
            said = await mesh.start("gateway", [py, "-m", "sluice_gateway"], gw_env, None, True, GATEWAY)
            gateway, gateway_http = (said.group(1), said.group(2)) if said else (gateway, gateway_http)
            await mesh.ready("gateway", lambda: ok(f"http://{gateway_http}/readyz", "ready"))
            app_env = {**env, "PORT": str(app), "HOST": "127.0.0.1"}
            app_script = str(ROOT / "examples/orders-app/app.py")
            said = await mesh.start("orders-app", [py, app_script], app_env, None, True, APP)
            app = int(said.group(1)) if said else app
            await mesh.ready("orders-app", lambda: ok(f"http://127.0.0.1:{app}/healthz"))
            sidecar = [
                *(py, "-m", "sluice_sidecar", "--store", store, "--group", "orders-app"),
                *("--prefixes", "orders-", "--start", "start", "--member-id", "orders-app-1"),
                *("--app-url", f"http://127.0.0.1:{app}/events"),
                *("--http-addr", sidecar_http, "--grpc-addr", sidecar_grpc),
            ]
            said = await mesh.start("sidecar", sidecar, env, None, True, SIDECAR)
            sidecar_http = said.group(1) if said else sidecar_http
            await mesh.ready("sidecar", lambda: ok(f"http://{sidecar_http}/readyz", "ready"))
            print(
                f"store {store}, gateway {gateway} (SSE {gateway_http}),"
                f" orders-app :{app}, sidecar {sidecar_http}"
            )
        except (RuntimeError, TimeoutError) as e:
            print(f"the mesh did not start: {e}", file=sys.stderr)
            await mesh.stop()
            return 1
        print("running: a producer appends orders; Ctrl-C stops everything\n")
        print(row(COLUMNS))

        async with Client(store) as client, GatewayClient(gateway) as gw:
            producing = asyncio.Event()
            producing.set()

            async def produce() -> None:
                n = 0
                while producing.is_set():  # stopped between appends, never in one
                    ev = new_event("OrderPlaced", {"order": n, "total": 10 + n % 7})
                    await client.append(f"orders-{n % 5}", [ev])
                    produced.append(ev.id)
                    n += 1
                    await asyncio.sleep(1 / a.rate)

            live = asyncio.Event()

            async def watch() -> None:
                async for item in gw.watch(stream_prefixes=["orders-"]):
                    if isinstance(item, pb.RecordedEvent):
                        watched.add(item.id)
                    elif isinstance(item, pb.CaughtUp):
                        live.set()

            tasks = [asyncio.create_task(watch())]
            await asyncio.wait_for(live.wait(), 10)  # the subscriber is live: produce
            tasks.append(asyncio.create_task(produce()))
            started = time.monotonic()

            async def report() -> dict[str, Any]:
                stats = await http_json(http, f"http://127.0.0.1:{app}/stats")
                status = await http_json(http, f"http://{sidecar_http}/v1/status")
                lag = sum(int(p.get("lag_events", 0)) for p in status.get("partitions", []))
                head = (await http_json(http, f"http://{gateway_http}/readyz")).get("position", 0)
                elapsed = int(time.monotonic() - started)
                print(
                    row((elapsed, len(produced), head, stats.get("events", 0), len(watched), lag)), flush=True
                )
                return stats

            while not stop.is_set() and not mesh.exited():
                if a.seconds and time.monotonic() - started >= a.seconds:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                await report()
            if stop.is_set():  # Ctrl-C reached the components too: they are stopping already
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await mesh.stop()
                print(f"\nstopped after {len(produced)} orders")
                return 0
            producing.clear()  # stop producing (a cancel could land after an append was sent)
            await asyncio.wait_for(tasks[1], 10)
            total = len(produced)
            stats: dict[str, Any] = {}
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (stats.get("events") != total or len(watched) < total):
                stats = await http_json(http, f"http://127.0.0.1:{app}/stats")
                await asyncio.sleep(0.2)
            await report()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed = mesh.exited()
        await mesh.stop()
    delivered = stats.get("events") == total and len(watched) >= total
    if delivered and not failed:
        print(f"\nall {total} orders reached orders-app through its sidecar, and the gateway subscriber")
        return 0
    print(
        f"\nnot everything arrived: app {stats.get('events')}, gateway {len(watched)} of {total}",
        file=sys.stderr,
    )
    if failed:
        print(f"exited early: {', '.join(failed)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="./data/demo", help="directory of the demo's SQLite file")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at Ctrl-C)")
    parser.add_argument("--rate", type=float, default=20, help="orders appended per second")
    parser.add_argument("--any-ports", action="store_true", help="any free ports instead of the usual ones")
    args = parser.parse_args()
    Path(args.data).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main(args)))
