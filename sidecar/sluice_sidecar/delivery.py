"""Getting events to the app: HTTP push (CloudEvents), gRPC callback, or pull with credits.

Every deliverer answers with a typed result: ack, retry (maybe after a delay the app
asked for), or dead-letter with a reason.

HTTP status contract (documented in the README):

* 2xx: handled. A ``Sluice-Outcome: retry`` or ``Sluice-Outcome: dead-letter`` header
  overrides this.
* 408, 409, 425, 429 and 5xx: retry, after ``Retry-After`` when the app sends it.
* 3xx: retry as well; a redirect is not followed (the app's URL is wrong, not the event).
* Any other 4xx: the app refuses the event itself; it goes to the dead-letter stream at
  once, with the status and the start of the body as the reason.
* No answer in time: retry.
* No connection at all (refused, reset before an answer, not listening yet): the app is
  down, which says nothing about the event. The delivery is not counted as an attempt;
  the member pauses delivery until ``probe()`` finds the app answering again.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import dataclasses
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import grpc
from opentelemetry import propagate, trace

from sluice import cloudevent
from sluice.v1 import sidecar_pb2 as spb
from sluice.v1 import sidecar_pb2_grpc as spb_grpc
from sluice.v1 import streams_pb2 as pb
from sluice_sidecar import push

ACK, RETRY, DEAD_LETTER = spb.ACK, spb.RETRY, spb.DEAD_LETTER
RETRY_STATUSES = {408, 409, 425, 429}


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: int
    reason: str = ""
    retry_after: float | None = None
    app_down: bool = False  # nothing answered: not an attempt; wait for the app


def _host_port(target: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a ``host:port`` target or a URL's authority."""
    authority = target.split("://", 1)[-1].lstrip("/").split("/", 1)[0]
    if authority.startswith("["):  # [IPv6]:port
        host, _, rest = authority[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = authority.partition(":")
    return host or "127.0.0.1", int(port) if port else default_port


async def _connects(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts a TCP connection at host:port."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


ACKED = Result(ACK)


class Deliverer(abc.ABC):
    """Hands events to the app."""

    @abc.abstractmethod
    async def deliver(self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int) -> Result:
        """Deliver events of one partition (one event, or a batch in order); the outcome covers all."""

    async def probe(self) -> bool:
        """Whether the app answers now (asked while delivery is paused for a down app)."""
        return True

    async def close(self) -> None:  # noqa: B027 (most deliverers hold nothing to release)
        """Release connections."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class HttpDeliverer(Deliverer):
    """CloudEvents 1.0 over HTTP: binary mode for one event, batched JSON for several.

    Plain ``http://`` app URLs are pushed to by ``push.HttpPush`` (keep-alive connections,
    llhttp); others (``https``, credentials in the URL) by aiohttp, which also probes."""

    def __init__(self, url: str, group: str, timeout: float, health_path: str = "") -> None:
        self.url = url
        self.group = group
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.pusher = push.HttpPush(url) if push.plain_http(url) else None
        self.host, self.port = _host_port(url, 80)
        # The app's health endpoint (2xx: answering), else a TCP connection to its port.
        self.health_url = f"http://{self.host}:{self.port}{health_path}" if health_path else ""

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256)
            )
        return self._session

    def _extensions(self, partition: int, attempt: int) -> dict[str, cloudevent.Value]:
        return {"sluicepartition": partition, "sluiceattempt": attempt, "sluicegroup": self.group}

    async def deliver(self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int) -> Result:
        extensions = self._extensions(partition, attempt)
        if len(events) == 1:
            headers, body = cloudevent.binary(events[0], extensions)
            if trace.get_current_span().get_span_context().is_valid:
                propagate.inject(headers)  # the delivery span, child of the producer's
        else:
            headers = {"content-type": cloudevent.BATCH_CONTENT_TYPE}
            body = cloudevent.batch(events, extensions)
        try:
            if self.pusher is not None:
                answer = await self.pusher.post(headers, body, self.timeout.total or 30.0)
                return self._result(answer.status, answer.headers, answer.body)
            async with self._http().post(self.url, data=body, headers=headers) as resp:
                return self._result(resp.status, resp.headers, await resp.read())
        except (
            push.AppDown,
            aiohttp.ClientOSError,
            aiohttp.ServerDisconnectedError,
            ConnectionResetError,
        ) as e:
            # Refused, reset or closed without an answer: the app is down, not the event bad.
            return Result(RETRY, f"{type(e).__name__}: {e}", app_down=True)  # said as "not answering (...)"
        except (push.BadAnswer, aiohttp.ClientError, TimeoutError) as e:
            return Result(RETRY, f"no answer from the app: {type(e).__name__}: {e}")
        except ValueError as e:  # it cannot be put in an HTTP request, now or ever
            return Result(DEAD_LETTER, f"cannot be sent as an HTTP request: {e}")

    async def probe(self) -> bool:
        if not self.health_url:
            return await _connects(self.host, self.port, 2.0)
        try:
            async with self._http().get(self.health_url, timeout=aiohttp.ClientTimeout(total=2.0)) as r:
                return 200 <= r.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    @staticmethod
    def _result(status: int, headers: Any, answer: bytes) -> Result:
        override = (headers.get("sluice-outcome") or "").lower()
        if not override and 200 <= status < 300:
            return ACKED
        body = answer.decode("utf-8", "replace")[:200]
        retry_after = _retry_after(headers.get("retry-after"))
        if override == "dead-letter":
            return Result(DEAD_LETTER, f"the app asked to dead-letter it (HTTP {status}): {body}")
        if override == "retry":
            return Result(RETRY, f"the app asked to retry (HTTP {status})", retry_after)
        if 200 <= status < 300:
            return ACKED
        if status in RETRY_STATUSES or status >= 500:
            return Result(RETRY, f"HTTP {status}: {body}", retry_after)
        if 300 <= status < 400:  # the app's URL is wrong, not the event: retried, as Dapr does
            where = headers.get("location")
            moved = f"the app redirected to {where}" if where else "the app redirected"
            return Result(RETRY, f"HTTP {status}: {moved}, not followed (check --app-url)", retry_after)
        return Result(DEAD_LETTER, f"HTTP {status}: {body}")

    async def close(self) -> None:
        if self.pusher is not None:
            await self.pusher.close()
        if self._session is not None:
            await self._session.close()


class GrpcDeliverer(Deliverer):
    """Calls the app's sluice.v1.AppCallback/Deliver for each event."""

    def __init__(self, target: str, group: str, timeout: float) -> None:
        self.group = group
        self.timeout = timeout
        self.host, self.port = _host_port(target, 443)
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = spb_grpc.AppCallbackStub(self._channel)
        self._ids = itertools.count(1)

    async def deliver(self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int) -> Result:
        for ev in events:
            d = spb.Delivery(
                delivery_id=next(self._ids), event=ev, partition=partition, attempt=attempt, group=self.group
            )
            try:
                r = await self._stub.Deliver(d, timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                down = e.code() == grpc.StatusCode.UNAVAILABLE
                return Result(
                    RETRY, f"the app's callback failed: {e.code().name}: {e.details()}", app_down=down
                )
            result = _from_proto(r, "gRPC callback")
            if result.outcome != ACK:
                return result
        return ACKED

    async def probe(self) -> bool:
        return await _connects(self.host, self.port, 2.0)

    async def close(self) -> None:
        await self._channel.close()


def _from_proto(r: spb.DeliveryResult, how: str) -> Result:
    """The app's answer; its reason as given, else which answer it gave and how."""
    delay = r.retry_after.ToMicroseconds() / 1e6 if r.HasField("retry_after") else None
    outcome = r.outcome or ACK
    if outcome not in (ACK, RETRY, DEAD_LETTER):  # an app built on a newer contract, or a bug
        # Neither handled nor known bad: tried again, as a retry says, and logged as such.
        unknown = f"the app answered an outcome this sidecar does not know ({outcome}, {how})"
        return Result(RETRY, f"{unknown}: {r.reason}" if r.reason else unknown, delay)
    reason = r.reason or f"the app answered {spb.Outcome.Name(outcome)} ({how}) and gave no reason"
    return Result(outcome, reason, delay)


class PullHub(Deliverer):
    """Pull mode: apps connected to ``Sidecar.Pull`` take deliveries within their credits.

    Credits are a window, per Pull call: a call that granted N credits in all has at most N
    deliveries outstanding (sent, not yet answered). A delivery stops being outstanding, and
    its credit comes back to the call, when the app acks it (whatever the outcome) or when
    ``--delivery-timeout`` passes without an answer (then it is retried). When a call ends,
    its unanswered deliveries are retried at once, on whichever call has credit.
    """

    def __init__(self, group: str, timeout: float) -> None:
        self.group = group
        self.timeout = timeout
        self._changed = asyncio.Condition()
        self._outbox: collections.deque[spb.Delivery] = collections.deque()
        self._waiting: dict[int, asyncio.Future[Result]] = {}
        self._calls: set[_PullCall] = set()
        self._notifying: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.max_outstanding = 0  # the most deliveries ever outstanding at once (for tests)

    @property
    def outstanding(self) -> int:
        """Deliveries sent to the app and not yet answered, on every call."""
        return sum(len(c.sent) for c in self._calls)

    async def deliver(self, events: Sequence[pb.RecordedEvent], partition: int, attempt: int) -> Result:
        for ev in events:
            result = await self._one(ev, partition, attempt)
            if result.outcome != ACK:
                return result
        return ACKED

    async def _one(self, ev: pb.RecordedEvent, partition: int, attempt: int) -> Result:
        """Offer one event and wait for its answer. It waits for credit as long as it takes
        (the app sets the pace); once sent, the app has ``--delivery-timeout`` to answer."""
        did = next(self._ids)
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[did] = fut
        d = spb.Delivery(delivery_id=did, event=ev, partition=partition, attempt=attempt, group=self.group)
        async with self._changed:
            self._outbox.append(d)
            self._changed.notify_all()
        try:
            return await fut
        finally:
            self._waiting.pop(did, None)
            if d in self._outbox:
                self._outbox.remove(d)  # never sent (the worker stopped)
            self._settle(did)

    def _settle(self, delivery_id: int) -> None:
        """The delivery is answered, expired or abandoned: its credit comes back to its call."""
        for call in self._calls:
            timer = call.sent.pop(delivery_id, None)
            if timer is not None:
                timer.cancel()
                self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    def _answer(self, delivery_id: int, result: Result) -> None:
        fut = self._waiting.get(delivery_id)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _expire(self, delivery_id: int) -> None:
        self._answer(delivery_id, Result(RETRY, f"no answer from the app within {self.timeout:g}s"))

    async def serve(self, requests: AsyncIterator[spb.PullRequest]) -> AsyncIterator[spb.PullResponse]:
        """One app connection: read credits and acks, send deliveries within its window."""
        call = _PullCall()
        self._calls.add(call)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                async for req in requests:
                    kind = req.WhichOneof("request")
                    async with self._changed:
                        if kind == "credits":
                            call.window += req.credits
                        elif kind == "ack" and req.ack.delivery_id in call.sent:
                            call.sent.pop(req.ack.delivery_id).cancel()
                            self._answer(req.ack.delivery_id, _from_proto(req.ack.result, "Pull"))
                        self._changed.notify_all()
            finally:
                async with self._changed:
                    call.closed = True
                    self._changed.notify_all()

        reader = asyncio.create_task(read())
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(
                        lambda: call.closed or (call.room() > 0 and bool(self._outbox))
                    )
                    if call.closed:
                        break
                    d = self._outbox.popleft()
                    call.sent[d.delivery_id] = loop.call_later(self.timeout, self._expire, d.delivery_id)
                    self.max_outstanding = max(self.max_outstanding, self.outstanding)
                yield spb.PullResponse(delivery=d)
        finally:
            reader.cancel()
            async with self._changed:
                self._calls.discard(call)
                for did, timer in call.sent.items():  # sent on this call, never answered: retry now
                    timer.cancel()
                    self._answer(did, Result(RETRY, "the app's Pull call ended before it answered", 0.0))
                call.sent.clear()
                self._changed.notify_all()


@dataclasses.dataclass(eq=False)
class _PullCall:
    """One Pull call's window: credits granted in all, deliveries sent and not answered."""

    window: int = 0
    sent: dict[int, asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    closed: bool = False

    def room(self) -> int:
        return self.window - len(self.sent)
