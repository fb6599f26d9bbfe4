"""`llmkit serve`: a model behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Any

from llmkit.cli.options import serve_options
from llmkit.settings import ServeSettings


@serve_options
def serve(**options: Any) -> None:
    """Serve a model behind an OpenAI-compatible API (pulls it first if needed)."""
    from llmkit.server import run

    run(ServeSettings(**options))
