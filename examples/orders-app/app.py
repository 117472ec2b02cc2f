"""orders-app: an existing HTTP service that fulfils orders. It knows nothing of Sluice.

It takes events as plain HTTP POSTs in CloudEvents binary mode (``ce-*`` headers, the
event data as the body) on ``/events``, as many platforms deliver them, and answers 204.
It counts what it got (once per event id: deliveries are at least once) and shows the
counts on ``GET /stats``. Standard library only.

    PORT=8080 python app.py
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Orders:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.deliveries = 0
        self.by_type: Counter[str] = Counter()
        self.last: dict[str, str] = {}

    def take(self, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.deliveries += 1
            event_id = headers.get("ce-id", "")
            if event_id in self.seen:
                return  # a redelivery: already handled
            self.seen.add(event_id)
            self.by_type[headers.get("ce-type", "")] += 1
            self.last = {"id": event_id, "subject": headers.get("ce-subject", ""), "data": body.decode()}

    def stats(self) -> dict[str, object]:
        with self.lock:
            return {
                "events": len(self.seen),
                "deliveries": self.deliveries,
                "by_type": dict(self.by_type),
                "last": self.last,
            }


ORDERS = Orders()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/events":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ORDERS.take({k.lower(): v for k, v in self.headers.items()}, body)
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._json({"ok": True})
        elif self.path == "/stats":
            self._json(ORDERS.stats())
        else:
            self.send_error(404)

    def _json(self, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per event would drown the log


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), port), Handler)
    stop = threading.Event()

    def shutdown(*_: object) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"orders-app listening on :{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
