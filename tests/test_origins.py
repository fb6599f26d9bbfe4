"""No web page can drive the server unasked: CORS for local origins only, and Host checked."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from llmkit.server.origins import Policy
from tests.helpers import root_url

LOCAL = Policy.for_server("127.0.0.1", None, None)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",
        "http://127.0.0.1:8000",
        "https://[::1]",
        "http://app.localhost:5173",
    ],
)
def test_pages_on_this_machine_may_call_the_server(origin: str) -> None:
    assert LOCAL.origin_allowed(origin, "127.0.0.1:8000")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example",
        "null",
        "file://",
        "chrome-extension://abcdef",
    ],
)
def test_pages_elsewhere_may_not(origin: str) -> None:
    assert not LOCAL.origin_allowed(origin, "127.0.0.1:8000")


def test_the_servers_own_origin_and_allowed_ones_may() -> None:
    lan = Policy.for_server("0.0.0.0", ["https://chat.example.com"], None)
    assert lan.origin_allowed("http://192.168.1.5:8000", "192.168.1.5:8000")  # the web chat
    assert not lan.origin_allowed("http://192.168.1.5:9000", "192.168.1.5:8000")
    assert lan.origin_allowed("https://chat.example.com/", "192.168.1.5:8000")
    assert Policy.for_server("127.0.0.1", ["*"], None).origin_allowed("https://any.example", None)


def test_on_loopback_only_loopback_host_names_are_served() -> None:
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "127.0.0.2"):
        assert LOCAL.host_allowed(host), host
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.nip.io:8000", "", None):
        assert not LOCAL.host_allowed(host), host
    proxied = Policy.for_server("127.0.0.1", None, ["llm.internal"])
    assert proxied.host_allowed("llm.internal:443")
    # Beyond loopback: any address and the machine's name, but no other name (DNS rebinding).
    lan = Policy.for_server("0.0.0.0", None, ["llm.team.example"])
    for host in ("192.168.1.20:8000", "[fe80::1]:8000", socket.gethostname(), "llm.team.example"):
        assert lan.host_allowed(host), host
    assert not lan.host_allowed("rebind.attacker.example:8000")


def request(
    client: openai.OpenAI, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    """Raw HTTP, with exactly these headers (Host included), to the server behind `client`."""
    url = urlsplit(root_url(client))
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": url.netloc, **headers}.items():
            conn.putheader(name, value)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def error_of(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


TINY = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
JSON = {"Content-Type": "application/json"}


@pytest.mark.slow
def test_a_foreign_page_is_refused_and_gets_no_cors_headers(llmkit_server: openai.OpenAI) -> None:
    evil = {"Origin": "https://evil.example"}
    status, headers, body = request(
        llmkit_server, "POST", "/v1/chat/completions", {**JSON, **evil}, TINY
    )
    assert status == 403 and error_of(body)["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in headers
    preflight = {**evil, "Access-Control-Request-Method": "POST"}
    status, headers, _ = request(llmkit_server, "OPTIONS", "/v1/chat/completions", preflight)
    assert status == 403 and "access-control-allow-origin" not in headers


@pytest.mark.slow
def test_a_local_page_gets_cors_headers_for_its_origin_only(llmkit_server: openai.OpenAI) -> None:
    local = {"Origin": "http://localhost:5173"}
    preflight = {
        **local,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, headers, _ = request(llmkit_server, "OPTIONS", "/v1/chat/completions", preflight)
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in headers
    status, headers, body = request(
        llmkit_server, "POST", "/v1/chat/completions", {**JSON, **local}, TINY
    )
    assert status == 200 and json.loads(body)["choices"]
    assert headers["access-control-allow-origin"] == "http://localhost:5173"


@pytest.mark.slow
def test_a_dns_rebinding_host_is_refused_but_health_stays_open(
    llmkit_server: openai.OpenAI,
) -> None:
    rebound = {"Host": "attacker.example:8000"}
    status, _, body = request(llmkit_server, "GET", "/v1/models", rebound)
    assert status == 403 and error_of(body)["code"] == "host_not_allowed"
    status, _, body = request(llmkit_server, "GET", "/health", rebound)
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [
        ("GET", "/v1/no-such-route", {}, None, 404),
        ("GET", "/v1/chat/completions", {}, None, 405),
        ("POST", "/v1/chat/completions", JSON, b"{not json", 400),
        ("POST", "/v1/chat/completions", JSON, b"", 400),
        ("POST", "/v1/chat/completions", {"Content-Type": "text/plain"}, TINY, 415),
        ("POST", "/v1/chat/completions", JSON, {"model": "x", "messages": [{"role": {}}]}, 400),
    ],
)
def test_every_error_is_an_openai_error_object(
    llmkit_server: openai.OpenAI,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    expected: int,
) -> None:
    status, _, raw = request(llmkit_server, method, path, headers, body)
    assert status == expected, raw
    error_of(raw)


@pytest.mark.slow
def test_the_openapi_schema_is_served_and_no_cdn_docs_page(llmkit_server: openai.OpenAI) -> None:
    status, _, body = request(llmkit_server, "GET", "/openapi.json", {})
    assert status == 200
    schema = json.loads(body)
    assert {"/v1/chat/completions", "/v1/completions", "/health"} <= set(schema["paths"])
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    assert "application/json" in chat
    # Swagger UI's page loads its code from a CDN onto the origin where the web chat keeps the key.
    status, _, body = request(llmkit_server, "GET", "/docs", {})
    assert status == 404


@pytest.mark.slow
def test_the_schema_documents_the_errors_as_the_server_answers_them(
    llmkit_server: openai.OpenAI,
) -> None:
    _, _, body = request(llmkit_server, "GET", "/openapi.json", {})
    schema = json.loads(body)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert "422" not in answers, (method, path)  # llmkit answers 400, not FastAPI's 422
            # Anthropic's routes say "overloaded" with its 529 where OpenAI's say 503.
            busy = "529" if path.startswith("/v1/messages") else "503"
            assert {"400", "401", "403", "404", "500", busy} <= set(answers), (method, path)
    assert "OpenAIError" in schema["components"]["schemas"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):  # stream: true
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        # One event, as SSE parsers read it: its fields, of which `data` is always there.
        event = content["text/event-stream"]["schema"]
        assert event["type"] == "object" and event["required"] == ["data"]
        assert set(event["properties"]) == {"data", "event", "id", "retry"}
    status, _, raw = request(llmkit_server, "POST", "/v1/chat/completions", JSON, {"messages": 3})
    assert status == 400 and error_of(raw)
