"""Durations as --keep-alive and a request's keep_alive take them (llmkit.durations)."""

from __future__ import annotations

import pytest

from llmkit.durations import human_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("300", 300.0),
        (300, 300.0),
        (1.5, 1.5),
        ("-1", None),  # Ollama's: negative keeps the model loaded
        (-1, None),
        ("-5m", None),
    ],
)
def test_durations_parse_as_ollama_reads_keep_alive(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "5x", "m", "1e400", "5m3"])
def test_a_bad_duration_is_refused_with_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="30s, 5m"):
        parse_duration(text)


def test_durations_read_as_people_write_them() -> None:
    assert [human_duration(s) for s in (None, 45, 300, 7200)] == [
        "forever",
        "45 s",
        "5 min",
        "2.0 h",
    ]
