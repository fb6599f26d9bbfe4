"""Who asks is checked before what they send is read, and what they send is bounded.

FastAPI reads and parses a body before its dependencies run, so a key checked there lets anyone
without it make the server read, parse and hold any body. This ASGI middleware answers a request
with no key, or the wrong one, with a 401 before a byte of its body is read (as llama-server
does); then a body longer than --max-body is a 413: at once when its Content-Length says so, else
(a chunked body) as soon as the bytes received pass the limit.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from llmkit.server.errors import error

# Served to anyone: liveness and readiness (a balancer's checks), the web chat page (it asks for
# the key), the schema. Everything under these prefixes needs the key.
KEYED_PREFIXES = ("/v1/", "/extras/")
KEYED_PATHS = {"/metrics"}


UNAUTHORIZED = "invalid or missing API key (send Authorization: Bearer KEY, or x-api-key: KEY)"


def too_large(limit: int) -> str:
    return f"the request body is larger than this server takes ({limit} bytes; --max-body)"


def keyed(path: str) -> bool:
    """Does a request to this path need the key?"""
    return path in KEYED_PATHS or path.startswith(KEYED_PREFIXES)


def key_matches(headers: list[tuple[bytes, bytes]], key: bytes) -> bool:
    """Whether the request carries the key, as `Authorization: Bearer KEY` (OpenAI's SDKs) or
    `x-api-key: KEY` (Anthropic's); compared as bytes in constant time (a token of any bytes is
    just a wrong key, not an error)."""
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                return True
        elif name == b"x-api-key" and hmac.compare_digest(value.strip(), key):
            return True
    return False


class BodyTooLarge(HTTPException):
    """Raised while a body is received, once its bytes pass the limit: the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


class Gate:
    """ASGI middleware: a keyed route without the right key is a 401, its body never read; a body
    over the limit is a 413."""

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (
            self.key is not None
            and scope["method"] != "OPTIONS"  # a CORS preflight carries no credentials
            and keyed(scope["path"])
            and not key_matches(scope["headers"], self.key)
        ):
            request = Request(scope)
            refused = error(request, 401, UNAUTHORIZED, code="invalid_api_key")
            refused.headers["www-authenticate"] = "Bearer"
            await refused(scope, receive, send)
            return
        if _content_length(scope["headers"]) > self.max_body:
            request = Request(scope)
            too_big = error(request, 413, too_large(self.max_body), code="request_too_large")
            await too_big(scope, receive, send)
            return
        received = 0

        async def bounded() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, bounded, send)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
