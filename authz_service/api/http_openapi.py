"""An OpenAPI 3.1 document for the HTTP/JSON API (api.http), derived from the
proto descriptors: one POST path per RPC, one schema per message in the proto3
JSON mapping (camelCase names, 64-bit integers as strings, enums by name,
Timestamps as RFC 3339). Nothing here is written by hand per RPC, so a new RPC
or field shows up without an edit. docs/http-api.openapi.json is this output
(tests/test_http.py fails when they differ)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor

FD = descriptor.FieldDescriptor

_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: {"type": "number"},
    FD.TYPE_FLOAT: {"type": "number"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # proto3 JSON: 64-bit integers are strings (they do not fit a JavaScript number).
    FD.TYPE_INT64: {"type": "string", "format": "int64"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Empty": {"type": "object"},
}

# The Connect error body (connectrpc.com/docs/protocol#error-end-stream).
_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {
            "type": "string",
            "description": "The gRPC status code, lower case (invalid_argument, unauthenticated, ...).",
        },
        "message": {"type": "string", "description": "The same message the gRPC call gives."},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"connect.Error": _ERROR}

    def message(self, msg: descriptor.Descriptor) -> dict[str, Any]:
        if msg.full_name in _WELL_KNOWN:
            return _WELL_KNOWN[msg.full_name]
        if msg.full_name not in self.schemas:
            self.schemas[msg.full_name] = {}  # placeholder first: messages may refer to themselves
            properties = {field.json_name: self.field(field) for field in msg.fields}
            self.schemas[msg.full_name] = {
                "type": "object",
                "additionalProperties": False,
                "properties": properties,
            }
        return _ref(msg.full_name)

    def enum(self, enum: descriptor.EnumDescriptor) -> dict[str, Any]:
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = {"type": "string", "enum": [v.name for v in enum.values]}
        return _ref(enum.full_name)

    def single(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("connect.Error")}},
    }


def openapi_document(services: Iterable[descriptor.ServiceDescriptor]) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    for service in services:
        for method in service.methods:
            request = schemas.message(method.input_type)
            response = schemas.message(method.output_type)
            if method.server_streaming:
                operation = {
                    "summary": f"{method.name} (server stream)",
                    "description": (
                        "Connect server streaming: the body is one enveloped JSON message "
                        "(1 flag byte 0, 4-byte big-endian length, JSON); the answer is "
                        f"enveloped {method.output_type.full_name} messages, then an end frame "
                        '(flag 2) with {} or {"error": {"code", "message"}}.'
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {"application/connect+json": {"schema": request}},
                    },
                    "responses": {
                        "200": {
                            "description": "The stream (errors after the start are in the end frame).",
                            "content": {"application/connect+json": {"schema": response}},
                        },
                        "default": _error_response("The stream was refused before it started."),
                    },
                }
            else:
                operation = {
                    "summary": method.name,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                    "responses": {
                        "200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                        "default": _error_response(
                            "An error: the HTTP status of the Connect protocol, the gRPC code and message."
                        ),
                    },
                }
            operation["operationId"] = f"{service.full_name}.{method.name}"
            operation["tags"] = [service.full_name]
            paths[f"/{service.full_name}/{method.name}"] = {"post": operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "authz-service HTTP/JSON API (Connect protocol)",
            "version": "v1",
            "description": (
                "Every RPC of the gRPC API, as POST /<service>/<method> with a JSON body in the "
                "proto3 JSON mapping. Authenticate with 'Authorization: Bearer <API key>'. See docs/http-api.md."
            ),
        },
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


def main() -> None:
    """Print the document (docs/http-api.openapi.json is this output)."""
    import json

    from ..gen.authz.v1 import admin_pb2, authz_pb2

    services = (
        authz_pb2.DESCRIPTOR.services_by_name["AuthzService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    )
    print(json.dumps(openapi_document(services), indent=2))


if __name__ == "__main__":
    main()
