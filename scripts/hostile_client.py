"""A misbehaving client's tools, for scripts/hostile.py: `llmkit serve --api-key K` under a soft
limit of 1024 open files, requests on connections of their own, a /health probe, raw sockets."""

import contextlib
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import launcher

KEY = "K-hostile-check"
HOST = "127.0.0.1"


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def proc(self, name: str) -> str:
        return Path(f"/proc/{self.process.pid}/{name}").read_text()

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        return int(re.search(r"VmRSS:\s+(\d+) kB", self.proc("status"))[1]) * 1024  # type: ignore[index]

    def cpu_seconds(self) -> float:
        fields = self.proc("stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def logged(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)


def _soft_limit_1024() -> None:
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


@contextlib.contextmanager
def serving(model: Path, workdir: Path) -> Iterator[Server]:
    """`llmkit serve --api-key K` (on the command line, as the issue's bar says) under a soft limit
    of 1024 open files; stopped however the block ends."""
    port = launcher.free_port(HOST)
    workdir.mkdir(parents=True)
    args = ["serve", "--model", str(model), "--api-key", KEY, "--port", str(port), "--offline"]
    # A prompt cache of the run's own; no drain (no balancer in front).
    args += ["--cache-dir", str(workdir / "cache"), "--drain-seconds", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMKIT_", "OPENAI_"))}
    # The checkout's llmkit is the one measured, as in this process.
    checkout = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    with (workdir / "serve.log").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkit", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_soft_limit_1024,
        )
    server = Server(process, port, workdir / "serve.log")
    try:
        deadline = time.monotonic() + 300
        while health(server, timeout=1)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llmkit serve did not start; see {server.log}")
            time.sleep(0.2)
        yield server
    finally:
        launcher.stop(process)
        shutil.rmtree(workdir / "cache", ignore_errors=True)  # the log stays


# -- requests ------------------------------------------------------------------------------------


def request(
    server: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, Any, float]:
    """(status, JSON body or text, seconds) of one request, on a connection of its own."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data), time.monotonic() - started
    except ValueError:
        return response.status, data.decode(errors="replace"), time.monotonic() - started


def api(
    server: Server, path: str, body: dict[str, Any] | bytes, timeout: float = 300
) -> tuple[int, Any, float]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return request(server, "POST", path, raw, headers, timeout)


def health(server: Server, timeout: float = 10) -> tuple[int, Any, float]:
    try:
        return request(server, "GET", "/health", timeout=timeout)
    except OSError:
        return 0, None, timeout


def error(answer: Any, key: str = "code") -> Any:
    return answer.get("error", {}).get(key) if isinstance(answer, dict) else None


class Probe:
    """/health asked every 50 ms, and the server's memory read, while an attack runs beside."""

    def __init__(self, server: Server) -> None:
        self.server, self.slowest, self.failed = server, 0.0, 0
        self.rss_before = self.rss_peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _, took = health(self.server)
            self.slowest, self.failed = max(self.slowest, took), self.failed + (status != 200)
            with contextlib.suppress(OSError):
                self.rss_peak = max(self.rss_peak, self.server.rss())
            self._stop.wait(0.05)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def said(self) -> str:
        return f"/health slowest {self.slowest:.2f} s" + (
            f", {self.failed} failed" * bool(self.failed)
        )

    def grown(self) -> str:
        return f"RSS +{(self.rss_peak - self.rss_before) / 1e6:.0f} MB"


def background(work: Callable[[], Any]) -> Callable[[], Any]:
    """Run `work` on a thread; the function returned waits for its result (or raises its error)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join(600)
        if "error" in result:
            raise result["error"]
        return result.get("value")

    return wait


# -- raw sockets, for clients that misbehave -----------------------------------------------------


def connect(server: Server) -> socket.socket:
    return socket.create_connection((HOST, server.port), timeout=10)


def head(path: str, key: str | bytes | None, length: int | None, method: str = "POST") -> bytes:
    token = key.encode() if isinstance(key, str) else key
    auth = b"Authorization: Bearer " + token + b"\r\n" if token is not None else b""
    size = (
        b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    )
    start = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    return start.encode() + auth + size + b"\r\n"


def exchange(sock: socket.socket, data: bytes, timeout: float) -> tuple[int | None, float, int]:
    """Send `data` while watching for an answer: (its status, seconds to it, bytes sent by then).
    The server may answer, and close, before it has read what is sent: the rest is not sent."""
    sock.setblocking(False)
    sent, got, writing, started = 0, b"", True, time.monotonic()
    with selectors.DefaultSelector() as watch:
        watch.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() - started < timeout:
            for _, events in watch.select(0.5):
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionError:
                        chunk = b""
                    got += chunk
                    if not chunk or b"\r\n\r\n" in got:
                        return _status(got), time.monotonic() - started, sent
                if writing and events & selectors.EVENT_WRITE:
                    try:
                        sent += sock.send(data[sent : sent + 65536])
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        sent = len(data)
                    if sent >= len(data):
                        writing = False
                        watch.modify(sock, selectors.EVENT_READ)
    return None, time.monotonic() - started, sent


def _status(data: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(found[1]) if found else None


def cut(sock: socket.socket, within: float) -> tuple[float | None, int | None]:
    """Seconds until the server closes this connection (None: not within), and its answer's status."""
    sock.settimeout(within)
    started, got = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return None, _status(got)
    except ConnectionError:
        pass
    return time.monotonic() - started, _status(got)


def small_objects(size: int, key: str = "messages") -> bytes:
    """A chat body of about `size` bytes whose `key` is a list of small objects."""
    item = b'{"role":"user","content":"a"},' if key == "messages" else b'{"a":1},'
    count = max(1, size // len(item))
    return b'{"model":"m","%s":[' % key.encode() + item * (count - 1) + item[:-1] + b"]}"


def stop(server: Server) -> str:
    """SIGTERM, and how the server ends: within 60 s, or (past that) by the launcher's kill."""
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(60)
    if server.process.returncode is not None:
        return f"exited {server.process.returncode} after {time.monotonic() - started:.1f} s"
    launcher.stop(server.process)  # SIGTERM again, then SIGKILL
    return f"still running 60 s later (then {server.process.returncode} by the launcher)"
