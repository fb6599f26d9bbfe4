"""The models of a running server: their cards read from what a server sends (all of a
multi-model llmkit's fields, or only an id), shown as a person reads them, and `llmkit ps`,
`load` and `unload` against a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from llmkit.models_client import ModelCard, describe, in_words, memory, refusal, slots, until
from llmkit.sizes import human_size
from tests.helpers import LlmkitCli, free_port

NOW = 1_800_000_000

# A card as a server serving several models sends it.
LOADED: dict[str, Any] = {
    "id": "gemma-3-270m",
    "object": "model",
    "created": 0,
    "owned_by": "llmkit",
    "state": "loaded",
    "size_bytes": 310_000_000,
    "resident_bytes": 310_000_000,
    "expires_at": NOW + 4 * 60 + 10,
    "keep_alive": 300.0,
    "slots": {"total": 4, "active": 1},
    "context_length": 4096,
    "error": None,
}


def url_of(client: openai.OpenAI) -> str:
    return str(client.base_url).rstrip("/")


def cells(line: str) -> list[str]:
    """The cells of a row of a rich table."""
    return [cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]


def test_a_card_with_only_an_id_is_an_older_servers_one_model_loaded_for_good() -> None:
    card = ModelCard.of({"id": "gemma-3-270m", "object": "model", "owned_by": "llmkit"})

    assert card.state == "loaded"
    assert (memory(card), slots(card), until(card, NOW)) == ("—", "—", "forever")


def test_a_loaded_models_memory_slots_and_time_left_read_as_words() -> None:
    card = ModelCard.of(LOADED)

    assert (memory(card), slots(card), until(card, NOW)) == ("310.0 MB", "1/4", "in 4 minutes")
    assert describe(card, NOW) == (
        "gemma-3-270m: loaded · 310.0 MB · 1/4 slots · unloads in 4 minutes"
    )


def test_an_unloaded_model_shows_what_it_would_take_and_a_failed_one_why() -> None:
    unloaded = ModelCard.of(
        {**LOADED, "state": "unloaded", "resident_bytes": 0, "expires_at": None, "slots": None}
    )
    assert (memory(unloaded), slots(unloaded), until(unloaded, NOW)) == (
        "— (310.0 MB when loaded)",
        "—",
        "—",
    )
    failed = ModelCard.of({**LOADED, "state": "failed", "error": "not enough memory"})
    assert describe(failed, NOW).startswith("gemma-3-270m: failed · not enough memory")


def test_a_model_kept_for_ever_or_busy_has_no_deadline() -> None:
    forever = ModelCard.of({**LOADED, "expires_at": None, "keep_alive": None})
    busy = ModelCard.of({**LOADED, "expires_at": None})
    assert (until(forever, NOW), until(busy, NOW)) == ("forever", "while busy")


def test_times_to_come_read_as_people_say_them() -> None:
    said = [in_words(s) for s in (0.4, 1, 30, 59.6, 60, 61, 3599, 7200, 90000)]
    assert said == [
        "now",
        "in 1 second",
        "in 30 seconds",
        "in 1 minute",
        "in 1 minute",
        "in 1 minute",
        "in 59 minutes",
        "in 2 hours",
        "in 1 day",
    ]


def test_odd_values_in_a_card_are_left_unknown() -> None:
    card = ModelCard.of(
        {"id": "m", "state": "sleeping", "size_bytes": "big", "slots": [], "expires_at": True}
    )
    assert (card.state, card.size_bytes, card.slots_total, card.expires_at) == (
        "loaded",
        None,
        None,
        None,
    )


def test_a_name_the_server_does_not_serve_is_refused_naming_it() -> None:
    url = "http://127.0.0.1:8000/v1"
    response = httpx.Response(404, request=httpx.Request("POST", f"{url}/models/gpt-4/load"))
    error = {
        "message": "no model gpt-4",
        "type": "invalid_request_error",
        "code": "model_not_found",
    }
    refused = refusal(
        openai.NotFoundError("404", response=response, body=error), url, "gpt-4", "load"
    )
    assert str(refused) == f"the server at {url} serves no model 'gpt-4'; llmkit ps lists them"


# -- against a real server -----------------------------------------------------------------


def test_ps_lists_the_servers_model_as_loaded(
    llmkit_server: openai.OpenAI, llmkit_cli: LlmkitCli
) -> None:
    url = url_of(llmkit_server)
    table = llmkit_cli("ps", "--url", url)
    assert table.exit_code == 0, table.output
    rows = [cells(line) for line in table.stdout.splitlines() if line[:1] in "┃│"]
    card = llmkit_server.models.list().data[0].model_dump()
    # The one model, loaded at start and kept; what it counts in memory, its idle slots.
    assert rows == [
        ["name", "state", "memory", "slots", "until"],
        ["gemma-3-270m", "loaded", human_size(card["resident_bytes"]), "0/4", "forever"],
    ]

    listed = llmkit_cli("ps", "--url", url, "--json")
    assert listed.exit_code == 0, listed.output
    (card,) = json.loads(listed.stdout)
    assert card["id"] == "gemma-3-270m" and card["state"] == "loaded"


def test_ps_without_a_server_is_one_line_and_exit_1(llmkit_cli: LlmkitCli) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = llmkit_cli("ps", "--url", url)

    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: no server at {url} — start one with: llmkit serve --model NAME"
    ]


def test_load_on_the_one_model_server_says_it_is_loaded_in_one_line(
    llmkit_server: openai.OpenAI, llmkit_cli: LlmkitCli
) -> None:
    # The one model a server serves is loaded at start and kept: load says so.
    result = llmkit_cli("load", "gemma-3-270m", "--url", url_of(llmkit_server))
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("gemma-3-270m: loaded") and "kept forever" in line, line
