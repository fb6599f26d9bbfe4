"""`llmkit lb`: the haproxy.cfg it renders (each variant checked by HAProxy itself), HAProxy's
stats socket, and end to end: three real replicas in network namespaces behind HAProxy, stopped
and killed under load."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llmkit import balancer
from llmkit.errors import LlmkitError
from tests.helpers import LlmkitCli, free_port


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
        "default-server check inter 500ms fastinter 200ms downinter 1s fall 2 rise 2 maxconn 4",
        "retries 5",
        "option redispatch 1",
        "retry-on conn-failure empty-response response-timeout 503",
        "timeout server 300s",
        "timeout queue 30s",
        "option http-buffer-request",
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
    assert "DOWN" in table.stdout and "waiting for any replica: 0" in table.stdout
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
