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
    # Decimal, as human_size writes sizes (and the Hub shows them); the bare letters too.
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    # Binary.
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str | int) -> int:
    """A size as a person writes it (`4MiB`, `900MB`, `1.5G`, `512k`, `1048576`), in bytes.

    Raises ValueError with a message that says what is accepted."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
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
            "(K, KB, M, MB, G, GB: powers of 1000; KiB, MiB, GiB: powers of 1024)"
        )
    return int(value * _UNITS[unit])
