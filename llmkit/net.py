"""Listening addresses: whether one is this machine's own, and how one goes into a URL."""

from __future__ import annotations


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server listening on host."""
    return host in ("localhost", "::1") or host.startswith("127.")


def url_host(host: str) -> str:
    """The host part of a URL for reaching a server that listens on host, from this machine.

    IPv6 addresses get brackets; a wildcard address (every interface) is reached on 127.0.0.1.
    """
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
