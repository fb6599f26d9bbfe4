"""`llmkit.serve()`: a server in a child process, for programs and test suites."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import openai

from llmkit.errors import LlmkitError
from llmkit.net import url_host
from llmkit.settings import ServeSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_args(model: str | list[str], host: str, port: int, options: dict[str, Any]) -> list[str]:
    """`llmkit serve` arguments for keyword options: threads=2 → --threads 2, offline=True → --offline.

    The options are ServeSettings' fields; any other name is a TypeError naming the known ones.
    """
    known = [f.name for f in fields(ServeSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"llmkit serve has no option {', '.join(map(repr, unknown))}; "
            f"the options are: {', '.join(known)}"
        )
    values = {**options, "model": model, "host": host, "port": port}
    args = ["serve"]
    for name in known:
        value = values.get(name)
        if value is True:
            args.append(ServeSettings.flag(name))
        elif isinstance(value, list | tuple):
            for item in value:
                args += [ServeSettings.flag(name), str(item)]
        elif value is not None and value is not False:
            args += [ServeSettings.flag(name), str(value)]
    return args


@contextlib.contextmanager
def serve(
    model: str | list[str],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    api_key: str | None = None,
    startup_timeout: float = 300.0,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Iterator[openai.OpenAI]:
    """Start `llmkit serve` on a free port, wait until it is ready, yield an OpenAI client for it.

    The server is stopped (SIGTERM, then SIGKILL if it lingers) when the block exits, also on an
    exception. Keyword options are ServeSettings' fields, the `llmkit serve` flags: threads=2,
    ctx=2048, chat_format="gemma", ...; an unknown one is a TypeError before anything starts.
    The client's `base_url` is the server's /v1 URL; the server's log is in `client.llmkit_log`.
    """
    port = port or free_port(host)
    # A program's own child server has no balancer in front to wait for on stop.
    options.setdefault("drain_seconds", 0)
    # The key goes by the environment: on the command line, `ps` would show it to everyone.
    key_env = {} if api_key is None else {ServeSettings.env_name("api_key"): api_key}
    args = serve_args(model, host, port, options)
    log = Path(tempfile.mkstemp(prefix="llmkit-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmkit", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), **key_env},
        )
    base = f"http://{url_host(host)}:{port}"
    try:
        wait_ready(proc, f"{base}/health", log, startup_timeout)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key or "llmkit")
        client.llmkit_log = log  # type: ignore[attr-defined]
        client.llmkit_process = proc  # type: ignore[attr-defined]
        yield client
    finally:
        stop(proc)


def wait_ready(
    proc: subprocess.Popen[bytes],
    health: str,
    log: Path,
    timeout: float,
    name: str = "llmkit serve",
) -> None:
    """Wait for a server's health URL to answer 200; an LlmkitError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise LlmkitError(f"{name} exited ({proc.returncode}): {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(health, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise LlmkitError(f"{name} was not ready after {timeout:g} s (log: {log})")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if the process outlives the timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Launched:
    """An `llmkit serve` child process, its /v1 and /health URLs, and the file it logs to."""

    process: subprocess.Popen[bytes]
    url: str
    health: str
    log: Path


def start(
    model: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Launched:
    """Start `llmkit serve` and return at once: the caller waits for /health and calls `stop`.

    For a caller that times the start itself or keeps the server past one `with` block (the
    benchmark); `serve()` is the one that waits, yields a client and stops the server.
    """
    port = port or free_port(host)
    log = Path(tempfile.mkstemp(prefix="llmkit-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmkit", *serve_args(model, host, port, options or {})],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return Launched(process, f"{base}/v1", f"{base}/health", log)
