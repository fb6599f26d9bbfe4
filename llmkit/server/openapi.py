"""The OpenAPI schema as the server really answers: every error an OpenAI error object (an
Anthropic one on the Messages API's routes).

FastAPI documents a 422 validation error on every route with a body; llmkit answers 400 there,
in OpenAI's shape, and may answer any route with 401 (API key), 403 (origin or Host), 404, 405,
415, 500 or 503 (busy, Retry-After). Client generators and fuzzers read this schema, so it says so.

The request bodies are llmkit.server.bodies' models, whose JSON schema carries their bounds; the bounds
the served model sets (its vocabulary, its embedding size) are marked there and stated here from
the running server's values, the ones the request is checked against.
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

ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "title": "AnthropicError",
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
# The routes whose errors are Anthropic's (a busy server: 529 overloaded_error, not 503).
ANTHROPIC_ROUTES = ("/v1/messages", "/v1/messages/count_tokens")
ANTHROPIC_BUSY = {"529": "Overloaded (the queue is full) or shutting down; retry after Retry-After"}

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
STREAMING = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
# Before OpenAPI 3.2's itemSchema, an event stream's `schema` describes one event, as its fields
# (what SSE parsers, schemathesis among them, read): every event of these routes is a `data` line,
# a JSON document (or `[DONE]`), with an `event` name on the Responses and Messages APIs'.
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


def decimal_range(top: int) -> str:
    """A regular expression for the decimal numbers 0 to `top` (no sign, no leading zero)."""
    digits = str(top)
    shorter = ["0"] + [f"[1-9][0-9]{{{n - 1}}}" for n in range(1, len(digits))]
    same = []
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = f"[0-9]{{{len(digits) - i - 1}}}" if i < len(digits) - 1 else ""
            same.append(f"{digits[:i]}[{low}-{int(d) - 1}]{rest}")
    same.append(digits)
    options = dict.fromkeys(
        shorter[: len(digits)] + same if top >= 10 else [*map(str, range(top + 1))]
    )
    return "^(" + "|".join(options) + ")$"


def with_bounds(schema: dict[str, Any], bounds: dict[str, int]) -> dict[str, Any]:
    """`schema` with every value marked by a key of `bounds` (llmkit.server.schemas.TOKEN_ID, ...) at most
    that bound: a number's maximum, a token id written as an object key's pattern."""
    out = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for marker, top in bounds.items():
                if node.get(marker):
                    if "pattern" in node:
                        node["pattern"] = decimal_range(top)
                    else:
                        node["maximum"] = top
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(out)
    return out


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
    components["AnthropicError"] = ANTHROPIC_ERROR_SCHEMA
    for route, path in out.get("paths", {}).items():
        anthropic = route in ANTHROPIC_ROUTES
        name = "AnthropicError" if anthropic else "OpenAIError"
        reference = {"$ref": f"#/components/schemas/{name}"}
        errors = ERRORS
        if anthropic:
            errors = {**{k: v for k, v in ERRORS.items() if k != "503"}, **ANTHROPIC_BUSY}
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in errors.items():
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
