"""Fan-out benchmark: the Sluice gateway beside NATS core, with the same Python subscribers.

Subscribers run in two worker processes (``python bench/fanout.py worker ...``), each
subscriber on its own connection (``--per-channel``: Sluice subscribers sharing one): gRPC
Watch streams through ``GatewayClient`` for Sluice, nats-py subscriptions for NATS. A
delivery is one event reaching one subscriber.

- throughput: the producer sends as fast as it can (Sluice: batched appends to the store;
  NATS: publishes, flushed every 1,000); deliveries/s = deliveries / (last - first receipt).
- latency: the producer sends 1,000 events/s; each event carries its send time, and every
  subscriber records receipt - send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

SIZE = 200


def stamped(i: int) -> bytes:
    """A 200-byte payload whose first 8 bytes are the send time (ns since the epoch)."""
    return time.time_ns().to_bytes(8, "big") + i.to_bytes(8, "big") + b"x" * (SIZE - 16)


# -- worker (a subprocess holding many subscribers) -----------------------------------------


async def worker(a: argparse.Namespace) -> None:
    received = [0] * a.subs
    messages = 0
    lat: list[int] = []
    hop: list[int] = []  # Sluice: store commit -> subscriber, from each message's oldest event
    first = last = 0
    finished = asyncio.Event()
    done = 0
    ready = 0
    all_ready = asyncio.Event()

    def got(i: int, datas: list[bytes]) -> None:
        nonlocal first, last, done, messages
        messages += 1
        now = time.time_ns()
        if not first:
            first = now
        last = now
        if a.latency and a.form == "full":
            lat.extend((now - int.from_bytes(d[:8], "big")) // 1000 for d in datas)
        before = received[i]
        received[i] += len(datas)
        if before < a.expect <= received[i]:
            done += 1
            if done == a.subs:
                finished.set()

    def on_ready() -> None:
        nonlocal ready
        ready += 1
        if ready == a.subs:
            all_ready.set()

    errors: list[str] = []

    def failed(task: asyncio.Task[None]) -> None:
        """A subscriber that ended with an error: said once per kind on stderr."""
        if not task.cancelled() and (e := task.exception()) is not None:
            what = f"{type(e).__name__}: {e}"
            if what not in errors:
                errors.append(what)
                print(f"a subscriber failed: {what}", file=sys.stderr, flush=True)

    closers: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    if a.kind == "sluice":
        from sluice.gateway import GatewayClient
        from sluice.v1 import gateway_pb2 as gwpb

        async def sub(i: int, g: GatewayClient) -> None:
            req = gwpb.WatchRequest(stream_prefixes=["fan-"])
            if a.form == "notification":
                req.form = gwpb.DELIVERY_FORM_NOTIFICATION
            req.live.SetInParent()
            async for msg in g.watch_messages(req):
                kind = msg.WhichOneof("content")
                if kind == "events":
                    events = msg.events.events
                    if a.latency and events:
                        # The message's oldest event only: reading a Timestamp costs the
                        # subscriber ~2 us an event, which at 100,000 deliveries/s was a
                        # fifth of a core of the machine under test.
                        hop.append((time.time_ns() - events[0].created.ToNanoseconds()) // 1000)
                    with_data = a.latency and a.form == "full"  # notifications carry no send time
                    got(i, [e.data for e in events] if with_data else [b""] * len(events))
                elif kind == "caught_up":
                    on_ready()

        for i in range(a.subs):
            if i % a.per_channel == 0:
                g = GatewayClient(a.addr, options=[("grpc.use_local_subchannel_pool", 1)])
                closers.append(g.close)
            tasks.append(asyncio.create_task(sub(i, g)))
            tasks[-1].add_done_callback(failed)
    else:
        import nats

        for i in range(a.subs):
            nc = await nats.connect(a.addr)
            closers.append(nc.close)

            def cb(i: int) -> Any:
                async def handle(msg: Any) -> None:
                    got(i, [msg.data])

                return handle

            await nc.subscribe(
                "fan.events", cb=cb(i), pending_msgs_limit=2_000_000, pending_bytes_limit=1 << 30
            )
            await nc.flush()
            on_ready()
    try:
        await asyncio.wait_for(all_ready.wait(), a.ready_timeout)
    except TimeoutError:
        raise SystemExit(f"{ready} of {a.subs} subscribers ready after {a.ready_timeout:g} s") from None
    print("ready", flush=True)
    # Done when every subscriber has everything, or nothing arrived for a while.
    deadline = time.monotonic() + a.timeout
    while not finished.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(finished.wait(), 1.0)
        except TimeoutError:
            if last and time.time_ns() - last > 5e9:
                break
    cpu = time.process_time()
    result = {
        "received": sum(received),
        "messages": messages,
        "first": first,
        "last": last,
        "cpu": cpu,
        "lat": lat,
        "hop": hop,
    }
    print(json.dumps(result), flush=True)
    for t in tasks:
        t.cancel()
    for close in closers:
        try:
            await close()
        except Exception:
            pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["worker"])
    p.add_argument("--kind", choices=["sluice", "nats"], required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--subs", type=int, required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--latency", action="store_true")
    p.add_argument("--form", choices=["full", "notification"], default="full")
    p.add_argument("--per-channel", type=int, default=1, help="Sluice subscribers sharing a connection")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--ready-timeout", type=float, default=120, help="seconds for every subscriber to start")
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(worker(a))


if __name__ == "__main__":
    main()
