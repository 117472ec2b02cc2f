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


class NotACloudEvent(ValueError):
    """A structured-mode body that is not a CloudEvent (or a batch of them); ``field`` names
    the member at fault (``body``, ``body[2].data_base64``)."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


#: Attributes the store sets or the delivery adds: dropped from what a producer sends.
_ASSIGNED = frozenset(
    ("specversion", "source", "subject", "time", "dataschema", "sluiceposition", "sluicerevision",
     "sluiceephemeral", "sluicepartition", "sluiceattempt", "sluicegroup")
)  # fmt: skip


def _event_data(ce: Mapping[str, object], field: str) -> pb.EventData:
    """One CloudEvent of the JSON format as the event to append (the inverse of structured)."""
    ev = pb.EventData()
    ctype = ce.get("datacontenttype")
    if ctype is not None and not isinstance(ctype, str):
        raise NotACloudEvent("datacontenttype must be a string", f"{field}.datacontenttype")
    if "data_base64" in ce:
        encoded = ce["data_base64"]
        try:
            if not isinstance(encoded, str):
                raise ValueError("not a string")
            ev.data = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise NotACloudEvent("data_base64 is not base64", f"{field}.data_base64") from None
    elif "data" in ce:
        data = ce["data"]
        if isinstance(data, str) and ctype is not None and not _is_json(ctype):
            ev.data = data.encode()  # text
        else:  # JSON, as the format says data is when datacontenttype is absent
            ev.data = json.dumps(data, separators=(",", ":")).encode()
            ctype = ctype or "application/json"
    if ctype:
        ev.content_type = ctype
    for name, value in ce.items():
        if name in ("id", "type"):
            if not isinstance(value, str):
                raise NotACloudEvent(f"{name} must be a string", f"{field}.{name}")
            setattr(ev, name, value)
        elif name == "sluicemetadata":
            try:
                metadata = json.loads(value) if isinstance(value, str) else None
            except ValueError:
                metadata = None
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise NotACloudEvent(
                    "sluicemetadata must be a JSON object of strings, in a string", f"{field}.{name}"
                )
            ev.metadata.update(metadata)
        elif name not in _ASSIGNED and name not in ("data", "data_base64", "datacontenttype"):
            # Other extensions (traceparent, partitionkey, ...) become metadata.
            if isinstance(value, (dict, list)) or value is None:
                raise NotACloudEvent(
                    f"extension {name!r} must be a string, number or boolean", f"{field}.{name}"
                )
            ev.metadata[name] = json.dumps(value) if isinstance(value, bool) else str(value)
    return ev


def parse(body: bytes, content_type: str) -> list[pb.EventData]:
    """The events of a structured-mode body (``application/cloudevents+json``: one) or a
    batch (``application/cloudevents-batch+json``: each in order), as a producer would
    append them: id, type, data (``data`` as JSON unless ``datacontenttype`` says
    otherwise, or ``data_base64``), ``datacontenttype``, and ``sluicemetadata`` and other
    extensions as metadata. What the store assigns (source, subject, time, position) is
    dropped. Raises NotACloudEvent."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise NotACloudEvent("the body is not JSON") from None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == BATCH_CONTENT_TYPE:
        if not isinstance(doc, list) or not all(isinstance(ce, dict) for ce in doc):
            raise NotACloudEvent("a batch is a JSON array of CloudEvent objects")
        return [_event_data(ce, f"body[{i}]") for i, ce in enumerate(doc)]
    if not isinstance(doc, dict):
        raise NotACloudEvent("a structured CloudEvent is a JSON object")
    return [_event_data(doc, "body")]


def is_structured(content_type: str) -> bool:
    """Whether a body of this type is CloudEvents JSON (one event, or a batch)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE)
