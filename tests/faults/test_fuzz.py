"""Every RPC of the store fed random and truncated bytes, and well-formed requests with
hostile values: never a server fault (INTERNAL, UNKNOWN, UNAVAILABLE), every refusal with
structured details, and the store goes on serving after all of it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import Client, new_event
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import streams_pb2 as pb
from sluice_store.server import StoreServer

METHODS: list[tuple[str, str]] = [
    *(("sluice.v1.Streams", m.name) for m in pb.DESCRIPTOR.services_by_name["Streams"].methods),
    *(("sluice.v1.Groups", m.name) for m in gpb.DESCRIPTOR.services_by_name["Groups"].methods),
]
FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
VALID = pb.AppendRequest(stream="fuzz", events=[new_event("E", b"payload")]).SerializeToString()


async def _call(
    channel: grpc.aio.Channel, service: str, method: str, body: bytes, raise_errors: bool = False
) -> grpc.StatusCode:
    """The status one call with ``body`` ends with (a live subscription that streams on
    counts as OK); with ``raise_errors``, an error status is raised as it came."""
    desc = (pb if service.endswith("Streams") else gpb).DESCRIPTOR.services_by_name[service.split(".")[-1]]
    m = desc.methods_by_name[method]
    kind = ("stream" if m.client_streaming else "unary") + "_" + ("stream" if m.server_streaming else "unary")
    rpc = getattr(channel, kind)(f"/{service}/{method}", request_serializer=lambda b: b)
    try:
        call = rpc(iter([body]), timeout=5) if m.client_streaming else rpc(body, timeout=5)
        if m.server_streaming:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):  # a valid subscription streams on: enough
                    async for _ in call:
                        pass
            call.cancel()
            return grpc.StatusCode.OK
        await call
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        if raise_errors:
            raise
        return e.code()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    which=st.integers(0, len(METHODS) - 1),
    body=st.one_of(st.binary(max_size=300), st.integers(0, len(VALID)).map(lambda n: VALID[:n])),
)
async def test_random_and_truncated_bytes_never_fault_the_store(
    store: StoreServer, which: int, body: bytes
) -> None:
    service, method = METHODS[which]
    async with grpc.aio.insecure_channel(store.address) as ch:
        code = await _call(ch, service, method, body)
    assert code not in FAULTS, f"{service}/{method} answered {code.name} to {body[:40]!r}"
    async with Client(store.address, timeout=10) as c:  # and it serves on (the same store each time)
        await c.append("after-fuzz", [new_event("E", b"x")])


# -- well-formed requests with hostile values ---------------------------------------------
#
# Random bytes rarely parse, so the test above mostly exercises the decoder. These are
# requests that do parse, every field set or not at random from values that sit on edges:
# empty, oversized, reserved ("$..."), control characters, non-UUID ids, the largest
# integers, timestamps and durations out of range, enum numbers no one defined.

STRINGS = st.sampled_from(
    ["", "a", "fuzz", "$all", "$dead-letters", "$x", "x" * 300, "x" * 5000, "\x00", "a\nb", "é",
     "a b", "fuzz/a", "*", ">", "not-a-uuid", "0190a6c4-9d7e-7c3e-8f00-000000000001",
     "0190A6C4-9D7E-7C3E-8F00-000000000002", "{0190a6c4-9d7e-7c3e-8f00-000000000003}"]
)  # fmt: skip
BYTES = st.sampled_from([b"", b"x", b"{}", b"\xff\xfe", bytes(range(256)) * 300])
U64 = st.sampled_from([0, 1, 2, 5, 1000, 2**31, 2**53, 2**63 - 1, 2**64 - 1])
I64 = st.sampled_from([0, 1, -1, 1000, 2**53, 2**63 - 1, -(2**63)])
U32 = st.sampled_from([0, 1, 2, 3, 7, 100, 1000, 2**31 - 1, 2**32 - 1])
I32 = st.sampled_from([0, 1, -1, 7, 1000, 2**31 - 1, -(2**31)])
TIME_PARTS = (
    st.sampled_from([0, 1, -1, 10**10, -(10**10), 253402300799, 315576000000, 2**40]),
    st.sampled_from([0, 1, 999_999_999, 10**9, -1]),
)


def _scalar(field: Any) -> st.SearchStrategy[Any]:  # a FieldDescriptor (upb types it apart)
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return STRINGS
    if t == FieldDescriptor.TYPE_BYTES:
        return BYTES
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return U64
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return I64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return U32
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return I32
    return st.sampled_from([0.0, -1.0, 1e300, float("nan"), float("inf")])


def _value(field: Any, depth: int) -> st.SearchStrategy[Any] | None:
    """A strategy for what to put in one field (a setter is applied to the message), or
    None for a message field below the depth limit."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        values = _scalar(field.message_type.fields_by_name["value"])
        return st.dictionaries(st.one_of(STRINGS, st.just("traceparent")), values, max_size=3)
    if field.message_type is not None:
        if depth >= 4:
            return None
        inner = messages(message_factory.GetMessageClass(field.message_type), depth + 1)
        return st.lists(inner, max_size=3) if field.is_repeated else inner
    return st.lists(_scalar(field), max_size=3) if field.is_repeated else _scalar(field)


