"""Which web pages may use the server, and under which Host names: no page can drive it unasked.

With no API key (the default), any web page a user opens could otherwise send requests to
`http://127.0.0.1:8000` and read the answers: llama_cpp.server allows every origin, with
credentials. Here, as Ollama does after the same class of report:

- a request from a browser page (it carries `Origin`) is served only when the page is on this
  machine (`http(s)://localhost`, `127.0.0.1`, `[::1]`, any port), on the server's own origin (the
  web chat), or on an origin allowed with `--allow-origin` (`*` allows all); any other is refused
  with a 403, preflights included, and gets no CORS headers;
- a server answers only requests whose `Host` names it: on loopback, a loopback name or address;
  listening beyond loopback (`--host 0.0.0.0`), also any IP address and the machine's own name;
  and a name allowed with `--allow-host` (a reverse proxy's, the team's DNS name). A DNS-rebinding
  page, whose requests name its own domain, is refused: rebinding needs a name, never an address.

Programs (the openai SDK, curl) send no `Origin` and are not affected. `/health` and `/ready` stay
open to any Host, for load balancers and probes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from llmkit.net import is_loopback

OPEN_PATHS = {"/health", "/ready"}
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project"


def _loopback_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_of(authority: str) -> str:
    """The host part of a Host header value (`[::1]:8000` → `::1`, `a.example:80` → `a.example`)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@dataclass(frozen=True)
class Policy:
    """The origins and Host names a server accepts; pure, so it is tested without a server."""

    origins: frozenset[str] = frozenset()  # allowed besides the local ones; "*" is all
    hosts: frozenset[str] = frozenset()  # Host names allowed besides loopback's
    addresses: bool = False  # any IP address as the Host: on when listening beyond loopback

    @classmethod
    def for_server(
        cls, listen: str, origins: Iterable[str] | None, hosts: Iterable[str] | None
    ) -> Policy:
        names = {h.lower() for h in hosts or ()}
        beyond_loopback = not is_loopback(listen)
        if beyond_loopback:  # the names this machine answers to on its network
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(
            origins=frozenset(o.rstrip("/").lower() for o in origins or ()),
            hosts=frozenset(names),
            addresses=beyond_loopback,
        )

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """May a page on `origin` call this server (reached as `host`)?"""
        origin = origin.rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (a file or sandboxed page) and other schemes
        if _loopback_name(parts.hostname):
            return True
        return host is not None and parts.netloc == host.strip().lower()  # the same origin

    def host_allowed(self, host: str | None) -> bool:
        """Is this Host header one the server answers to?"""
        if not host:
            return False
        name = _host_of(host)
        return _loopback_name(name) or name in self.hosts or (self.addresses and _address(name))


class OriginGuard:
    """ASGI middleware enforcing a Policy; allowed pages get CORS headers for their origin."""

    def __init__(self, app: Any, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host"), headers.get("origin")
        if scope["path"] not in OPEN_PATHS and not self.policy.host_allowed(host):
            await _refuse(
                send,
                f"requests for host {host!r} are not served here (start the server with "
                "--allow-host NAME to serve that name)",
                "host_not_allowed",
            )
            return
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not self.policy.origin_allowed(origin, host):
            await _refuse(
                send,
                f"web pages from {origin} may not use this server "
                "(start it with --allow-origin ORIGIN to allow them)",
                "origin_not_allowed",
            )
            return
        cors = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                        (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                        (b"access-control-max-age", b"600"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _refuse(send: Any, message: str, code: str) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": "permission_error", "param": None, "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
