"""The OpenAPI 3.1 document of the gateway's HTTP API, made from the route table
(sluice_gateway.api.ROUTES) and the messages' descriptors, so it cannot drift from the code.
Schemas follow the proto3 JSON mapping: 64-bit integers are strings, bytes base64,
enums their names, Timestamps RFC 3339 text, Durations ``"1.5s"``."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from sluice_gateway.api import HTTP_STATUS, MAX_PAGE, PAGE, ROUTES, Route

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def message(self, desc: Any) -> dict[str, Any]:
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        name = desc.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: messages may refer to themselves
            props = {f.name: self.field(f) for f in desc.fields}
            schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
            oneofs = [o for o in desc.oneofs if not o.name.startswith("_")]
            if oneofs:
                schema["description"] = "; ".join(
                    f"at most one of {', '.join(f.name for f in o.fields)}" for o in oneofs
                )
            self.schemas[name] = schema
        return _ref(name)

    def field(self, f: Any) -> dict[str, Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        one = self.single(f)
        return {"type": "array", "items": one} if f.is_repeated else one

    def single(self, f: Any) -> dict[str, Any]:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(f.message_type)
        if f.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in f.enum_type.values]}
        return dict(_SCALARS[f.type])


def _query_parameters(desc: Any, skip: set[str], prefix: str = "", depth: int = 0) -> list[dict[str, Any]]:
    """Every field reachable by a dotted path, as a query parameter."""
    out: list[dict[str, Any]] = []
    for f in desc.fields:
        name = prefix + f.name
        if name in skip:
            continue
        repeated = f.is_repeated
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.Empty":
            schema: dict[str, Any] = {"type": "boolean", "enum": [True]}
        elif f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name in _WELL_KNOWN:
            schema = dict(_WELL_KNOWN[f.message_type.full_name])
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            if not repeated and depth < 3:
                out += _query_parameters(f.message_type, skip, name + ".", depth + 1)
            continue
        elif f.type == FieldDescriptor.TYPE_ENUM:
            schema = {"type": "string", "enum": [v.name for v in f.enum_type.values]}
        else:
            schema = dict(_SCALARS[f.type])
        if repeated:
            schema = {"type": "array", "items": schema}
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if repeated:
            param.update(style="form", explode=True)
        out.append(param)
    return out


ERROR_RESPONSE = {"description": "an error", "content": {"application/json": {"schema": _ref("Error")}}}
ERROR = {
    "type": "object",
    "required": ["error", "code", "reason"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong"},
        "code": {"type": "string", "description": "the gRPC status code's name"},
        "reason": {"type": "string", "description": "the ErrorReason (google.rpc.ErrorInfo reason)"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "details": {"type": "array", "items": {"type": "object"}, "description": "google.rpc details"},
    },
}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in route.path_fields
    ]
    op: dict[str, Any] = {
        "operationId": f"{route.rpc}{'Stream' if '{stream}' in route.path and route.paged_read else ''}",
        "summary": route.summary,
        "tags": [route.service],
        "description": f"sluice.v1.{route.service}/{route.rpc}",
    }
    if route.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.message(route.request.DESCRIPTOR)}},
        }
    else:
        params += _query_parameters(route.request.DESCRIPTOR, set(route.path_fields))
    if params:
        op["parameters"] = params
    if route.paged_read:
        fields = route.response.DESCRIPTOR.fields_by_name
        ok: dict[str, Any] = {
            "type": "object",
            "description": f"One page: {PAGE} events unless max_count asks for fewer (at most {MAX_PAGE})",
            "properties": {
                "header": schemas.message(fields["header"].message_type),
                "events": {"type": "array", "items": schemas.message(fields["events"].message_type)},
                "next": {
                    "description": "where the next page starts (from.revision or .position); null at the end",
                    "oneOf": [
                        {"type": "null"},
                        {"type": "object", "additionalProperties": {"type": "string"}},
                    ],
                },
            },
        }
    else:
        ok = schemas.message(route.response.DESCRIPTOR)
    op["responses"] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
        "default": ERROR_RESPONSE,
    }
    return op


#: The query parameters of GET /v1/watch (the SSE watch takes these and no others).
WATCH_QUERY: dict[str, dict[str, Any]] = {
    "stream": {"type": "array", "items": {"type": "string"}},
    "prefix": {"type": "array", "items": {"type": "string"}},
    "type": {"type": "array", "items": {"type": "string"}},
    "form": {"type": "string", "enum": ["full", "notification"]},
    "overflow": {"type": "string", "enum": ["catch_up", "drop", "disconnect"]},
    "position": {"type": "integer", "minimum": 0},
    "buffer_size": {"type": "integer", "minimum": 0},
    "ephemeral": {"type": "boolean"},
    "heartbeat": {"type": "number", "minimum": 0, "maximum": 3600},
    "access_token": {"type": "string"},
}


def document(version: str = "1") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    paths["/v1/publish"] = {
        "post": {
            "operationId": "Publish",
            "summary": "Publish an ephemeral message to subscribers (not stored)",
            "tags": ["Gateway"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["stream", "type"],
                            "properties": {
                                "stream": {"type": "string"},
                                "type": {"type": "string"},
                                "data": {"description": "any JSON value"},
                                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                "ttl_seconds": {"type": "number"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": ERROR_RESPONSE,
            },
        }
    }
    paths["/v1/watch"] = {
        "get": {
            "operationId": "Watch",
            "summary": "Server-Sent Events: CloudEvents JSON objects, each SSE id the event's position",
            "tags": ["Gateway"],
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": s} for n, s in WATCH_QUERY.items()
            ],
            "responses": {
                "200": {
                    "description": "an event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "default": ERROR_RESPONSE,
            },
        }
    }
    schemas.schemas["Error"] = ERROR
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice gateway HTTP API",
            "version": version,
            "description": (
                "The store's operations over HTTP/JSON (proto3 JSON mapping), publish and SSE watch. "
                "Errors map gRPC codes to HTTP statuses: "
                + ", ".join(f"{c.name} {s}" for c, s in HTTP_STATUS.items() if s != 200)
            ),
        },
        "components": {
            "schemas": schemas.schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    }
