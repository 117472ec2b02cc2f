"""The gateway's HTTP/JSON API (``/v1/...``): the store's operations for clients that speak
only HTTP (curl, browsers, scripts, the console).

Each route is one RPC of the contract, in the conventions of grpc-gateway and Google's
HTTP mapping: requests and responses are the RPC's messages in the proto3 JSON mapping
(field names as in the .proto, 64-bit integers as strings, bytes as base64); path
parameters set the request fields they name; on GET and DELETE, query parameters set
fields by dotted path (``from.revision=5``, ``filter.stream_prefixes=a-`` repeated for
lists, ``from.end=true`` for an empty-message choice); on POST and PUT the body is the
request message. A server-streaming Read answers one page of events and where the next
page starts. Errors answer with the HTTP status Google maps the gRPC code to and the same
reason, metadata and details as the gRPC status. The OpenAPI document
(``/v1/openapi.json``, sluice_gateway.openapi) is generated from this table and the
message descriptors.

The caller's credential (a bearer token in a header, or for browsers ``access_token`` or
the ``sluice_token`` cookie) is passed on to the store, so the store decides what each
caller may do, as for gRPC callers (no confused deputy).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # also registers the detail types for JSON

from sluice.errors import status_of
from sluice.v1 import groups_pb2 as gpb
from sluice.v1 import groups_pb2_grpc as gpb_grpc
from sluice.v1 import streams_pb2 as pb
from sluice.v1 import streams_pb2_grpc as pb_grpc
from sluice_gateway.service import Caller, Gateway, GatewayError

#: Events per page of a Read over HTTP, unless ``max_count`` asks for fewer.
PAGE = 100
MAX_PAGE = 1000
CALL_TIMEOUT = 30.0

#: gRPC codes as HTTP statuses (google/rpc/code.proto; 499 is "client closed request").
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str
    service: str  # "Streams" or "Groups"
    rpc: str
    request: type[Message]
    response: type[Message]
    summary: str
    body: bool = False  # the request message (less the path's fields) is the JSON body
    paged_read: bool = False  # a server-streaming Read, answered one page at a time

    @property
    def path_fields(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/streams", "Streams", "ListStreams", pb.ListStreamsRequest, pb.ListStreamsResponse,
          "List streams by name, a page at a time (prefix, page_size, page_token)"),
    Route("GET", "/v1/streams/{stream}", "Streams", "GetStreamInfo", pb.GetStreamInfoRequest, pb.StreamInfo,
          "Describe a stream: revisions, positions, retention"),
    Route("GET", "/v1/streams/{stream}/events", "Streams", "Read", pb.ReadRequest, pb.ReadResponse,
          "Read a stream, one page from a start point (from.revision, from.end, backwards, max_count)",
          paged_read=True),
    Route("POST", "/v1/streams/{stream}/events", "Streams", "Append", pb.AppendRequest, pb.AppendResponse,
          "Append events to a stream (ids make retries safe; expected_revision for concurrency)", body=True),
    Route("PUT", "/v1/streams/{stream}/retention", "Streams", "SetRetention", pb.SetRetentionRequest,
          pb.StreamInfo, "Set a stream's retention", body=True),
    Route("DELETE", "/v1/streams/{stream}", "Streams", "DeleteStream", pb.DeleteStreamRequest,
          pb.DeleteStreamResponse, "Delete a stream (tombstone=true: for good)"),
    Route("GET", "/v1/events", "Streams", "Read", pb.ReadRequest, pb.ReadResponse,
          "Read all streams in position order, one page (from.position, filter.*, notifications_only)",
          paged_read=True),
    Route("GET", "/v1/groups", "Groups", "ListGroups", gpb.ListGroupsRequest, gpb.ListGroupsResponse,
          "List consumer groups"),
    Route("POST", "/v1/groups", "Groups", "CreateGroup", gpb.CreateGroupRequest, gpb.GroupDescription,
          "Create a consumer group", body=True),
    Route("GET", "/v1/groups/{group}", "Groups", "DescribeGroup", gpb.DescribeGroupRequest,
          gpb.GroupDescription, "Describe a group: members, partitions with owner, cursor and lag"),
    Route("PUT", "/v1/groups/{group}", "Groups", "UpdateGroup", gpb.UpdateGroupRequest, gpb.GroupDescription,
          "Change a group's filter or retry policy", body=True),
    Route("DELETE", "/v1/groups/{group}", "Groups", "DeleteGroup", gpb.DeleteGroupRequest,
          gpb.DeleteGroupResponse, "Delete a group and its cursors"),
    Route("POST", "/v1/groups/{group}/reset", "Groups", "ResetCursors", gpb.ResetCursorsRequest,
          gpb.GroupDescription, "Move a group's cursors (all partitions, or those named) to a start point",
          body=True),
    Route("POST", "/v1/groups/{group}/redrive", "Groups", "Redrive", gpb.RedriveRequest, gpb.RedriveResponse,
          "Append a group's dead letters again for it alone (by stream, by position range); idempotent",
          body=True),
)  # fmt: skip


class BadRequest(Exception):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _scalar(field: Any, value: str, name: str) -> Any:
    """A query parameter's text as the JSON value its field takes."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Empty":
            if value.lower() in ("", "true", "1"):
                return {}
            raise BadRequest(f"{name}: an empty choice takes true", name)
        if field.message_type.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            return value
        raise BadRequest(f"{name}: name one of its fields ({name}.<field>)", name)
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() in ("true", "1", ""):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise BadRequest(f"{name}: expected true or false", name)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(value)
        except ValueError:
            raise BadRequest(f"{name}: expected a number", name) from None
    return value  # strings, enums by name, integers as text (as proto3 JSON allows)


