"""Sluice events as CloudEvents 1.0: the one mapping the gateway (SSE) and the sidecar (HTTP
push, binary and batched structured mode) both use.

Context attributes: ``id`` (the event id), ``source`` (``/streams/<stream>``, the name
percent-encoded as a URI path segment), ``type``, ``subject`` (the stream), ``time``
(RFC 3339, UTC, microseconds), ``datacontenttype`` when the event has one. Extensions,
all lower-case: ``sluiceposition``, ``sluicerevision`` (integers), ``sluiceephemeral``
(boolean, for gateway messages that were never stored), ``sluicemetadata`` (the event's
metadata as a JSON object in a string: extension values may not be maps), plus what the
caller adds (the sidecar: ``sluicepartition``, ``sluiceattempt``, ``sluicegroup``).
The W3C ``traceparent``/``tracestate`` in the metadata travel as the distributed tracing
extension.

JSON format: ``data`` holds JSON when the content type is JSON and the bytes parse,
text for ``text/*`` that is UTF-8, else ``data_base64``. HTTP binary mode: attributes as
``ce-`` headers (every value as its string form), the data as the body, its type as
Content-Type; values are percent-encoded where the HTTP binding says so.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp

from sluice.v1 import streams_pb2 as pb

Event = pb.RecordedEvent | pb.EphemeralMessage
Value = str | int | bool

SPECVERSION = "1.0"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
TRACE_KEYS = ("traceparent", "tracestate")


def source(stream: str) -> str:
    """The event's source: a URI reference naming its stream."""
    return "/streams/" + quote(stream, safe="")


@functools.lru_cache(maxsize=1024)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339(ts: Timestamp) -> str:
    """An RFC 3339 UTC time, to the microsecond."""
    return f"{_second(ts.seconds)}.{ts.nanos // 1000:06d}Z"


def attributes(ev: Event, extensions: Mapping[str, Value] | None = None) -> dict[str, Value]:
    """The context attributes of an event, with typed values."""
    out: dict[str, Value] = {
        "specversion": SPECVERSION,
        "id": ev.id,
        "source": source(ev.stream),
        "type": ev.type,
        "subject": ev.stream,
    }
    if isinstance(ev, pb.RecordedEvent):
        out["time"] = rfc3339(ev.created)
        out["sluiceposition"] = ev.position
        out["sluicerevision"] = ev.revision
    else:
        out["time"] = rfc3339(ev.published)
        out["sluiceephemeral"] = True
    if ev.content_type:
        out["datacontenttype"] = ev.content_type
    if ev.metadata:
        out["sluicemetadata"] = json.dumps(dict(ev.metadata), separators=(",", ":"), sort_keys=True)
        for key in TRACE_KEYS:
            if key in ev.metadata:
                out[key] = ev.metadata[key]
    out.update(extensions or {})
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def data_member(data: bytes, content_type: str) -> dict[str, object]:
    """The JSON format's data member: ``data`` (JSON or text) or ``data_base64``."""
    if _is_json(content_type):
        try:
            return {"data": json.loads(data)}
        except ValueError:
            pass
    elif content_type.lower().startswith("text/"):
        try:
            return {"data": data.decode()}
        except UnicodeDecodeError:
            pass
    return {"data_base64": base64.b64encode(data).decode()}


def structured(
    ev: Event, extensions: Mapping[str, Value] | None = None, with_data: bool = True
) -> dict[str, object]:
    """The event in the JSON format (structured mode, one member of a batch, an SSE event)."""
    out: dict[str, object] = dict(attributes(ev, extensions))
    if with_data and ev.data:
        out.update(data_member(ev.data, ev.content_type))
    return out


#: What a header value may carry as it is (HTTP binding 3.1.3.2): printable ASCII but the
#: space, '"' and '%'; anything else (a stream name with spaces or accents) is
#: percent-encoded as UTF-8.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


_NEEDS_QUOTING = re.compile(r'[^\x21-\x7e]|[ "%]')


def _header_value(value: Value) -> str:
    if isinstance(value, str):
        # Most values need no quoting: skip quote()'s per-character work (a push's hot path).
        return quote(value, safe=_HEADER_SAFE) if _NEEDS_QUOTING.search(value) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # a number: digits and a sign, nothing to quote


def binary(ev: Event, extensions: Mapping[str, Value] | None = None) -> tuple[dict[str, str], bytes]:
    """HTTP binary mode: (headers, body)."""
    headers: dict[str, str] = {}
    for name, value in attributes(ev, extensions).items():
        if name == "datacontenttype":
            continue
        if name in TRACE_KEYS:
            headers[name] = str(value)  # the tracing extension's own headers
        else:
            headers[f"ce-{name}"] = _header_value(value)
    headers["content-type"] = ev.content_type or "application/octet-stream"
    return headers, ev.data


def batch(events: Sequence[Event], extensions: Mapping[str, Value] | None = None) -> bytes:
    """The events as one ``application/cloudevents-batch+json`` body."""
    return json.dumps([structured(ev, extensions) for ev in events], separators=(",", ":")).encode()
