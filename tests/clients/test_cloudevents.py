"""The one CloudEvents mapping (sluice.cloudevent), read back by the CloudEvents SDK for
Python as an independent parser: binary and structured HTTP modes, JSON format, batch."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat
from google.protobuf.timestamp_pb2 import Timestamp

from sluice import cloudevent
from sluice.v1 import streams_pb2 as pb

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def stamp(seconds: int, micros: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=micros * 1000)


EVENTS: list[cloudevent.Event] = [
    pb.RecordedEvent(
        id="0191f0a0-0000-7000-8000-000000000001", type="OrderPlaced", stream="orders-1",
        data=b'{"total": 12, "items": ["a"]}', content_type="application/json",
        metadata={"traceparent": TRACE, "tenant": "t1"}, revision=3, position=17,
        created=stamp(1_700_000_000, 123456),
    ),
    pb.RecordedEvent(
        id="0191f0a0-0000-7000-8000-000000000002", type="Noted", stream="notes/a b ü%",
        data="héllo".encode(), content_type="text/plain; charset=utf-8", revision=0, position=18,
        created=stamp(1_700_000_001, 5),
    ),
    pb.RecordedEvent(
        id="0191f0a0-0000-7000-8000-000000000003", type="Blob", stream="blobs",
        data=bytes(range(256)), revision=9, position=19, created=stamp(1_700_000_002, 0),
    ),
    pb.EphemeralMessage(
        id="0191f0a0-0000-7000-8000-000000000004", type="Typing", stream="chat.room-1",
        data=b'{"who": "ada"}', content_type="application/vnd.chat+json", published=stamp(1_700_000_003, 1),
    ),
]  # fmt: skip


def expected_data(ev: cloudevent.Event | pb.EventData) -> object:
    if ev.content_type.endswith("json"):
        return json.loads(ev.data)
    if ev.content_type.startswith("text/"):
        return ev.data.decode()
    return ev.data


def check(ce: object, ev: cloudevent.Event, extensions: dict[str, object], trace_attr: bool = True) -> None:
    """The SDK's reading of our output says what the event says."""
    assert ce.get_specversion() == "1.0"  # type: ignore[attr-defined]
    assert ce.get_id() == ev.id and ce.get_type() == ev.type  # type: ignore[attr-defined]
    assert ce.get_source() == "/streams/" + quote(ev.stream, safe="")  # type: ignore[attr-defined]
    assert ce.get_subject() == ev.stream  # type: ignore[attr-defined]
    when = ev.created if isinstance(ev, pb.RecordedEvent) else ev.published
    assert ce.get_time().timestamp() == pytest.approx(when.seconds + when.nanos / 1e9, abs=1e-6)  # type: ignore[attr-defined]
    attrs = ce.get_attributes()  # type: ignore[attr-defined]
    for name, value in extensions.items():
        assert str(attrs[name]).lower() == str(value).lower(), name  # headers carry text
    if ev.metadata:
        assert json.loads(attrs["sluicemetadata"]) == dict(ev.metadata)
        if "traceparent" in ev.metadata and trace_attr:  # binary mode: the W3C header itself
            assert attrs["traceparent"] == ev.metadata["traceparent"]


def own_extensions(ev: cloudevent.Event) -> dict[str, object]:
    if isinstance(ev, pb.RecordedEvent):
        return {"sluiceposition": ev.position, "sluicerevision": ev.revision}
    return {"sluiceephemeral": True}


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: e.type)
def test_binary_mode_reads_back(ev: cloudevent.Event) -> None:
    added: dict[str, cloudevent.Value] = {"sluicepartition": 4, "sluiceattempt": 2, "sluicegroup": "billing"}
    headers, body = cloudevent.binary(ev, added)
    ce_headers = {k: v for k, v in headers.items() if k.startswith("ce-")}
    assert all(v.isascii() and " " not in v for v in ce_headers.values())  # HTTP binding 3.1.3.2
    ce = from_http_event(HTTPMessage(headers=headers, body=body))
    check(ce, ev, {**own_extensions(ev), **added}, trace_attr=False)
    assert headers.get("traceparent") == ev.metadata.get("traceparent")
    assert body == ev.data and ce.get_datacontenttype() == (ev.content_type or "application/octet-stream")
    data = ce.get_data()
    assert data in (ev.data, expected_data(ev)) or (isinstance(data, str) and data.encode() == ev.data)


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: e.type)
def test_structured_mode_and_json_format_read_back(ev: cloudevent.Event) -> None:
    body = json.dumps(cloudevent.structured(ev)).encode()
    ce = from_http_event(HTTPMessage(headers={"content-type": cloudevent.STRUCTURED_CONTENT_TYPE}, body=body))
    check(ce, ev, own_extensions(ev))
    assert ce.get_data() == expected_data(ev)
    assert ce.get_datacontenttype() == (ev.content_type or None)
    typed = json.loads(body)
    if isinstance(ev, pb.RecordedEvent):  # JSON numbers for the integer extensions
        assert typed["sluiceposition"] == ev.position and typed["sluicerevision"] == ev.revision


