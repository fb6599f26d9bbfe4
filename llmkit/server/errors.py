"""Errors as the OpenAI API answers them: one body shape, and one table from what went wrong to
the status and code a client sees.

Routes raise; the app's handlers (installed once, by `install_handlers`) answer. A 503 always carries
`Retry-After`, so that clients and balancers back off instead of hammering a busy server.

The Anthropic routes (/v1/messages and below, and /v1/models when an Anthropic SDK asks, with
`anthropic-version`) get the same answers in Anthropic's shape (`error`, by the request's path):
a busy server is Anthropic's 529 `overloaded_error` there, still with `Retry-After`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llmkit.engine import CacheFull, GrammarFailed, QueueFull, ShuttingDown
from llmkit.errors import BadRequest
from llmkit.server.registry import ModelNotFound, ModelUnavailable

RETRY_AFTER_SECONDS = 2


class InvalidBody(HTTPException):
    """A large body found invalid off the event loop (FastAPI passes an HTTPException through)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(400, message)
        self.param = param


class Unfinished(Exception):
    """A job ended without finishing every choice: the server is shutting down."""


def openai_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape the OpenAI API (and so every OpenAI SDK) understands."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# Anthropic's error types by status (its documented ones; 529: overloaded).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Anthropic's status for a server too busy to take the request: 529, not 429. A 429 tells an
# Anthropic client that it (its key) went over its rate limit; a full queue is the server's
# capacity for everyone, which is what 529 overloaded_error says (and the SDKs retry both).
OVERLOADED = 529


def anthropic_error(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the shape the Anthropic API (and so every Anthropic SDK) understands."""
    if status == 503:
        status = OVERLOADED
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def anthropic_route(request: Request) -> bool:
    """Whether the request's route answers in Anthropic's shape."""
    path = request.url.path.rstrip("/")
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return True
    return path.startswith("/v1/models") and "anthropic-version" in request.headers


def error(
    request: Request,
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape of the request's API: Anthropic's on its routes, else OpenAI's."""
    if anthropic_route(request):
        return anthropic_error(status, message, headers=headers)
    return openai_error(status, message, kind=kind, param=param, code=code, headers=headers)


def busy(message: str, code: str, request: Request | None = None) -> JSONResponse:
    """A 503 that asks the client to come back: the queue is full, or the server is stopping
    (on an Anthropic route, `request`'s, a 529)."""
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request is not None:
        return error(request, 503, message, kind="server_busy", code=code, headers=retry)
    return openai_error(503, message, kind="server_busy", code=code, headers=retry)


def error_event(message: str, code: str | None) -> bytes:
    """An error sent inside a stream whose status line has already gone out."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


# Why the engine (or the embedder) did not run a request: the 503 code and the message's form.
_BUSY: dict[type[Exception], tuple[str, str]] = {
    QueueFull: ("queue_full", "server busy: {}; retry shortly"),
    ShuttingDown: ("shutting_down", "{}"),
    Unfinished: ("shutting_down", "the server is shutting down"),
    CacheFull: ("kv_cache_full", "{}"),
}


def event_code(exc: Exception) -> str | None:
    """The code of the error event a stream ends with when `exc` stops it: the one the answer
    would carry had it failed before its status line (grammar_failed, kv_cache_full, ...)."""
    if isinstance(exc, GrammarFailed):
        return "grammar_failed"
    busy = _BUSY.get(type(exc))
    return busy[0] if busy is not None else None


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "[key]"}


def invalid(errors: Sequence[Any]) -> tuple[str, str | None]:
    """pydantic's validation errors as one line and the param it names: the first broken bound
    (a wrong type is only the first error when nothing else is), its place without pydantic's
    union tags (`stop`, not `stop.list[str]`)."""
    chosen = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), None)
    first = chosen or (errors[0] if errors else {})
    where = ".".join(
        str(p)
        for p in first.get("loc", ())
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))
    )
    message = str(first.get("msg", "invalid request"))
    return (f"{where}: {message}" if where else message), where or None


def install_handlers(app: FastAPI) -> None:
    """Answer every exception a route raises as an OpenAI (or Anthropic) error: the one mapping
    of the server."""

    @app.exception_handler(RequestValidationError)
    async def not_valid(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("", "application/json"):  # FastAPI did not read it as JSON at all
            return error(
                request,
                415,
                f"the body must be JSON (Content-Type: application/json), not {kind}",
            )
        message, param = invalid(exc.errors())
        return error(request, 400, message, param=param)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error(request, 400, str(exc), param=exc.param)

    @app.exception_handler(GrammarFailed)  # before the first token; later, an error event
    async def grammar_failed(request: Request, exc: GrammarFailed) -> JSONResponse:
        return error(request, 400, str(exc), code="grammar_failed")

    for exception, (code, message) in _BUSY.items():

        async def not_now(
            request: Request, exc: Exception, code: str = code, form: str = message
        ) -> Any:
            return busy(form.format(exc), code, request)

        app.add_exception_handler(exception, not_now)

    @app.exception_handler(ModelNotFound)
    async def no_such_model(request: Request, exc: ModelNotFound) -> JSONResponse:
        return error(request, 404, str(exc), param="model", code="model_not_found")

    @app.exception_handler(ModelUnavailable)
    async def model_unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        if exc.retry:
            return busy(str(exc), exc.code, request)
        return error(request, 503, str(exc), kind="server_error", code=exc.code)

    @app.exception_handler(HTTPException)  # starlette's: unknown routes and methods too
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a body past --max-body (llmkit.server.gate)
            return error(request, 413, str(exc.detail), code="request_too_large")
        if isinstance(exc, InvalidBody):
            return error(request, 400, str(exc.detail), param=exc.param)
        headers = getattr(exc, "headers", None)
        return error(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the request's fault: the id ties the answer to the traceback in the log.
        error_id = uuid.uuid4().hex[:12]
        logging.getLogger("llmkit").exception("request failed (error id %s)", error_id)
        return error(
            request,
            500,
            f"internal error (id {error_id}): {exc}",
            kind="server_error",
            code="internal_error",
        )
