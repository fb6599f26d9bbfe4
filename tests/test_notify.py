"""systemd's readiness protocol: READY=1 once /health answers, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.notify import notify
from tests.helpers import clean_env, free_port


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket like systemd's $NOTIFY_SOCKET, at a short path."""
    folder = tempfile.mkdtemp(prefix="llmkit-notify-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def test_notify_sends_nothing_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_sends_one_datagram_to_notify_socket(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1") is True
    sock.settimeout(5)
    assert sock.recv(4096) == b"READY=1"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"llmkit-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        sock.settimeout(5)
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_is_false_when_nobody_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False


@pytest.mark.slow
def test_serve_says_ready_only_once_health_answers_and_stopping_on_sigterm(
    notify_socket: tuple[socket.socket, str], server_models_dir: Path
) -> None:
    sock, path = notify_socket
    port = free_port()
    health = f"http://127.0.0.1:{port}/health"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmkit",
            "serve",
            "--model",
            "gemma-3-270m",
            "--offline",
            "--port",
            str(port),
            "--threads",
            "2",
            "--ctx",
            "2048",
        ],
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir), NOTIFY_SOCKET=path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sock.settimeout(0.05)
        deadline = time.monotonic() + 300
        ready = None
        while ready is None:
            assert time.monotonic() < deadline, "no READY=1 within 300 s"
            assert proc.poll() is None, f"serve exited {proc.returncode}: {proc.communicate()[0]}"
            try:
                ready = sock.recv(4096)
            except TimeoutError:
                continue
        assert ready == b"READY=1"
        # No retries: by the time systemd hears READY=1, the server must already answer.
        with urllib.request.urlopen(health, timeout=10) as response:
            assert response.status == 200 and json.load(response)["status"] == "ok"

        proc.send_signal(signal.SIGTERM)
        sock.settimeout(30)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