def test_a_batch_is_a_json_array_of_events_in_order() -> None:
    events = [e for e in EVENTS if isinstance(e, pb.RecordedEvent)]
    body = cloudevent.batch(events, {"sluicegroup": "billing"})
    members = json.loads(body)
    assert [m["id"] for m in members] == [e.id for e in events]
    for member, ev in zip(members, events, strict=True):
        ce = JSONFormat().read(None, json.dumps(member).encode())
        check(ce, ev, {**own_extensions(ev), "sluicegroup": "billing"})
        assert ce.get_data() == expected_data(ev)


def test_a_notification_carries_no_data() -> None:
    first = EVENTS[0]
    assert isinstance(first, pb.RecordedEvent)
    body = cloudevent.structured(first, with_data=False)
    assert "data" not in body and "data_base64" not in body


@pytest.mark.parametrize("ev", [e for e in EVENTS if isinstance(e, pb.RecordedEvent)], ids=lambda e: e.type)
def test_a_structured_event_parses_back_to_what_was_appended(ev: pb.RecordedEvent) -> None:
    body = json.dumps(cloudevent.structured(ev, {"sluicegroup": "g"})).encode()
    (got,) = cloudevent.parse(body, cloudevent.STRUCTURED_CONTENT_TYPE)
    assert (got.id, got.type, got.content_type) == (ev.id, ev.type, ev.content_type)
    # JSON data comes back as the same JSON (the format does not keep its spacing); the rest byte for byte.
    assert expected_data(got) == expected_data(ev)
    assert dict(got.metadata) == dict(ev.metadata)  # nothing the store or the delivery set


def test_cloudevents_written_by_the_sdk_parse_into_events() -> None:
    from cloudevents.core.bindings.http import to_structured_event
    from cloudevents.core.v1.event import CloudEvent

    placed = CloudEvent(
        {"id": EVENTS[0].id, "source": "/shop", "type": "OrderPlaced", "specversion": "1.0",
         "datacontenttype": "application/json", "partitionkey": "k1", "traceparent": TRACE},
        {"total": 3},
    )  # fmt: skip
    blob = CloudEvent(
        {"id": EVENTS[2].id, "source": "/s", "type": "Blob", "specversion": "1.0"}, bytes(range(5))
    )
    one = to_structured_event(placed)
    (got,) = cloudevent.parse(one.body, one.headers["content-type"])
    assert (got.id, got.type, json.loads(got.data), got.content_type) == (
        EVENTS[0].id, "OrderPlaced", {"total": 3}, "application/json",
    )  # fmt: skip
    assert dict(got.metadata) == {"partitionkey": "k1", "traceparent": TRACE}  # extensions; source dropped
    batch = b"[" + one.body + b"," + to_structured_event(blob).body + b"]"
    events = cloudevent.parse(batch, cloudevent.BATCH_CONTENT_TYPE + "; charset=utf-8")
    assert [(e.type, e.data) for e in events] == [("OrderPlaced", got.data), ("Blob", bytes(range(5)))]


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b"{not json", cloudevent.STRUCTURED_CONTENT_TYPE, "body"),
        (b"[1]", cloudevent.STRUCTURED_CONTENT_TYPE, "body"),
        (b"{}", cloudevent.BATCH_CONTENT_TYPE, "body"),
        (b'[{"type": "T"}, 5]', cloudevent.BATCH_CONTENT_TYPE, "body"),
        (b'{"type": "T", "data_base64": "!!"}', cloudevent.STRUCTURED_CONTENT_TYPE, "body.data_base64"),
        (b'[{"type": "T"}, {"type": 5}]', cloudevent.BATCH_CONTENT_TYPE, "body[1].type"),
        (
            b'{"type": "T", "sluicemetadata": "{\\"a\\": 1}"}',
            cloudevent.STRUCTURED_CONTENT_TYPE,
            "body.sluicemetadata",
        ),
        (b'{"type": "T", "tags": ["a"]}', cloudevent.STRUCTURED_CONTENT_TYPE, "body.tags"),
    ],
)
def test_a_body_that_is_not_a_cloudevent_is_refused_naming_the_member(
    body: bytes, content_type: str, field: str
) -> None:
    with pytest.raises(cloudevent.NotACloudEvent) as refused:
        cloudevent.parse(body, content_type)
    assert refused.value.field == field
