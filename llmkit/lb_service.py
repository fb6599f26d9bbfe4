"""`llmkit lb service install`: the balancer as its own hardened systemd unit, llmkit-lb.service.

A unit of its own, not Debian's haproxy.service with the config dropped in: that unit reads
/etc/haproxy/haproxy.cfg, so dropping llmkit's config there would replace (or fight with) a
machine's existing HAProxy, and it runs HAProxy as root with no sandbox. llmkit-lb.service runs
the same Debian HAProxy binary (`-Ws`: master-worker, telling systemd when it is ready, as
Debian's unit does) on /etc/llmkit/lb.cfg, as a dynamic unprivileged user in a sandbox; its stats
socket is /run/llmkit-lb/admin.sock, where `llmkit lb status` looks as root. A TLS certificate is
handed over with LoadCredential=, so the key file can stay root's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llmkit import balancer, hardening, service, settings
from llmkit.errors import LlmkitError

NAME = "llmkit-lb"
UNIT = f"{NAME}.service"
SOCKET = Path("/run/llmkit-lb/admin.sock")
# Where systemd puts the LoadCredential= copy of the certificate, readable by the service only.
CREDENTIAL = Path(f"/run/credentials/{UNIT}/tls.pem")


@dataclass(frozen=True)
class Paths:
    unit: Path
    config: Path
    managed: bool  # systemd here reads these files: llmkit runs systemctl itself


def paths(root: Path | None = None) -> Paths:
    root = root or settings.service_root() or Path("/")
    return Paths(
        root / "etc/systemd/system" / UNIT,
        root / "etc/llmkit/lb.cfg",
        root == Path("/") and service.systemd_running(),
    )


def service_config(lb: balancer.Balancer) -> balancer.Balancer:
    """The balancer as the unit runs it: the socket in its runtime dir, the credential's copy."""
    return dataclasses.replace(
        lb, socket=SOCKET, tls_cert=CREDENTIAL if lb.tls_cert is not None else None
    )


def render_unit(lb: balancer.Balancer, config: Path, haproxy: str) -> str:
    """The llmkit-lb.service unit running HAProxy on `config`."""
    cfg = str(config).replace("%", "%%")
    lines = [
        "[Unit]",
        f"Description=llmkit lb: HAProxy in front of {len(lb.replicas)} llmkit serve replica(s)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "# -Ws: HAProxy's master-worker mode, which sends READY=1 once it listens.",
        "Type=notify",
        f"ExecStartPre={haproxy} -c -q -f {cfg}",
        f"ExecStart={haproxy} -Ws -f {cfg}",
        "# A reload checks the config, then the master starts new workers; the old ones finish",
        "# their requests (streams included) before they exit.",
        f"ExecReload={haproxy} -c -q -f {cfg}",
        "# The shell's own kill: /bin/kill is procps', which a minimal Debian lacks.",
        "ExecReload=/bin/sh -c 'kill -USR2 $$MAINPID'",
        "KillMode=mixed",
        "# As Debian's haproxy.service: a master ending with SIGTERM's code (143) stopped cleanly.",
        "SuccessExitStatus=143",
        "Restart=on-failure",
        "RestartSec=2s",
        "# Every client holds a socket to HAProxy and one to a replica (maxconn 4096).",
        "LimitNOFILE=65536",
    ]
    if lb.tls_cert is not None:
        lines.append(f"LoadCredential=tls.pem:{lb.tls_cert}")
    lines += [
        "",
        "# ---- Hardening: HAProxy needs a TCP port, its config and its runtime directory. ----",
        "DynamicUser=yes",
        "RuntimeDirectory=llmkit-lb",
        "RuntimeDirectoryMode=0700",
        "UMask=0077",
    ]
    lines += hardening.port_capabilities(lb.port)
    lines += [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        *hardening.KERNEL_PROTECTION,
        "ProcSubset=pid",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "# Not @resources: HAProxy raises its own file descriptor limit for maxconn.",
        "SystemCallFilter=~@privileged",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Installed:
    unit: Path
    config: Path
    commands: list[list[str]]
    not_run: str  # why llmkit ran no systemctl ("" when it did)


def install(lb: balancer.Balancer, where: Paths | None = None) -> Installed:
    """Check the config, write it and the unit, then enable and (re)start llmkit-lb."""
    where = where or paths()
    balancer.check(balancer.render(dataclasses.replace(lb, socket=SOCKET)))  # the real cert
    config = balancer.render(service_config(lb))
    for path in (where.unit, where.config):
        if not service.writable(path):
            raise LlmkitError(f"cannot write {path}: the balancer's service is installed by root")
    service.write_file(where.config, config, 0o644)
    service.write_file(where.unit, render_unit(lb, where.config, balancer.haproxy_binary()), 0o644)
    commands = [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", NAME],
        ["systemctl", "restart", NAME],
    ]
    if where.managed:
        for command in commands:
            service.run_command(command)
    return Installed(where.unit, where.config, commands, _not_run(where))


@dataclass
class Uninstalled:
    removed: list[Path]
    commands: list[list[str]]
    not_run: str


def uninstall(where: Paths | None = None) -> Uninstalled:
    """Stop and disable llmkit-lb, then delete its unit and config."""
    where = where or paths()
    removed = [path for path in (where.unit, where.config) if path.exists()]
    for path in removed:
        if not service.writable(path):
            raise LlmkitError(f"cannot remove {path}: the balancer's service is removed by root")
    commands = [["systemctl", "disable", "--now", NAME], ["systemctl", "daemon-reload"]]
    if where.managed and where.unit.exists():
        service.run_command(commands[0])
    for path in removed:
        path.unlink()
    if where.managed:
        service.run_command(commands[1])
    return Uninstalled(removed, commands, _not_run(where))


def _not_run(where: Paths) -> str:
    """Why llmkit runs no systemctl for these files ("" when it does)."""
    if where.managed:
        return ""
    if not service.systemd_running():
        return "systemd is not running here"
    return "LLMKIT_SERVICE_ROOT is set, so the running systemd does not read these files"
