"""The `llmkit` command: parses arguments, calls one function, prints the result.

One module per command group, named for it (models: pull, list, rm; serve; chat; running: ps,
load, unload; bench; service; lb; cache); options more than one command takes are declared once
in options.py. This module is the app: the command table and the one place a user's mistake
becomes a one-line error.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
import typer.core

from llmkit import settings
from llmkit.cli import bench, cache, chat, lb, models, running, serve, service
from llmkit.cli.console import err
from llmkit.errors import LlmkitError


class _Group(typer.core.TyperGroup):
    """Turns a user's mistake (LlmkitError) into one red line and exit code 1, in one place."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LlmkitError as exc:
            if settings.debug():
                raise
            err.print(f"error: {exc}", style="red", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Run a large language model on your own machine, behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# `llmkit --help` lists the commands in this order, then the groups.
app.command()(models.pull)
app.command("list")(models.list_models)
app.command()(models.rm)
app.command()(serve.serve)
app.command()(chat.chat)
app.command()(running.ps)
app.command()(running.load)
app.command()(running.unload)
app.command()(bench.bench)
app.add_typer(service.service_app, name="service")
app.add_typer(lb.lb_app, name="lb")
app.add_typer(cache.cache_app, name="cache")


def main() -> None:
    """Console-script entry point (user errors become one red line and exit code 1 in _Group)."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        sys.exit(130)