def _apply(msg: Message, field: Any, value: Any) -> None:
    target = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target.update(value)
    elif field.is_repeated and field.message_type is not None:
        for item in value:
            target.add().CopyFrom(item)
    elif field.is_repeated:
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def messages(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``cls`` with each field left unset or set to a hostile value."""
    if cls.DESCRIPTOR.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), *TIME_PARTS)
    fields = [(f, s) for f in cls.DESCRIPTOR.fields if (s := _value(f, depth)) is not None]

    def build(chosen: dict[str, Any]) -> Message:
        msg = cls()
        for f, _ in fields:
            if f.name in chosen:
                _apply(msg, f, chosen[f.name])
        return msg

    return st.fixed_dictionaries({}, optional={f.name: s for f, s in fields}).map(build)


def _method(service: str, method: str) -> MethodDescriptor:
    module = pb if service.endswith("Streams") else gpb
    return module.DESCRIPTOR.services_by_name[service.split(".")[-1]].methods_by_name[method]


@st.composite
def hostile_calls(draw: st.DrawFn) -> tuple[str, str, Message]:
    service, method = draw(st.sampled_from(METHODS))
    m = _method(service, method)
    return service, method, draw(messages(message_factory.GetMessageClass(m.input_type)))


async def _session_answers(channel: grpc.aio.Channel, body: bytes) -> tuple[grpc.StatusCode, bool]:
    """One AppendSession message: the first refused append's code (OK if none was) and
    whether every refusal carried details."""
    rpc = channel.stream_stream(
        "/sluice.v1.Streams/AppendSession",
        request_serializer=lambda b: b,
        response_deserializer=pb.AppendSessionResponse.FromString,
    )
    code, details = grpc.StatusCode.OK, True
    async for answer in rpc(iter([body]), timeout=5):
        for result in answer.results:
            if result.WhichOneof("result") == "error":
                if code == grpc.StatusCode.OK:
                    code = _CODES[result.error.code]
                details = details and len(result.error.details) > 0
    return code, details


_CODES = {c.value[0]: c for c in grpc.StatusCode}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(call=hostile_calls())
async def test_well_formed_requests_with_hostile_values_get_a_clear_answer(
    store: StoreServer, call: tuple[str, str, Message]
) -> None:
    service, method, request = call
    async with grpc.aio.insecure_channel(store.address) as ch:
        try:
            if method == "AppendSession":  # refusals come back per append, in the answer
                code, details = await _session_answers(ch, request.SerializeToString())
            else:
                code = await _call(ch, service, method, request.SerializeToString(), raise_errors=True)
                details = True
        except grpc.aio.AioRpcError as e:
            code = e.code()
            details = any(k == "grpc-status-details-bin" for k, _ in e.trailing_metadata() or ())
    said = f"{service}/{method} answered {code.name} to {str(request)[:300]!r}"
    assert code not in FAULTS, said
    # A refusal names what was wrong (google.rpc.Status details), not only a message.
    assert details or code == grpc.StatusCode.DEADLINE_EXCEEDED, said + " without details"
    async with Client(store.address, timeout=10) as c:  # and it serves on
        await c.append("after-fuzz", [new_event("E", b"x")])