def query_fields(descriptor: Any, query: Mapping[str, str], multi: dict[str, list[str]]) -> dict[str, Any]:
    """Query parameters as a request dict: dotted paths name (nested) fields; repeated
    fields take every value given."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(query):
        if name in ("access_token",):
            continue
        desc: Any = descriptor
        node = out
        parts = name.split(".")
        for i, part in enumerate(parts):
            field = desc.fields_by_name.get(part)
            if field is None:
                raise BadRequest(f"unknown query parameter {name!r}", name)
            if i < len(parts) - 1:
                if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
                    raise BadRequest(f"{name}: {part} has no fields", name)
                node = node.setdefault(part, {})
                desc = field.message_type
            elif field.is_repeated:
                node[part] = [_scalar(field, v, name) for v in multi[name]]
            else:
                node[part] = _scalar(field, query[name], name)
    return out


def parse_request(route: Route, request: web.Request, body: Any) -> Message:
    """The RPC's request message from the path, the query or the body."""
    fields: dict[str, Any]
    if route.body:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object (the request message)", "body")
        fields = dict(body)
    else:
        multi = {k: request.query.getall(k) for k in request.query}
        fields = query_fields(route.request.DESCRIPTOR, request.query, multi)
    for name in route.path_fields:
        value = request.match_info[name]
        if name in fields and fields[name] != value:
            raise BadRequest(f"{name}: the body names another than the path", name)
        fields[name] = value
    try:
        return json_format.ParseDict(fields, route.request())
    except json_format.ParseError as e:
        raise BadRequest(str(e)[:300], parse_error_field(str(e))) from None


def parse_error_field(message: str) -> str:
    """The field a protobuf JSON parse error is about, as a dotted path (``events.data``,
    ``retention.max_age``): json_format says "Failed to parse X field: " for each level
    and 'has no field named "Y"' for an unknown one."""
    path = re.findall(r"Failed to parse (\w+) field", message)
    unknown = re.search(r'has no field named "([^"]{1,100})"', message)
    if unknown:
        path.append(unknown.group(1))
    return ".".join(path)


def error_body(code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str],
               details: list[Any] | None = None) -> web.Response:  # fmt: skip
    body = {
        "error": message,
        "code": code.name,
        "reason": reason,
        "metadata": dict(metadata),
        "details": details or [],
    }
    return web.json_response(body, status=HTTP_STATUS.get(code, 500))


