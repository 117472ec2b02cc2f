"""The hub's matching (a stream index over groups of equal filters) against a plain model."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.v1 import streams_pb2 as pb
from sluice_gateway import wire
from sluice_gateway.grpc_api import encode
from sluice_gateway.hub import Filter, Hub, Subscriber

NAMES = ["a", "ab", "abc", "b", "ba", "c"]
TYPES = ["X", "Y", "Z"]

filters = st.builds(
    Filter,
    st.frozensets(st.sampled_from(NAMES), max_size=2),
    st.lists(st.sampled_from(["a", "ab", "b", "c"]), max_size=2).map(tuple),
    st.frozensets(st.sampled_from(TYPES), max_size=2),
)
events = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(TYPES)), min_size=1, max_size=30)


def received(sub: Subscriber) -> list[int]:
    out = []
    for body, _, _ in sub.chunks:
        batch = pb.EventBatch.FromString(body)
        out += [e.position for e in batch.events]
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(filters, min_size=1, max_size=12), st.lists(events, min_size=1, max_size=4))
def test_every_subscriber_gets_exactly_what_its_filter_matches(
    fs: list[Filter], batches: list[list[tuple[str, str]]]
) -> None:
    async def run() -> None:
        hub = Hub()
        hub.advance(0)
        subs = [Subscriber(f, wire.FULL, encode, limit=10_000, policy=0) for f in fs]
        joined = [0] * len(subs)  # the position each subscriber joined at
        position = 0
        sent: list[tuple[int, str, str]] = []
        for b, batch in enumerate(batches):
            # Subscribers join between batches (new groups appear while the index is warm),
            # and some leave and come back (groups go and return).
            for i, sub in enumerate(subs):
                if i % len(batches) == b:
                    hub.register(sub)
                    joined[i] = position
                elif i % 3 == 2 and sub.live:
                    hub.unregister(sub)
                    hub.register(sub)
            records = []
            for stream, type_ in batch:
                position += 1
                ev = pb.RecordedEvent(
                    id=str(position), stream=stream, type=type_, position=position, data=b"d"
                )
                records.append(wire.record_of(ev))
                sent.append((position, stream, type_))
            hub.dispatch(records)
        for f, sub, since in zip(fs, subs, joined, strict=True):
            want = [p for p, s, t in sent if p > since and f.matches(s, t)] if sub.live else []
            assert received(sub) == want
        hub.close()

    asyncio.run(run())
