"""`llmkit serve`: a model behind an OpenAI-compatible API."""

from __future__ import annotations

import sys
from typing import Any

from llmkit.cli.console import note
from llmkit.cli.options import serve_options
from llmkit.settings import ServeSettings


@serve_options
def serve(**options: Any) -> None:
    """Serve a model behind an OpenAI-compatible API (pulls it first if needed)."""
    from llmkit.server import run

    if any(arg.split("=")[0] == "--api-key" for arg in sys.argv):  # what `ps` shows
        note(
            "warning: --api-key on the command line shows in `ps` to every user of this machine: "
            f"prefer --api-key-file or {ServeSettings.env_name('api_key')}"
        )
    run(ServeSettings(**options))
