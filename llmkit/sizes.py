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
