"""`llmkit cache show` and `llmkit cache clear`: the prompt cache's states on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from llmkit import settings
from llmkit.cli.console import out
from llmkit.cli.options import Json

cache_app = typer.Typer(
    help="The prompt cache on disk (states saved by `llmkit serve`).", no_args_is_help=True
)

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="The cache folder (default: $LLMKIT_CACHE_DIR, else ~/.cache/llmkit/prompts).",
        show_default=False,
    ),
]


@cache_app.command()
def show(cache_dir: CacheDir = None, as_json: Json = False) -> None:
    """What the cache folder holds, by model and context."""
    from llmkit.engine.disk_cache import summarize
    from llmkit.sizes import human_size

    root = cache_dir or settings.default_cache_dir()
    rows = summarize(root)
    if as_json:
        print(json.dumps({"dir": str(root), "models": [dataclasses.asdict(r) for r in rows]}))
        return
    if not rows:
        out.print(f"The prompt cache in {root} is empty.", highlight=False)
        return
    table = Table(
        "model sha256", "slots × context", "kv", "states", "size", "longest", title=str(root)
    )
    for r in rows:
        table.add_row(
            r.model_sha256[:16],
            f"{r.streams} × {r.kv_size // r.streams}" if r.streams > 1 else str(r.kv_size),
            r.kv_type,
            str(r.entries),
            human_size(r.bytes),
            f"{r.tokens} tokens",
        )
    out.print(table)


@cache_app.command()
def clear(cache_dir: CacheDir = None) -> None:
    """Remove every saved state (a running server keeps those in its memory)."""
    from llmkit.engine.disk_cache import clear as clear_folder
    from llmkit.sizes import human_size

    root = cache_dir or settings.default_cache_dir()
    files, size = clear_folder(root)
    out.print(f"removed {files} states ({human_size(size) if size else '0 B'}) from {root}")