def refusal(status: int, code: str, reason: str, message: str, metadata: dict[str, str]) -> web.Response:
    """An HTTP-level refusal (sluice.httpserver.json_refusals) in the JSON error shape."""
    response = error_body(grpc.StatusCode[code], reason, message, metadata)
    response.set_status(status)
    return response


def rpc_error(e: grpc.aio.AioRpcError) -> web.Response:
    """The store's status as JSON: its reason and metadata (ErrorInfo) and every detail."""
    status = status_of(e)
    reason, metadata, details = "", {}, []
    if status is not None:
        details = json_format.MessageToDict(status, preserving_proto_field_name=True).get("details", [])
        for d in status.details:
            if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                d.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    return error_body(e.code(), reason or e.code().name, e.details() or "", metadata, details)


def gateway_error(e: GatewayError) -> web.Response:
    return error_body(e.code, e.reason, e.message, e.metadata)


def bad_request(e: BadRequest) -> web.Response:
    violation = {"field": e.field, "description": str(e)} if e.field else None
    details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "field_violations": [violation]}]
    meta = {"field": e.field} if e.field else {}
    return error_body(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", str(e), meta, details if violation else []
    )


def next_start(req: pb.ReadRequest, last: pb.RecordedEvent) -> dict[str, str] | None:
    """Where the page after one ending at ``last`` starts (None: before the first)."""
    if req.stream:
        key, at = "revision", last.revision
    else:
        key, at = "position", last.position
    if req.backwards:
        return {key: str(at - 1)} if at > (0 if req.stream else 1) else None
    return {key: str(at + 1)}


class JsonApi:
    """The routes of ROUTES, each calling its RPC on the store with the caller's credential."""

    def __init__(self, gateway: Gateway, channel: grpc.aio.Channel) -> None:
        self.gateway = gateway
        self.stubs: dict[str, Any] = {
            "Streams": pb_grpc.StreamsStub(channel),
            "Groups": gpb_grpc.GroupsStub(channel),
        }

    def add_routes(self, app: web.Application, caller: Any) -> None:
        """``caller(request)``: the Caller of an HTTP request (raises GatewayError)."""
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._handler(route, caller))

    def _handler(self, route: Route, caller_of: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                caller: Caller = caller_of(request)
                body = None
                if route.body:
                    try:
                        body = json.loads(await request.read() or b"{}")
                    except (ValueError, RecursionError) as e:
                        raise BadRequest(f"the body is not JSON: {str(e)[:200]}", "body") from None
                req = parse_request(route, request, body)
                if route.paged_read:
                    return web.json_response(await self._read_page(req, caller))  # type: ignore[arg-type]
                method = getattr(self.stubs[route.service], route.rpc)
                resp = await method(req, metadata=caller.metadata(), timeout=CALL_TIMEOUT)
                return web.json_response(to_json(resp))
            except BadRequest as e:
                return bad_request(e)
            except GatewayError as e:
                return gateway_error(e)
            except grpc.aio.AioRpcError as e:
                return rpc_error(e)

        handle.__name__ = route.rpc
        return handle

    async def _read_page(self, req: pb.ReadRequest, caller: Caller) -> dict[str, Any]:
        """One page of a Read: the header, up to max_count events (PAGE unless asked, at most
        MAX_PAGE), and ``next``: the start point of the following page (null at the end)."""
        if req.max_count > MAX_PAGE:
            raise BadRequest(f"max_count: at most {MAX_PAGE} events a page", "max_count")
        want = req.max_count or PAGE
        req.max_count = want
        header: dict[str, Any] = {}
        events: list[pb.RecordedEvent] = []
        call = self.stubs["Streams"].Read(req, metadata=caller.metadata(), timeout=CALL_TIMEOUT)
        async for msg in call:
            if msg.HasField("header"):
                header = to_json(msg.header)
            events.extend(msg.events)
        nxt = next_start(req, events[-1]) if len(events) >= want else None
        return {"header": header, "events": [to_json(e) for e in events], "next": nxt}
