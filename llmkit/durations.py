"""Durations as people (and Ollama's keep_alive) write them."""

from __future__ import annotations

import math

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float | None:
    """Seconds for `30s`, `5m`, `1h30m`, `250ms`, `0` or a bare number of seconds; None (forever)
    for a negative one, as Ollama's keep_alive means it. Raises ValueError saying what is
    accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if math.isnan(value):
            raise ValueError("a duration cannot be NaN")
        return None if value < 0 else float(value)
    text = value
    negative = text.startswith("-")
    rest = text[1:] if text[:1] in "+-" else text
    total, number = 0.0, ""
    i = 0
    try:
        if not rest.isascii() or not rest or rest[0] not in "0123456789.":
            raise ValueError
        if all(c in "0123456789." for c in rest):
            total = float(rest)
        else:
            while i < len(rest):
                if rest[i] in "0123456789.":
                    number += rest[i]
                    i += 1
                    continue
                unit = "ms" if rest.startswith("ms", i) else rest[i]
                if not number or unit not in _UNITS:
                    raise ValueError
                total += float(number) * _UNITS[unit]
                number = ""
                i += len(unit)
            if number or not rest:
                raise ValueError
    except ValueError:
        raise ValueError(
            f"{value!r} is not a duration: write seconds (300), or with units (30s, 5m, 1h30m, "
            "250ms); 0 for none, a negative one for forever"
        ) from None
    if math.isinf(total) or math.isnan(total):
        raise ValueError(f"{value!r} is not a finite duration")
    return None if negative and total > 0 else total


def human_duration(seconds: float | None) -> str:
    """A duration as `llmkit ps` and the banner show it: `forever`, `45 s`, `5 min`, `2 h`."""
    if seconds is None:
        return "forever"
    if seconds < 90:
        return f"{seconds:g} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
