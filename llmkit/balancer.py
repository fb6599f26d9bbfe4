"""`llmkit lb`: stock HAProxy in front of `llmkit serve` replicas: its config, checked, and its control.

llmkit renders the haproxy.cfg (pure, testable), has HAProxy itself check it (`haproxy -c`), runs
HAProxy in the foreground, and reads or changes the replicas' state through HAProxy's stats socket.
What makes a replica going away cost no request lives on both sides: the replica drains on SIGTERM
(`/ready` answers 503 while it still serves, see llmkit.server) and HAProxy checks `/ready` every
500 ms and re-dispatches a request that failed before its answer began (`retry-on`).

The Authorization header goes through HAProxy untouched: each replica checks the API key itself.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from llmkit.errors import LlmkitError
from llmkit.net import url_host
from llmkit.settings import DEFAULT_PARALLEL

BACKEND = "replicas"
DEFAULT_PORT = 8080
DEFAULT_METRICS_PATH = "/lb/metrics"
# hash-balance-factor: with affinity no replica takes more than 150% of the average load; a
# conversation whose replica is that busy goes to the next one on the ring.
DEFAULT_BALANCE_FACTOR = 150


@dataclass(frozen=True)
class Replica:
    """One `llmkit serve` behind the balancer, named after its address in HAProxy."""

    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{url_host(self.host)}:{self.port}"


def parse_replica(text: str) -> Replica:
    """HOST:PORT ([IPv6]:PORT) as a Replica; a clear error otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LlmkitError(f"a replica is HOST:PORT, not {text!r}")
    return Replica(host, int(port))


@dataclass(frozen=True)
class Balancer:
    """What the haproxy.cfg says: where it listens, the replicas, how requests are spread."""

    replicas: tuple[Replica, ...]
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    slots: int = DEFAULT_PARALLEL  # requests each replica decodes at once (its --parallel)
    affinity: bool = True  # same conversation -> same replica (its prompt cache), bounded load
    balance_factor: int = DEFAULT_BALANCE_FACTOR
    tls_cert: Path | None = None  # PEM with the certificate and its key: HTTPS on the bind
    socket: Path | None = None  # the stats socket; None: default_socket()
    metrics_path: str = DEFAULT_METRICS_PATH

    def __post_init__(self) -> None:
        if not self.replicas:
            raise LlmkitError("name at least one replica (--replica HOST:PORT)")
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise LlmkitError("a replica is named twice")
        if self.slots < 1:
            raise LlmkitError("--slots must be at least 1")
        if not self.metrics_path.startswith("/"):
            raise LlmkitError("--metrics-path must start with /")

    @property
    def stats_socket(self) -> Path:
        return self.socket or default_socket()


def default_socket() -> Path:
    """The stats socket: LLMKIT_LB_SOCKET, else /run/llmkit-lb (root) or the user's runtime dir."""
    configured = os.environ.get("LLMKIT_LB_SOCKET")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/run/llmkit-lb/admin.sock")
    return Path(platformdirs.user_runtime_dir("llmkit")) / "lb-admin.sock"


def _error_body(status: int, message: str, code: str) -> str:
    # OpenAI's error shape, as the replicas answer, for the answers HAProxy makes itself.
    kind = "server_busy" if status == 503 else "server_error"
    return f'{{"error":{{"message":"{message}","type":"{kind}","param":null,"code":"{code}"}}}}'


_ERRORS = {
    503: ("no replica is ready to take this request; retry shortly", "no_replica_ready"),
    502: ("a replica sent an invalid answer", "bad_gateway"),
    504: ("a replica did not answer in time", "gateway_timeout"),
}

