"""`llmkit lb`: the haproxy.cfg it renders (each variant checked by HAProxy itself), HAProxy's
stats socket, and end to end: three real replicas in network namespaces behind HAProxy, stopped
and killed under load."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from llmkit import balancer, lb_service
from llmkit.errors import LlmkitError
from tests.helpers import LlmkitCli, clean_env, free_port, get_json


def need(program: str) -> str:
    """The program's path; skip in one line without it (on CI fail: a skip would hide a gap)."""
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (.ci/run installs it)", pytrace=False)
        pytest.skip(f"{program} is not installed")
    return path


REPLICAS = (balancer.Replica("10.88.1.2", 8000), balancer.Replica("10.88.2.2", 8000))


def variants(tmp_path: Path) -> dict[str, balancer.Balancer]:
    cert = tmp_path / "lb.pem"
    key = tmp_path / "key.pem"
    subprocess.run(
        [need("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(tmp_path / "crt.pem")],
        check=True,
        capture_output=True,
    )
    cert.write_text((tmp_path / "crt.pem").read_text() + key.read_text())
    base = balancer.Balancer(REPLICAS, socket=tmp_path / "admin.sock")
    return {
        "affinity": base,
        "leastconn": dataclasses.replace(base, affinity=False),
        "tls": dataclasses.replace(base, tls_cert=cert),
        "ipv6-one-replica": dataclasses.replace(
            base, replicas=(balancer.parse_replica("[::1]:8001"),), host="::", port=443, slots=1
        ),
        "many-slots": dataclasses.replace(base, slots=32, balance_factor=125),
    }


def test_every_config_variant_passes_haproxy_check(tmp_path: Path) -> None:
    need("haproxy")
    for name, variant in variants(tmp_path).items():
        config = balancer.checked(variant)  # raises LlmkitError if HAProxy rejects it
        assert f"maxconn {variant.slots}" in config, name
        for replica in variant.replicas:
            assert f"server {replica.name} {replica.address}\n" in config, name


def test_the_config_has_what_makes_a_lost_replica_cost_no_request() -> None:
    config = balancer.render(balancer.Balancer(REPLICAS))
    for line in (
        "option httpchk GET /ready",
        "default-server check inter 500ms fastinter 200ms downinter 1s fall 2 rise 2 maxconn 4\n",
        "retries 5",
        "option redispatch 1",
        # A slow answer is a long request still running: never re-sent to run again elsewhere.
        "retry-on conn-failure empty-response 503\n",
        "timeout server 1h",
        "timeout queue 30s",
        "option http-buffer-request",
        "option http-no-delay",
        "http-request deny deny_status 403 if { path /lb/metrics } !{ src 127.0.0.0/8 ::1 }",
        "http-request use-service prometheus-exporter if { path /lb/metrics }",
        "balance hash var(txn.lb_key)",
        "hash-type consistent",
        "hash-balance-factor 150",
        "bind 0.0.0.0:8080\n",
    ):
        assert line in config
    leastconn = balancer.render(balancer.Balancer(REPLICAS, affinity=False))
    assert "balance leastconn" in leastconn and "lb_key" not in leastconn
    tls = balancer.render(balancer.Balancer(REPLICAS, tls_cert=Path("/etc/lb.pem"), port=443))
    assert "bind 0.0.0.0:443 ssl crt /etc/lb.pem\n" in tls
    # The answers HAProxy makes itself are OpenAI errors, which every SDK reads.
    error_line = next(line for line in config.splitlines() if "http-error status 503" in line)
    body = json.loads(error_line.split(" string '")[1].split("'")[0])
    assert body["error"]["code"] == "no_replica_ready" and "Retry-After 1" in error_line


def test_bad_replicas_and_a_rejected_config_are_one_clear_error(
    tmp_path: Path, llmkit_cli: LlmkitCli
) -> None:
    for bad in ("nohost", "host:", "host:99999", ":80"):
        result = llmkit_cli("lb", "config", "--replica", bad)
        assert result.exit_code == 1 and result.output.startswith("error: a replica is HOST:PORT")
    need("haproxy")
    not_a_cert = tmp_path / "cert.pem"
    not_a_cert.write_text("not a certificate\n")
    result = llmkit_cli("lb", "config", "-r", "10.0.0.1:8000", "--tls-cert", str(not_a_cert))
    assert result.exit_code == 1
    assert result.output.startswith("error: HAProxy rejects the config: ")
    assert len(result.output.strip().splitlines()) == 1 and "haproxy.cfg" in result.output
    result = llmkit_cli("lb", "config", "-r", "10.0.0.1:8000", "--socket", str(tmp_path / "s"))
    assert result.exit_code == 0 and result.stdout.startswith("# haproxy.cfg made by")


def test_without_haproxy_lb_config_says_how_to_install_it(
    llmkit_cli: LlmkitCli, tmp_path: Path
) -> None:
    result = llmkit_cli("lb", "config", "-r", "10.0.0.1:8000", env={"PATH": str(tmp_path)})
    if Path("/usr/sbin/haproxy").exists():  # found outside PATH too, where Debian puts it
        assert result.exit_code == 0
    else:
        assert result.exit_code == 1 and "apt-get install haproxy" in result.output


@pytest.fixture
def haproxy_alone(tmp_path: Path) -> Iterator[balancer.Balancer]:
    """HAProxy running the generated config for two replicas that do not exist."""
    binary = need("haproxy")
    lb = balancer.Balancer(
        (balancer.Replica("127.0.0.1", free_port()), balancer.Replica("127.0.0.1", free_port())),
        host="127.0.0.1",
        port=free_port(),
        socket=tmp_path / "admin.sock",
    )
    (tmp_path / "haproxy.cfg").write_text(balancer.checked(lb))
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not lb.stats_socket.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "HAProxy did not start"
            time.sleep(0.05)
        yield lb
    finally:
        proc.terminate()
        proc.wait(10)


def test_status_drain_and_ready_go_through_haproxys_socket(
    haproxy_alone: balancer.Balancer, llmkit_cli: LlmkitCli
) -> None:
    lb = haproxy_alone
    sock = str(lb.stats_socket)
    first, second = (r.name for r in lb.replicas)

    def states() -> dict[str, str]:
        result = llmkit_cli("lb", "status", "--json", "--socket", sock)
        assert result.exit_code == 0, result.output
        return {r["name"]: r["status"] for r in json.loads(result.stdout)["replicas"]}

    deadline = time.monotonic() + 10
    while states() != {first: "DOWN", second: "DOWN"}:  # nothing listens there
        assert time.monotonic() < deadline, states()
        time.sleep(0.2)
    assert llmkit_cli("lb", "drain", first, "--socket", sock).exit_code == 0
    assert _admin_state(lb, first) & 8  # SRV_ADMF_DRAIN
    assert llmkit_cli("lb", "ready", first, "--socket", sock).exit_code == 0
    assert not _admin_state(lb, first) & 8
    table = llmkit_cli("lb", "status", "--socket", sock)
    assert first in table.stdout and "DOWN" in table.stdout
    # The balancer's answer when no replica is up is an OpenAI error with Retry-After.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{lb.port}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.models.list()
    assert info.value.status_code == 503 and info.value.response.headers["retry-after"] == "1"
    assert info.value.response.json()["error"]["code"] == "no_replica_ready"
    unknown = llmkit_cli("lb", "drain", "10.9.9.9:1", "--socket", sock)
    assert unknown.exit_code == 1 and "no replica 10.9.9.9:1" in unknown.output


def _admin_state(lb: balancer.Balancer, name: str) -> int:
    """The replica's srv_admin_state bits from `show servers state`."""
    lines = balancer.command(lb.stats_socket, "show servers state").splitlines()
    header = next(line for line in lines if line.startswith("# be_id")).lstrip("# ").split()
    for line in lines:
        values = line.split()
        if len(values) == len(header) and values[header.index("srv_name")] == name:
            return int(values[header.index("srv_admin_state")])
    raise AssertionError(f"{name} not in {lines}")


def test_status_without_a_running_balancer_is_one_clear_error(
    llmkit_cli: LlmkitCli, tmp_path: Path
) -> None:
    result = llmkit_cli("lb", "status", "--socket", str(tmp_path / "none.sock"))
    assert result.exit_code == 1 and "cannot reach HAProxy's stats socket" in result.output


def test_parse_replica_reads_hosts_and_ipv6() -> None:
    assert balancer.parse_replica("gpu1:8000") == balancer.Replica("gpu1", 8000)
    assert balancer.parse_replica("[fd00::2]:8000").address == "[fd00::2]:8000"
    with pytest.raises(LlmkitError):
        balancer.Balancer(())


# -- end to end: three replicas in network namespaces behind HAProxy -----------------------------

SLOTS = 2
KEY = "lb-test-key"
CLIENTS = 6
PER_CLIENT = 6  # requests each client sends in one load phase


class Replicas:
    """Three `llmkit serve` replicas, each in its own network namespace reached over a veth pair."""

    def __init__(self, model: Path, tmp: Path) -> None:
        self.model = model
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.namespaces: list[str] = []

    def ns(self, n: int) -> str:
        return f"llmkit-lb{n}"

    def address(self, n: int) -> str:
        return f"10.88.{n}.2:8000"

    def make_network(self, n: int) -> None:
        ns, host, peer = self.ns(n), f"llmkit-lb{n}h", f"llmkit-lb{n}r"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a stale one
        commands = [
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", host, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", peer, "netns", ns],
            ["ip", "addr", "add", f"10.88.{n}.1/30", "dev", host],
            ["ip", "link", "set", host, "up"],
            ["ip", "-n", ns, "addr", "add", f"10.88.{n}.2/30", "dev", peer],
            ["ip", "-n", ns, "link", "set", peer, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ]
        self.namespaces.append(ns)
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)

    def start(self, n: int) -> None:
        log = (self.tmp / f"replica{n}.log").open("ab")
        self.procs[n] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(n), sys.executable, "-m", "llmkit", "serve"]
            + ["--model", str(self.model), "--host", f"10.88.{n}.2", "--port", "8000"]
            + ["--threads", "1", "--parallel", str(SLOTS), "--ctx", "1024"]
            + ["--drain-seconds", "2", "--grace", "10", "--chat-format", "gemma"]
            + ["--api-key", KEY],  # checked by each replica: HAProxy passes it through
            env=clean_env(LLMKIT_MODELS_DIR=str(self.tmp / "models")),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if get_json(f"http://{self.address(n)}/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            assert self.procs[n].poll() is None, (self.tmp / f"replica{n}.log").read_text()
            assert time.monotonic() < deadline, f"replica {n} not ready"
            time.sleep(0.2)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in self.namespaces:  # deleting the namespace deletes its veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def replicas(gemma_gguf: Path, tmp_path: Path) -> Iterator[Replicas]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        if os.environ.get("CI"):
            pytest.fail("the balancer end-to-end test needs root and iproute2", pytrace=False)
        pytest.skip("needs root and iproute2 (network namespaces)")
    group = Replicas(gemma_gguf, tmp_path)
    try:
        for n in (1, 2, 3):
            group.make_network(n)
            group.start(n)
        for n in (1, 2, 3):
            group.wait_ready(n)
        yield group
    finally:
        group.close()


def start_balancer(
    llmkit_cli: LlmkitCli, group: Replicas, tmp: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`llmkit lb config` for the three replicas, run by HAProxy; (process, /v1 URL, socket)."""
    port, sock = free_port(), str(tmp / f"admin-{len(extra)}.sock")
    args = [a for n in (1, 2, 3) for a in ("--replica", group.address(n))]
    result = llmkit_cli(
        "lb",
        "config",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--slots",
        str(SLOTS),
        "--socket",
        sock,
        *extra,
    )
    assert result.exit_code == 0, result.output
    config = tmp / f"haproxy-{len(extra)}.cfg"
    config.write_text(result.stdout)
    proc = subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(config)],
        stdout=(tmp / f"haproxy-{len(extra)}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not all(r.status == "UP" for r in _replicas_up(sock)):
        assert time.monotonic() < deadline and proc.poll() is None, "HAProxy did not see them up"
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}/v1", sock


def _wait_rejoined(sock: str, name: str, timeout: float = 20) -> None:
    """Until the balancer's health checks show the replica `name` UP again."""
    deadline = time.monotonic() + timeout
    while next(r for r in _replicas_up(sock) if r.name == name).status != "UP":
        assert time.monotonic() < deadline, f"the restarted replica {name} did not rejoin"
        time.sleep(0.2)


def _replicas_up(sock: str) -> list[balancer.ReplicaState]:
    try:
        return balancer.status(Path(sock)).replicas or [
            balancer.ReplicaState("", "", "", 0, 0, 0, 0, 0, 0, 0)
        ]
    except LlmkitError:
        return [balancer.ReplicaState("", "", "", 0, 0, 0, 0, 0, 0, 0)]


def one_request(client: openai.OpenAI, i: int, stream: bool) -> None:
    """One short request; raises unless it got a complete answer."""
    messages = [{"role": "user", "content": f"Count from {i} to {i + 20}."}]
    if not stream:
        answer = client.chat.completions.create(
            model="m",
            messages=messages,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        assert answer.choices[0].finish_reason in ("stop", "length")
        return
    finish = None
    for chunk in client.chat.completions.create(
        model="m",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    ):
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish in ("stop", "length"), "the stream ended without a finish"


def load(url: str, during: Any = None) -> dict[str, Any]:
    """CLIENTS threads each sending PER_CLIENT requests (alternately streamed); failures by kind.

    `during` runs once the load is under way."""
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    failed: dict[str, Any] = {"stream": 0, "plain": 0, "sent": 0, "why": []}
    lock = threading.Lock()

    def worker(w: int) -> None:
        for k in range(PER_CLIENT):
            stream = (w + k) % 2 == 0
            try:
                one_request(client, w * 100 + k, stream)
            except Exception as exc:  # noqa: BLE001 - a failed request is what is counted
                with lock:
                    failed["stream" if stream else "plain"] += 1
                    failed["why"].append(f"{type(exc).__name__}: {exc}"[:200])
            with lock:
                failed["sent"] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    if during is not None:
        deadline = time.monotonic() + 60
        while failed["sent"] < CLIENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        during()
    for t in threads:
        t.join(300)
    return failed


def conversation(url: str, session: str | None = None) -> list[tuple[int, int]]:
    """Five turns of one conversation; (prompt_tokens, cached_tokens) per turn."""
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    messages: list[Any] = [{"role": "system", "content": f"You are a terse assistant. {session}"}]
    usage = []
    for turn in range(5):
        messages.append({"role": "user", "content": f"Question {turn}: name a color."})
        answer = client.chat.completions.create(model="m", messages=messages, max_tokens=8)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        details = answer.usage.prompt_tokens_details  # type: ignore[union-attr]
        usage.append((answer.usage.prompt_tokens, details.cached_tokens or 0))  # type: ignore[union-attr]
    return usage


def ttft_p50(urls: dict[str, str], n: int = 8) -> dict[str, float]:
    """Median time to the first streamed token for each URL, their requests interleaved, each
    prompt new (no cached prefix beyond the template's)."""
    clients = {
        name: openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        for name, url in urls.items()
    }
    times: dict[str, list[float]] = {name: [] for name in urls}
    for i in range(n):
        for name, client in clients.items():
            start = time.monotonic()
            stream = client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"Say {name} {i}."}],
                max_tokens=2,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content is not None:
                    times[name].append(time.monotonic() - start)
                    break
            stream.close()
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


@pytest.mark.slow
def test_replicas_stopped_or_killed_under_load_lose_no_request(
    replicas: Replicas, llmkit_cli: LlmkitCli, tmp_path: Path
) -> None:
    lb, url, sock = start_balancer(llmkit_cli, replicas, tmp_path)
    plain_lb, plain_url, plain_sock = start_balancer(llmkit_cli, replicas, tmp_path, "--leastconn")
    report: dict[str, Any] = {}
    try:
        # SIGTERM: the replica drains (/ready 503, still serving), then finishes what it took.
        terminated = load(url, lambda: replicas.procs[1].send_signal(signal.SIGTERM))
        assert replicas.procs[1].wait(30) == 0
        report["sigterm"] = terminated
        assert terminated["stream"] + terminated["plain"] == 0, terminated
        replicas.start(1)
        replicas.wait_ready(1)
        _wait_rejoined(sock, replicas.address(1))  # not before HAProxy's checks see it UP

        # SIGKILL: what it had not started answering goes elsewhere; its streams are cut.
        killed = load(url, lambda: replicas.procs[2].kill())
        report["sigkill"] = killed
        assert killed["plain"] == 0, killed
        assert killed["stream"] <= SLOTS, killed  # at most the streams in flight on it

        # The killed replica, restarted, rejoins and takes requests again.
        before = {r.name: r.total for r in balancer.status(Path(sock)).replicas}
        replicas.start(2)
        replicas.wait_ready(2)
        _wait_rejoined(sock, replicas.address(2))
        rejoined = load(url)
        assert rejoined["stream"] + rejoined["plain"] == 0, rejoined
        after = {r.name: r.total for r in balancer.status(Path(sock)).replicas}
        assert after[replicas.address(2)] > before[replicas.address(2)]

        # A conversation's turns reach the replica holding its history in cache.
        turns = {"affinity": conversation(url, "a"), "leastconn": conversation(plain_url, "b")}
        report["cached share, turns 2-5"] = {
            kind: round(sum(c for _, c in t[1:]) / sum(p for p, _ in t[1:]), 3)
            for kind, t in turns.items()
        }
        assert all(cached > 0 for _, cached in turns["affinity"][1:]), turns
        # What the balancer adds: replica 3 through it (the others drained) against replica 3.
        for n in (1, 2):
            drained = llmkit_cli("lb", "drain", replicas.address(n), "--socket", plain_sock)
            assert drained.exit_code == 0, drained.output
        totals = {r.name: r.total for r in balancer.status(Path(plain_sock)).replicas}
        report["ttft p50 s"] = ttft_p50(
            {"through haproxy": plain_url, "direct": f"http://{replicas.address(3)}/v1"}
        )
        after = {r.name: r.total for r in balancer.status(Path(plain_sock)).replicas}
        assert after[replicas.address(3)] - totals[replicas.address(3)] == 8
        assert all(after[replicas.address(n)] == totals[replicas.address(n)] for n in (1, 2))
        for n in (1, 2):
            assert (
                llmkit_cli("lb", "ready", replicas.address(n), "--socket", plain_sock).exit_code
                == 0
            )
        status = llmkit_cli("lb", "status", "--json", "--socket", sock)
        assert status.exit_code == 0
        report["lb status"] = json.loads(status.stdout)
        states = {r["name"]: r for r in report["lb status"]["replicas"]}
        assert all(r["status"] == "UP" for r in states.values()), states
        print("balancer report: " + json.dumps(report))
    finally:
        for proc in (lb, plain_lb):
            proc.terminate()
            proc.wait(10)


# -- the balancer as a systemd service ---------------------------------------------------------


@pytest.mark.parametrize("variant", ["affinity", "tls"])
def test_the_lb_unit_passes_systemd_analyze_verify(tmp_path: Path, variant: str) -> None:
    lb = dataclasses.replace(variants(tmp_path)[variant], port=443 if variant == "tls" else 8080)
    unit = tmp_path / lb_service.UNIT
    unit.write_text(lb_service.render_unit(lb, tmp_path / "lb.cfg", need("haproxy")))
    result = subprocess.run(
        [need("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert lb_service.UNIT not in result.stderr, result.stderr  # no warnings about our unit
    text = unit.read_text()
    assert "DynamicUser=yes" in text and "Type=notify" in text and " -Ws -f " in text
    assert ("AmbientCapabilities=CAP_NET_BIND_SERVICE" in text) == (variant == "tls")
    assert ("LoadCredential=tls.pem:" in text) == (variant == "tls")


def test_the_lb_unit_raises_the_open_files_limit(tmp_path: Path) -> None:
    # Each client holds two sockets (its own and one to a replica): systemd's 1024 is ~500 clients.
    lb = balancer.Balancer(REPLICAS, socket=tmp_path / "admin.sock")
    unit = lb_service.render_unit(lb, tmp_path / "lb.cfg", "/usr/sbin/haproxy").splitlines()
    assert "LimitNOFILE=65536" in unit
    assert unit.index("LimitNOFILE=65536") > unit.index("[Service]")


def test_lb_service_install_writes_the_config_and_unit_and_prints_the_commands(
    tmp_path: Path, llmkit_cli: LlmkitCli
) -> None:
    need("haproxy")
    root = tmp_path / "root"
    result = llmkit_cli(
        "lb", "service", "install", "-r", "10.88.1.2:8000", "-r", "10.88.2.2:8000",
        env={"LLMKIT_SERVICE_ROOT": str(root)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "systemctl restart llmkit-lb" in result.output
    config = (root / "etc/llmkit/lb.cfg").read_text()
    assert f"stats socket {lb_service.SOCKET} " in config
    assert "server 10.88.2.2:8000 10.88.2.2:8000" in config
    unit = (root / "etc/systemd/system/llmkit-lb.service").read_text()
    assert f"-f {root}/etc/llmkit/lb.cfg" in unit


def test_lb_service_uninstall_removes_the_unit_and_config(
    tmp_path: Path, llmkit_cli: LlmkitCli
) -> None:
    need("haproxy")
    env = {"LLMKIT_SERVICE_ROOT": str(tmp_path / "root")}
    install = llmkit_cli("lb", "service", "install", "-r", "10.88.1.2:8000", env=env)
    assert install.exit_code == 0, install.output
    result = llmkit_cli("lb", "service", "uninstall", env=env)
    assert result.exit_code == 0, result.output
    assert "systemctl disable --now llmkit-lb" in result.output
    for path in ("etc/systemd/system/llmkit-lb.service", "etc/llmkit/lb.cfg"):
        assert f"removed {tmp_path / 'root' / path}" in result.output.replace("\n", "")
        assert not (tmp_path / "root" / path).exists()
