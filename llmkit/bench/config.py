"""What to measure: the benchmark's options, from the command line or a script."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import settings
from llmkit.client import resolve_url
from llmkit.errors import LlmkitError

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_CONCURRENCY = (1, 2, 4, 8)


@dataclass(frozen=True)
class Peer:
    """Another OpenAI-compatible server to measure beside llmkit."""

    name: str
    url: str  # its /v1 URL


def parse_peer(text: str) -> Peer:
    """`URL` or `NAME=URL`; the URL's /v1 is added when missing, as `llmkit chat --url` does."""
    name, sep, url = text.partition("=")
    if not sep or "://" in name or not name.strip():
        name, url = "", text
    url = resolve_url(url.strip())
    if not name:
        name = url.split("://", 1)[-1].split("/", 1)[0]
    return Peer(name.strip(), url)


def parse_levels(text: str) -> tuple[int, ...]:
    """`1,2,4,8` → (1, 2, 4, 8): the numbers of concurrent clients to measure."""
    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise LlmkitError(f"--concurrency takes numbers and commas, not {text!r}") from None
    if not levels or levels[0] < 1:
        raise LlmkitError(f"--concurrency needs client counts of at least 1, not {text!r}")
    return levels


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    threads: int = 2
    parallel: int = settings.DEFAULT_PARALLEL  # llmkit serve --parallel
    ctx: int | None = None  # None: as `llmkit serve` picks it
    models_dir: Path | None = None
    peers: list[Peer] = field(default_factory=list)
    repeats: int = 3
    max_tokens: int = 128  # every generation stream, single or concurrent
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    turn_tokens: int = 48  # the longest answer of each turn of the conversation
    json_max_tokens: int = 128
    # A call ends by itself (the schema bounds it), and one cut short is no call: --quick keeps it.
    tool_max_tokens: int = 128
    prompt_lines: int = 40  # about 1,000 tokens of prompt with the Gemma tokenizer
    warmup_start: bool = True  # one unmeasured start first, so the model file is in the page cache
    seed: str | None = None  # the prompts' starts, the same for every server (None: new each run)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke run: one repeat, short streams, 1 and 2 clients."""
        settings: dict[str, Any] = {
            "repeats": 1,
            "max_tokens": 32,
            "concurrency": (1, 2),
            "turn_tokens": 16,
            "json_max_tokens": 32,
            "warmup_start": False,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)


def configure(
    *,
    quick: bool = False,
    peers: Sequence[str] = (),
    concurrency: str | None = None,
    **options: Any,
) -> BenchConfig:
    """The config for command-line options; unset ones (None) get the defaults, or --quick's."""
    options["peers"] = [parse_peer(p) for p in peers]
    options["concurrency"] = parse_levels(concurrency) if concurrency else None
    options = {k: v for k, v in options.items() if v is not None}
    return BenchConfig.quick(**options) if quick else BenchConfig(**options)
