"""A stand-in Hugging Face Hub: serves real files over HTTP the way huggingface-hub expects.

It answers what huggingface-hub calls for a download and a listing:

- ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``, ``ETag`` and, for LFS
  files, ``X-Linked-Etag``/``X-Linked-Size`` (the sha256 and size the client verifies against),
  ``Accept-Ranges`` and ``Range`` requests (206 with ``Content-Range``);
- ``GET /api/models/{repo}/tree/{revision}?recursive=...``, paginated with a ``Link`` header;
- errors as the real Hub sends them, so that huggingface-hub raises its typed errors: an unknown
  repo is a 401 with ``X-Error-Code: RepoNotFound`` (the Hub does not tell a missing repo from a
  private one to an anonymous client), a missing file a 404 with ``X-Error-Code: EntryNotFound``.

A test registers files, turns the knobs (cut connections, corrupt bodies, throttle) and then
reads back every request the client made.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from llmkit.store import sha256_file

_CHUNK = 256 * 1024
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<revision>[^/]+)(/(?P<path>.*))?$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class HubFile:
    """One file in a stand-in repo: its bytes come from a path on disk or from memory."""

    repo: str
    name: str
    size: int
    sha256: str
    lfs: bool
    path: Path | None = None
    data: bytes | None = None

    def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self.path is not None
        with self.path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    @property
    def git_sha1(self) -> str:
        """The git blob id, which is what the Hub uses as the ETag of a small (non-LFS) file."""
        if self.lfs:
            # The blob of an LFS file is its pointer; what matters here is that it is stable.
            return hashlib.sha1(f"lfs {self.sha256} {self.size}".encode()).hexdigest()
        assert self.data is not None
        return hashlib.sha1(b"blob %d\0" % self.size + self.data).hexdigest()


@dataclass
class Request:
    """What the client asked for, and how many body bytes the Hub sent (updated while sending)."""

    method: str
    path: str
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class Hub:
    """The state of the stand-in Hub; the fixture serves it on 127.0.0.1 at ``url``."""

    url: str = ""
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # Knobs a test may turn at any time, also while a download runs.
    cut_after: int | None = None  # close the connection after this many body bytes of a GET ...
    cut_times: int = 0  # ... for this many GETs
    corrupt: bool = False  # serve bodies with flipped bytes (same length, same advertised sha256)
    throttle: int | None = None  # bytes per second for GET bodies
    page_size: int = 1000  # entries per page of the tree listing
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(
        self,
        repo: str,
        name: str,
        *,
        path: Path | None = None,
        data: bytes | None = None,
        sha256: str | None = None,
        lfs: bool | None = None,
    ) -> HubFile:
        """Publish a file from disk or from bytes; .gguf files are LFS files.

        A file on disk is hashed here unless its sha256 is given (the gemma file is big).
        """
        if (path is None) == (data is None):
            raise ValueError("give exactly one of path and data")
        if path is not None:
            size, sha = path.stat().st_size, sha256 or sha256_file(path)
        else:
            assert data is not None
            size, sha = len(data), hashlib.sha256(data).hexdigest()
        lfs = name.endswith(".gguf") if lfs is None else lfs
        entry = HubFile(repo=repo, name=name, size=size, sha256=sha, lfs=lfs, path=path, data=data)
        self.files[(repo, name)] = entry
        return entry

    def cut(self, after: int, times: int = 1) -> None:
        """Drop the connection after `after` body bytes, for the next `times` GETs of a file."""
        self.cut_after, self.cut_times = after, times

    def commit(self, repo: str) -> str:
        return hashlib.sha1(f"commit of {repo}".encode()).hexdigest()

    def has_repo(self, repo: str) -> bool:
        return any(r == repo for r, _ in self.files)

    # -- what the client did -------------------------------------------------------------

    def gets(self, name: str | None = None) -> list[Request]:
        """GETs of file bodies (resolve URLs), optionally only those of one file."""
        return [
            r
            for r in list(self.requests)
            if r.method == "GET"
            and "/resolve/" in r.path
            and (name is None or r.path.endswith("/" + name))
        ]

    def bytes_sent(self, name: str | None = None) -> int:
        return sum(r.sent for r in self.gets(name))

    def _take_cut(self) -> int | None:
        with self._lock:
            if self.cut_after is None or self.cut_times <= 0:
                return None
            self.cut_times -= 1
            return self.cut_after


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # the test reads hub.requests instead

    @property
    def hub(self) -> Hub:
        return self.server.hub

    def _record(self) -> Request:
        request = Request(self.command, self.path, self.headers.get("Range"))
        self.hub.requests.append(request)
        return request

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(body=True)

    def _dispatch(self, body: bool) -> None:
        request = self._record()
        url = urlsplit(self.path)
        path = unquote(url.path)
        if match := _TREE.match(path):
            if body:
                self._tree(request, match["repo"], match["path"] or "", parse_qs(url.query))
                return
        elif match := _RESOLVE.match(path):
            self._resolve(request, match["repo"], match["file"], body)
            return
        self._error(request, 401, "RepoNotFound", "Repository not found")

    # -- /{repo}/resolve/{revision}/{file} ------------------------------------------------

    def _resolve(self, request: Request, repo: str, name: str, body: bool) -> None:
        if not self.hub.has_repo(repo):
            self._error(request, 401, "RepoNotFound", "Repository not found")
            return
        entry = self.hub.files.get((repo, name))
        if entry is None:
            self._error(request, 404, "EntryNotFound", "Entry not found", repo)
            return
        start, end = 0, entry.size - 1
        status = 200
        if body and request.range:
            match = _RANGE.match(request.range.strip())
            if not match or int(match[1]) >= entry.size:
                self._error(
                    request,
                    416,
                    None,
                    "Range not satisfiable",
                    repo,
                    {"Content-Range": f"bytes */{entry.size}"},
                )
                return
            start = int(match[1])
            end = min(int(match[2]), entry.size - 1) if match[2] else entry.size - 1
            status = 206
        request.status = status
        self.send_response(status)
        self.send_header("X-Repo-Commit", self.hub.commit(repo))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if entry.lfs:
            self.send_header("ETag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
        else:
            self.send_header("ETag", f'"{entry.git_sha1}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.send_header("Content-Length", str(end - start + 1) if body else str(entry.size))
        self.end_headers()
        if body:
            self._send_body(request, entry, start, end + 1)

    def _send_body(self, request: Request, entry: HubFile, start: int, stop: int) -> None:
        cut = self.hub._take_cut()
        flip_at = entry.size // 2 if self.hub.corrupt else None
        offset = start
        began = time.monotonic()
        try:
            while offset < stop:
                length = min(_CHUNK, stop - offset)
                if cut is not None:
                    length = min(length, cut - request.sent)
                    if length <= 0:
                        self._drop()
                        return
                chunk = entry.read(offset, length)
                if flip_at is not None and offset <= flip_at < offset + len(chunk):
                    buf = bytearray(chunk)
                    buf[flip_at - offset] ^= 0xFF
                    chunk = bytes(buf)
                self.wfile.write(chunk)
                offset += len(chunk)
                request.sent += len(chunk)
                if rate := self.hub.throttle:
                    ahead = request.sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self) -> None:
        """Close the socket in the middle of a body, as a flaky network does."""
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    # -- /api/models/{repo}/tree/{revision} -----------------------------------------------

    def _tree(self, request: Request, repo: str, folder: str, query: dict[str, list[str]]) -> None:
        if not self.hub.has_repo(repo):
            self._error(request, 401, "RepoNotFound", "Repository not found")
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: list[dict] = []
        folders: set[str] = set()
        for (r, name), entry in sorted(self.hub.files.items()):
            if r != repo or not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if sub not in folders and (recursive or depth == 1):
                    folders.add(sub)
                    oid = hashlib.sha1(sub.encode()).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": sub})
            if len(parts) > 1 and not recursive:
                continue
            item = {"type": "file", "oid": entry.git_sha1, "size": entry.size, "path": name}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
            entries.append(item)
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor : cursor + self.hub.page_size]
        payload = json.dumps(page).encode()
        request.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if cursor + self.hub.page_size < len(entries):
            base = self.hub.url + urlsplit(self.path).path
            params = f"recursive={str(recursive).lower()}&cursor={cursor + self.hub.page_size}"
            self.send_header("Link", f'<{base}?{params}>; rel="next"')
        self.end_headers()
        self.wfile.write(payload)
        request.sent = len(payload)

    # -- errors as the Hub sends them ------------------------------------------------------

    def _error(
        self,
        request: Request,
        status: int,
        code: str | None,
        message: str,
        repo: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        payload = json.dumps({"error": message}).encode()
        request.status = status
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo:
            self.send_header("X-Repo-Commit", self.hub.commit(repo))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: Hub


@pytest.fixture
def hub() -> Iterator[Hub]:
    """A stand-in Hugging Face Hub on a free port of 127.0.0.1; point HF_ENDPOINT at ``hub.url``."""
    server = _Server(("127.0.0.1", 0), _Handler)
    state = Hub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.hub = state
    thread = threading.Thread(target=server.serve_forever, name="stand-in-hub", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.throttle = None  # let a handler still streaming to a killed client finish quickly
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
