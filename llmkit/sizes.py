"""Sizes as people read them."""

from __future__ import annotations


def human_size(size: int | float | None) -> str:
    """Bytes as a person reads them (decimal units, as the Hub shows sizes)."""
    if not size:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    # Binary, and the bare letters as systemd and ulimit read them.
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """A size as a person writes it (`4MiB`, `900MB`, `1.5 GB`, `512k`, `1048576`), in bytes.

    Raises ValueError with a message that says what is accepted."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value >= 0 or value == float("inf"):
        raise ValueError(
            f"{text!r} is not a size: write a number of bytes, or one with a unit "
            "(KB, MB, GB: powers of 1000; KiB, MiB, GiB or K, M, G: powers of 1024)"
        )
    return int(value * _UNITS[unit])
