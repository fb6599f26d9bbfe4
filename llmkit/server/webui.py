"""The web chat: the page in llmkit/web/, served at `/` by `llmkit serve` itself.

The files ship inside the package (the Markdown libraries vendored in llmkit/web/vendor/), so the
page works on an air-gapped machine and never asks another origin for anything. They are read and
gzipped once, when the server starts. As llama-server does with its own page, `/` is revalidated on
every load (`no-cache` with an ETag, so a reload costs a 304) and names the other files by their
content hash (`/ui/app.js?v=HASH`), which may then be cached for good: an upgraded llmkit's page
is picked up on the next load. Every file goes out under a Content-Security-Policy that allows
scripts, styles and requests from this origin only, and no inline script or style: nothing a
model or a user writes can run.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from typing import Any

from llmkit.errors import LlmkitError

ASSET_PREFIX = "/ui/"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
# The page names its other files as src="/ui/NAME" or href="/ui/NAME".
_ASSET_REF = re.compile(r'(?P<attr>(?:src|href)=")/ui/(?P<name>[^"?#]+)"')


@dataclass(frozen=True)
class Asset:
    """One file of the page, ready to send: its bytes plain and gzipped, and their ETags."""

    content_type: str
    body: bytes
    gzipped: bytes
    digest: str  # sha256 of body, hex

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind(".") :]
        # mtime=0: the same file always gzips to the same bytes, so its ETag holds across restarts.
        return cls(_TYPES[suffix], body, gzip.compress(body, 9, mtime=0), _sha256(body))

    def etag(self, gzipped: bool) -> str:
        # Two encodings are two representations: a strong ETag each.
        return f'"{self.digest[:32]}{"-gz" if gzipped else ""}"'


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip;q=0` refuses it)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if "q=" in params else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 13.1.2): `*`, or any listed tag, W/ or not."""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


class Page:
    """The web chat's files by URL path, with `/` the page itself."""

    def __init__(self, files: dict[str, bytes]) -> None:
        """`files`: name (index.html, app.js, vendor/marked.umd.js, ...) to bytes."""
        self.assets: dict[str, Asset] = {
            ASSET_PREFIX + name: Asset.of(name, body)
            for name, body in files.items()
            if name != "index.html" and name[name.rfind(".") :] in _TYPES
        }
        self.assets["/"] = Asset.of("index.html", self._versioned(files["index.html"]))

    @classmethod
    def packaged(cls) -> Page:
        """The page shipped in llmkit/web/."""
        root = resources.files("llmkit") / "web"
        files: dict[str, bytes] = {}

        def walk(folder: Any, prefix: str) -> None:
            for entry in folder.iterdir():
                if entry.is_dir():
                    walk(entry, f"{prefix}{entry.name}/")
                else:
                    files[prefix + entry.name] = entry.read_bytes()

        walk(root, "")
        return cls(files)

    def _versioned(self, index: bytes) -> bytes:
        """index.html with each /ui/NAME it names as /ui/NAME?v=HASH (an unknown name is a bug)."""

        def version(match: re.Match[str]) -> str:
            path = ASSET_PREFIX + match["name"]
            if path not in self.assets:
                raise LookupError(f"index.html names {path}, which is not in llmkit/web/")
            return f'{match["attr"]}{path}?v={self.assets[path].digest[:16]}"'

        return _ASSET_REF.sub(version, index.decode()).encode()

    def respond(
        self, path: str, query_version: str | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes] | None:
        """Status, headers and body for a GET of `path`; None when the page has no such file.

        `headers` are the request's, lower-cased. A file asked for under its current hash
        (`?v=`) may be cached for good; anything else is revalidated.
        """
        asset = self.assets.get(path)
        if asset is None:
            return None
        gzipped = accepts_gzip(headers.get("accept-encoding", ""))
        etag = asset.etag(gzipped)
        current = path != "/" and query_version == asset.digest[:16]
        out = {
            **_SECURITY_HEADERS,
            "etag": etag,
            "cache-control": IMMUTABLE if current else REVALIDATE,
            "vary": "Accept-Encoding",
        }
        if etag_matches(headers.get("if-none-match", ""), etag):
            return 304, out, b""
        body = asset.gzipped if gzipped else asset.body
        out["content-type"] = asset.content_type
        if gzipped:
            out["content-encoding"] = "gzip"
        return 200, out, body


def add_routes(app: Any, page: Page) -> None:
    """Serve the page on a FastAPI app: GET (and HEAD) `/` and `/ui/...`, outside the API key."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    async def serve(request: Request) -> Response:
        answer = page.respond(
            request.url.path,
            request.query_params.get("v"),
            {k.lower(): v for k, v in request.headers.items()},
        )
        if answer is None:
            raise HTTPException(404, f"no such file: {request.url.path}")
        status, headers, body = answer
        return Response(body, status_code=status, headers=headers)

    app.add_route("/", serve, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route(
        ASSET_PREFIX + "{name:path}", serve, methods=["GET", "HEAD"], include_in_schema=False
    )


def page_url(api_url: str) -> str:
    """The web chat's address for a server whose API is at `api_url` (…/v1)."""
    return api_url.rstrip("/").removesuffix("/v1") + "/"


def check_page(api_url: str, timeout: float = 5.0) -> str:
    """The address of the web chat of the server at `api_url`, once it is known to answer there."""
    url = page_url(api_url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            kind = response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LlmkitError(
                f"the server at {api_url} has no web chat (started with --no-ui, or not llmkit)"
            ) from None
        raise LlmkitError(f"the server at {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError):
        raise LlmkitError(
            f"no server at {api_url} — start one with: llmkit serve --model NAME"
        ) from None
    if not kind.startswith("text/html"):
        raise LlmkitError(f"the server at {url} answers with {kind or 'no content type'}, no page")
    return url
