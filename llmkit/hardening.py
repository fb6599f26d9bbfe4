"""The systemd sandboxing of the units `llmkit service` and `llmkit lb service` write: each
option the server or HAProxy does not need is taken away, with a comment in the unit saying why.
"""

from __future__ import annotations

from llmkit.net import is_loopback

# The kernel: no tunables, modules, logs, clock, hostname or cgroups; no one else's processes.
KERNEL_PROTECTION = (
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
)


def port_capabilities(port: int) -> list[str]:
    """No capabilities at all, but the one that binds a port below 1024 when the unit needs it."""
    if port < 1024:
        return [
            f"# Port {port} is below 1024: binding it needs this one capability, which",
            "# a user namespace would not carry to the host's network, so PrivateUsers= is off.",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        ]
    return ["CapabilityBoundingSet=", "AmbientCapabilities=", "PrivateUsers=yes"]


def system_service(host: str, port: int) -> list[str]:
    """The sandbox of the system service (a dynamic user): what `llmkit serve` needs, nothing more."""
    lines = [
        "# ---- Hardening: `systemd-analyze security llmkit` rates this unit 2.0 or lower. ----",
        "# What the server needs it keeps: binding a TCP port, reading (mmap) the model file,",
        "# threads (llama.cpp's OpenMP pool) and the ctypes callbacks of llama-cpp-python.",
        "#",
        "# A fresh unprivileged user for every run; the only place it may write: /var/lib/llmkit.",
        "DynamicUser=yes",
        "StateDirectory=llmkit",
        "UMask=0077",
    ]
    lines += port_capabilities(port)
    lines += [
        "NoNewPrivileges=yes",
        "# The file system: everything read-only, no home directories, private /tmp and /dev.",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "PrivateMounts=yes",
        "# The kernel: no tunables, modules, logs, clock, hostname or cgroups; no one else's",
        "# processes in /proc.",
        *KERNEL_PROTECTION,
        "# ProcSubset=pid is left out: it hides /proc/cpuinfo and /proc/meminfo, which serve",
        "# reads to pick the thread count (physical cores) and to check that the model fits.",
        "KeyringMode=private",
        "RemoveIPC=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "# No memory both writable and executable. Tried under systemd with llama.cpp serving:",
        "# ggml has no JIT, and the one thing that asks for such memory, a libffi closure (the",
        "# ctypes log callback of llama-cpp-python), falls back by itself when refused: libffi",
        "# 3.4 maps a memfd twice, once writable and once executable.",
        "MemoryDenyWriteExecute=yes",
        "# System calls: what ordinary services use; no privileged ones, no changing priorities",
        "# or CPU affinity (llama.cpp does neither unless told to). A refused call fails with",
        "# EPERM rather than killing the server.",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "# The network: TCP/IP to serve, Unix sockets for $NOTIFY_SOCKET and the journal.",
        "# PrivateNetwork= is left out: it would leave the server unreachable.",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ]
    if is_loopback(host):
        lines += [
            f"# Listening on {host} only: no address but the machine's own may talk to it.",
            "IPAddressDeny=any",
            "IPAddressAllow=localhost",
        ]
    else:
        lines += [
            f"# Listening on {host}: clients may come from anywhere, so no",
            "# IPAddressDeny=.",
        ]
    return lines


def user_service() -> list[str]:
    """The sandbox a user's systemd can set up."""
    return [
        "# ---- Hardening for a user service. A user's systemd cannot switch users or set up",
        "# mount namespaces without user namespaces, so this keeps to what seccomp enforces for",
        "# anyone: no new privileges, no W+X memory, a system-call allow-list, TCP/IP and Unix.",
        "NoNewPrivileges=yes",
        "UMask=0077",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ]