# The affinity key, made from the request without any change on the client's side: the first
# message (and the first user message after a system prompt) of a chat request is the same on
# every turn of one conversation; a completion's or response's start likewise. An X-Session-Id
# header wins when a client sends one; a request without any key lands anywhere (rand).
_AFFINITY_RULES = """\
    http-request set-var(txn.lb_key) req.body,json_query('$.messages[0].content')
    http-request set-var(txn.lb_role) req.body,json_query('$.messages[0].role')
    http-request set-var(txn.lb_next) req.body,json_query('$.messages[1].content') if { var(txn.lb_role) -m str system developer }
    http-request set-var(txn.lb_key) var(txn.lb_key),concat(|,txn.lb_next) if { var(txn.lb_next) -m found }
    http-request set-var(txn.lb_key) req.body,json_query('$.prompt') unless { var(txn.lb_key) -m found }
    http-request set-var(txn.lb_key) req.body,json_query('$.input') unless { var(txn.lb_key) -m found }
    http-request set-var(txn.lb_key) req.hdr(x-session-id) if { req.hdr(x-session-id) -m found }
    http-request set-var(txn.lb_key) rand unless { var(txn.lb_key) -m found }
"""


def render(balancer: Balancer) -> str:
    """The complete haproxy.cfg for these replicas."""
    b = balancer
    bind = f"[{b.host}]:{b.port}" if ":" in b.host else f"{b.host}:{b.port}"
    if b.tls_cert is not None:
        bind += f" ssl crt {b.tls_cert}"
    errors = "".join(
        f"    http-error status {status} content-type application/json "
        f"string '{_error_body(status, message, code)}'"
        + (" hdr Retry-After 1" if status == 503 else "")
        + "\n"
        for status, (message, code) in _ERRORS.items()
    )
    if b.affinity:
        balance = (
            "    balance hash var(txn.lb_key)\n"
            "    hash-type consistent\n"
            f"    hash-balance-factor {b.balance_factor}\n"
        )
    else:
        balance = "    balance leastconn\n"
    servers = "".join(f"    server {r.name} {r.address}\n" for r in b.replicas)
    return f"""\
# haproxy.cfg made by `llmkit lb config`: {len(b.replicas)} llmkit serve replica(s).
global
    log stdout format raw local0 info
    stats socket {b.stats_socket} mode 600 level admin
    stats timeout 30s
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 300s
    # Silence from a replica: a streamed answer's tokens restart the timer, but a non-streamed
    # answer is silent until it is whole, which on a CPU can take many minutes. A replica bounds
    # its own work (max_tokens, its context), and a dead one's connections close with it (not
    # cut when marked down: a draining replica still finishes its streams).
    timeout server 1h
    # Longer than the slots take to free up, shorter than a client's patience.
    timeout queue 30s
    timeout http-request 30s
    # A replica whose /ready is slow is busy, not gone: a gone one refuses at once (L4CON).
    timeout check 5s
    # A request that failed before its answer began goes to another replica: refused or reset
    # connections, a replica gone before it answered, a 503 (draining or queue full). Not a
    # response timeout: a slow answer is a long request still running there, and re-sending it
    # would run it again on another replica, five times over.
    retries 5
    option redispatch 1
    retry-on conn-failure empty-response 503
    # Retries need the body kept; the affinity key is read from it.
    option http-buffer-request
    # Streamed tokens are small writes: without this, Nagle and delayed ACKs hold each one back
    # (measured: +45 ms to the first token through HAProxy, +6 ms with it).
    option http-no-delay
{errors}
frontend llmkit
    bind {bind}
    # HAProxy's metrics name the replicas and their load: for this machine's Prometheus only.
    http-request deny deny_status 403 if {{ path {b.metrics_path} }} !{{ src 127.0.0.0/8 ::1 }}
    http-request use-service prometheus-exporter if {{ path {b.metrics_path} }}
    default_backend {BACKEND}

backend {BACKEND}
{_AFFINITY_RULES if b.affinity else ""}{balance}\
    # /ready answers 503 while a replica drains or its queue is full: no new request goes there.
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 500ms fastinter 200ms downinter 1s fall 2 rise 2 maxconn {b.slots}
{servers}"""


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if path is None:
        raise LlmkitError("HAProxy is not installed (Debian/Ubuntu: apt-get install haproxy)")
    return path


