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


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str | int) -> int:
    """A size a person writes, in bytes: 512MB, 4GB, 1.5G, 2GiB (binary), 0, or a number of bytes."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    binary = unit.endswith("ib")
    prefix = unit.removesuffix("ib").removesuffix("b")
    if prefix not in _UNITS or (binary and not prefix):
        raise ValueError(f"not a size: {text!r} (e.g. 512MB, 4GB, 2GiB, 0)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512MB, 4GB, 2GiB, 0)") from None
    if value < 0:
        raise ValueError("a size cannot be negative")
    scale = 1024 ** "kmgt".index(prefix) * 1024 if binary else _UNITS[prefix]
    return int(value * scale)
