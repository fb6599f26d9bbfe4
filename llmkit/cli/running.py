"""`llmkit ps`, `llmkit load` and `llmkit unload`: the models a running server serves."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from llmkit.cli.console import out
from llmkit.cli.options import ApiKey, Json, Url

Name = Annotated[
    str, typer.Argument(help="The model, as `llmkit ps` names it.", show_default=False)
]


def ps(url: Url = None, api_key: ApiKey = None, as_json: Json = False) -> None:
    """List a running server's models: loaded or not, their memory, slots, and until when."""
    from llmkit import models_client as mc

    cards = mc.ServerModels(url, api_key).list()
    if as_json:
        print(json.dumps([card.to_json() for card in cards], indent=2))
        return
    table = Table("name", "state", "memory", "slots", "until")
    failed = any(card.state == "failed" for card in cards)
    if failed:
        table.add_column("error")
    for card in cards:
        row = [card.id, card.state, mc.memory(card), mc.slots(card), mc.until(card)]
        table.add_row(*row, *([card.error or ""] if failed else []))
    out.print(table)


def load(
    name: Name,
    keep_alive: Annotated[
        str | None,
        typer.Option(
            "--keep-alive",
            show_default=False,
            help="How long it stays once idle: 5m, 1h, 300 (seconds), -1 for ever "
            "(default: the server's).",
        ),
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Load a model of a running server now (returns once it is loaded)."""
    from llmkit.models_client import ServerModels, describe

    out.print(describe(ServerModels(url, api_key).load(name, keep_alive)), highlight=False)


def unload(name: Name, url: Url = None, api_key: ApiKey = None) -> None:
    """Unload a model of a running server, freeing its memory (it loads again when asked)."""
    from llmkit.models_client import ServerModels, describe

    out.print(describe(ServerModels(url, api_key).unload(name)), highlight=False)