def check(config: str) -> None:
    """Have HAProxy check the config (`haproxy -c`); its first complaint as a one-line error."""
    binary = haproxy_binary()
    with tempfile.NamedTemporaryFile("w", prefix="llmkit-lb-", suffix=".cfg") as file:
        file.write(config)
        file.flush()
        result = subprocess.run(
            [binary, "-c", "-f", file.name], capture_output=True, text=True, timeout=30
        )
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).splitlines()
        alert = next((line for line in lines if "[ALERT]" in line), lines[-1] if lines else "")
        # "[ALERT]    (123) : config : parsing [/tmp/x.cfg:9] : ..." -> "parsing [haproxy.cfg:9] : ..."
        alert = alert.split(" : config : ", 1)[-1].replace(file.name, "haproxy.cfg")
        raise LlmkitError(f"HAProxy rejects the config: {alert.strip()}")


def checked(balancer: Balancer) -> str:
    """The config, once HAProxy has accepted it."""
    config = render(balancer)
    check(config)
    return config


def run(balancer: Balancer, config_file: Path | None = None) -> None:
    """Write the checked config beside the stats socket and become HAProxy, in the foreground."""
    config = checked(balancer)
    where = balancer.stats_socket.parent
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config_file or where / "haproxy.cfg"
    path.write_text(config)
    binary = haproxy_binary()
    # -db: stay in the foreground and log to stdout; SIGTERM stops it, SIGUSR1 stops it softly.
    os.execv(binary, [binary, "-db", "-f", str(path)])


# -- the stats socket -------------------------------------------------------------------------


def command(sock: Path, line: str, timeout: float = 5.0) -> str:
    """One command on HAProxy's stats socket, and its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise LlmkitError(
            f"cannot reach HAProxy's stats socket {sock}: {exc.strerror or exc}"
        ) from None
    return b"".join(chunks).decode(errors="replace")


@dataclass(frozen=True)
class ReplicaState:
    """One replica as HAProxy sees it."""

    name: str
    status: str  # UP, DOWN, DRAIN, MAINT, "UP 1/2" (going down), ...
    check: str  # the last check's result: L7OK, L7STS (a 503), L4CON (refused), ...
    sessions: int  # requests on it now
    total: int  # requests it took since HAProxy started
    queue: int  # requests waiting in HAProxy for a slot on it
    retries: int  # connections retried on it
    redispatches: int  # requests sent elsewhere after failing on it
    errors: int  # connection and response errors
    last_change: int  # seconds since its status last changed

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Status:
    replicas: list[ReplicaState]
    queue: int  # requests waiting in the backend for any replica
    sessions: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "sessions": self.sessions,
            "replicas": [r.as_dict() for r in self.replicas],
        }


def parse_stat(text: str) -> Status:
    """`show stat`'s CSV as the backend's replicas and totals."""
    rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    def number(row: dict[str, str], key: str) -> int:
        value = row.get(key) or "0"
        return int(value) if value.isdigit() else 0

    replicas = [
        ReplicaState(
            name=row["svname"],
            status=row.get("status", ""),
            check=row.get("check_status", "").lstrip("* "),
            sessions=number(row, "scur"),
            total=number(row, "stot"),
            queue=number(row, "qcur"),
            retries=number(row, "wretr"),
            redispatches=number(row, "wredis"),
            errors=number(row, "econ") + number(row, "eresp"),
            last_change=number(row, "lastchg"),
        )
        for row in rows
        if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND")
    ]
    backend = next(
        (r for r in rows if r.get("pxname") == BACKEND and r.get("svname") == "BACKEND"), {}
    )
    return Status(replicas, number(backend, "qcur"), number(backend, "scur"))


def status(sock: Path) -> Status:
    return parse_stat(command(sock, "show stat"))


def set_state(sock: Path, replica: str, state: str) -> None:
    """Drain a replica (no new requests; what it runs finishes) or make it ready again."""
    name = parse_replica(replica).name
    known = [r.name for r in status(sock).replicas]
    if name not in known:
        raise LlmkitError(f"no replica {name} behind this balancer (it has {', '.join(known)})")
    answer = command(sock, f"set server {BACKEND}/{name} state {state}").strip()
    if answer:
        raise LlmkitError(f"HAProxy refused: {answer.splitlines()[0]}")
