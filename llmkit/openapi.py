"""The OpenAPI schema as the server really answers: every error an OpenAI error object.

FastAPI documents a 422 validation error on every route with a body; llmkit answers 400 there,
in OpenAI's shape, and may answer any route with 401 (API key), 403 (origin or Host), 404, 405,
415, 500 or 503 (busy, Retry-After). Client generators and fuzzers read this schema, so it says so.
"""

from __future__ import annotations

import copy
from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "title": "OpenAIError",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}

ERRORS = {
    "400": "Bad request: invalid or unsupported parameters",
    "401": "Missing or wrong API key",
    "403": "A web page origin or Host name this server does not serve",
    "404": "Not found",
    "405": "Method not allowed",
    "415": "The body is not sent as JSON",
    "500": "Internal error (its id is in the server's log)",
    "503": "Busy or shutting down; retry after Retry-After seconds",
}


# Routes that answer `stream: true` with server-sent events instead of one JSON body.
STREAMING = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
# Before OpenAPI 3.2's itemSchema, an event stream's `schema` describes one event, as its fields
# (what SSE parsers, schemathesis among them, read): every event of these routes is a `data` line,
# a JSON document (or `[DONE]`), with an `event` name on the Responses API's.
EVENT_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "string"},
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
        }
    }
}


def with_openai_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with FastAPI's 422s replaced, every operation's error answers documented, and the
    event stream of the streaming routes."""
    out = copy.deepcopy(schema)
    for route in STREAMING:
        post = out.get("paths", {}).get(route, {}).get("post")
        if post is not None:
            ok = post.setdefault("responses", {}).setdefault("200", {"description": "OK"})
            ok.setdefault("content", {}).update(EVENT_STREAM)
    components = out.setdefault("components", {}).setdefault("schemas", {})
    components["OpenAIError"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/OpenAIError"}
    for path in out.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in ERRORS.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return out
