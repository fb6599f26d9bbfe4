"""Errors as the OpenAI API answers them: one body shape, and one table from what went wrong to
the status and code a client sees.

Routes raise; the app's handlers (installed once, by `install_handlers`) answer. A 503 always carries
`Retry-After`, so that clients and balancers back off instead of hammering a busy server.
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

RETRY_AFTER_SECONDS = 2


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


def busy(message: str, code: str) -> JSONResponse:
    """A 503 that asks the client to come back: the queue is full, or the server is stopping."""
    return openai_error(
        503,
        message,
        kind="server_busy",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


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
    """Answer every exception a route raises as an OpenAI error: the one mapping of the server."""

    @app.exception_handler(RequestValidationError)
    async def not_valid(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("", "application/json"):  # FastAPI did not read it as JSON at all
            return openai_error(
                415, f"the body must be JSON (Content-Type: application/json), not {kind}"
            )
        message, param = invalid(exc.errors())
        return openai_error(400, message, param=param)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return openai_error(400, str(exc), param=exc.param)

    @app.exception_handler(GrammarFailed)  # before the first token; later, an error event
    async def grammar_failed(_: Request, exc: GrammarFailed) -> JSONResponse:
        return openai_error(400, str(exc), code="grammar_failed")

    for exception, (code, message) in _BUSY.items():

        async def not_now(_: Request, exc: Exception, code: str = code, form: str = message) -> Any:
            return busy(form.format(exc), code)

        app.add_exception_handler(exception, not_now)

    @app.exception_handler(HTTPException)  # starlette's: unknown routes and methods too
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a body past --max-body (llmkit.server.gate)
            return openai_error(413, str(exc.detail), code="request_too_large")
        return openai_error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not the request's fault: the id ties the answer to the traceback in the log.
        error_id = uuid.uuid4().hex[:12]
        logging.getLogger("llmkit").exception("request failed (error id %s)", error_id)
        return openai_error(
            500,
            f"internal error (id {error_id}): {exc}",
            kind="server_error",
            code="internal_error",
        )
