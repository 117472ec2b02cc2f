"""The event byte layout (sluice.eventbytes) round-trips through protobuf's own parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sluice import eventbytes
from sluice.v1 import streams_pb2 as pb

texts = st.text(max_size=40)


@given(
    texts,
    texts,
    st.dictionaries(texts, texts, max_size=3),
    texts,
    st.binary(max_size=300),
    st.integers(0, 2**40),
    st.integers(1, 2**40),
    st.integers(0, 2**45),
)
def test_a_stored_event_parses_as_what_was_appended_and_cuts_to_its_notification(
    etype: str,
    stream: str,
    metadata: dict[str, str],
    content_type: str,
    data: bytes,
    rev: int,
    pos: int,
    us: int,
) -> None:
    appended = pb.EventData(id="0191f0a0-0000-7000-8000-000000000001", type=etype, metadata=metadata)
    appended.content_type = content_type
    head = eventbytes.head(
        appended.SerializeToString(), eventbytes.stream_field(stream), rev, pos, eventbytes.created_field(us)
    )
    full = eventbytes.event_bytes(head, data)
    ev = pb.RecordedEvent.FromString(full)
    assert (ev.id, ev.type, dict(ev.metadata), ev.content_type) == (
        appended.id,
        etype,
        metadata,
        content_type,
    )
    assert (ev.stream, ev.revision, ev.position, ev.data) == (stream, rev, pos, data)
    assert ev.created.ToMicroseconds() == us
    assert eventbytes.without_data(full, data) == head  # data is the trailing field
    assert pb.RecordedEvent.FromString(head).data == b""
    # Replies assembled from these bytes parse, and cut back into the same pieces.
    read = eventbytes.read_response([full, head])
    assert [e.position for e in pb.ReadResponse.FromString(read).events] == [pos, pos]
    header = pb.ReadResponse(header=pb.ReadHeader(head_position=pos)).SerializeToString()
    assert eventbytes.events_of_read(header + read) == [full, head]  # other fields skipped
    sub = eventbytes.subscribe_events([full])
    assert pb.SubscribeResponse.FromString(sub).events.events[0] == ev
    assert eventbytes.events_of_subscribe(sub) == [full]


def test_bytes_that_do_not_end_with_the_data_are_not_cut() -> None:
    ev = pb.RecordedEvent(id="x", data=b"payload", stream="s")  # protobuf's order: data third
    assert eventbytes.without_data(ev.SerializeToString(), b"payload") is None
    assert eventbytes.without_data(b"head", b"") == b"head"


@given(
    st.one_of(
        st.integers(1, 2**64 - 1),
        st.sampled_from([0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 0xFFFFFFF, 0x10000000]),
    )
)
def test_varints_are_what_protobuf_writes(n: int) -> None:
    from sluice.protowire import read_varint, varint

    for encode in (varint, eventbytes.varint):  # computed, and from tables up to 2**28
        assert pb.RecordedEvent(position=n).SerializeToString() == eventbytes.TAG_POSITION + encode(n)
        assert read_varint(encode(n), 0) == (n, len(encode(n)))


BOUNDS = [0, 1, 0x3FFF, 0x4000, 0x4001, 0x1FFFFF, 0x200000, 0xFFFFFFF, 0x10000000, 2**35]


@given(
    st.one_of(st.sampled_from(BOUNDS), st.integers(0, 2**29)),
    st.one_of(st.sampled_from(BOUNDS[1:]), st.integers(1, 2**29)),
)
def test_a_head_carries_its_revision_and_position_on_each_side_of_the_tables(rev: int, pos: int) -> None:
    head = eventbytes.head(b"", eventbytes.stream_field("s"), rev, pos, eventbytes.created_field(1))
    ev = pb.RecordedEvent.FromString(head)
    assert (ev.stream, ev.revision, ev.position, ev.created.nanos) == ("s", rev, pos, 1000)
