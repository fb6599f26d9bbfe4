"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, translated and
shaped (no model), then the real servers and the tiny models with the official anthropic SDKs
(Python, and TypeScript through node)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

import llmkit
from llmkit.engine import Delta, QueueFull, Usage
from llmkit.errors import BadRequest
from llmkit.server import errors
from llmkit.server.bodies import MessagesPrompt, MessagesRequest
from llmkit.server.message_events import MessageShaper
from llmkit.server.messages import to_chat, tools_for
from llmkit.tools.family import GENERIC, HERMES
from tests.helpers import (
    ADD_TOOL,
    WEATHER_TOOL,
    clean_env,
    get_json,
    root_url,
    valid_tool_call,
)


def anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped function tool in Anthropic's shape."""
    function = tool["function"]
    return {
        "name": function["name"],
        "description": function["description"],
        "input_schema": function["parameters"],
    }


WEATHER = anthropic_tool(WEATHER_TOOL)
ADD = anthropic_tool(ADD_TOOL)
TOOLS = [WEATHER, ADD]
ASK = "What is the weather in Paris? And what is 2 plus 3?"
# The SDK (2.x) has no sampling keywords any more; the API (and so this server) takes them.
GREEDY = {"extra_body": {"temperature": 0}}
SHORT: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 16, **GREEDY}
CALLS: dict[str, Any] = {"model": "any", "max_tokens": 60, **GREEDY}
slow = pytest.mark.slow  # (the tests that take their server by name; the others are marked by it)
ORDER = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def collapsed(types: list[str]) -> list[str]:
    """Event types with each run of deltas shown once."""
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# -- the translation: a Messages request as the chat request that computes it -------------------


def test_system_blocks_text_blocks_calls_and_results_become_chat_messages() -> None:
    body = MessagesRequest(
        model="claude-x",
        max_tokens=7,
        system=[
            {"type": "text", "text": "Be terse. ", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": ASK}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me see.", "citations": None},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "add", "input": {"a": 2}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "b is missing"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Go on."},
                ],
            },
        ],
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
        metadata={"user_id": "u1"},
        tools=[{**WEATHER, "cache_control": {"type": "ephemeral"}}, {**ADD, "type": "custom"}],
        tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True},
    )
    chat = to_chat(body)
    calls = [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}},
    ]
    assert chat.messages == [
        {"role": "system", "content": "Be terse. Use tools."},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "Let me see.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: b is missing"},
        {"role": "user", "content": "Go on."},
    ]
    assert (chat.max_completion_tokens, chat.stop, chat.temperature, chat.top_k) == (
        7,
        ["END"],
        0.5,
        5,
    )
    # unset, the chat route's defaults (the same sampling on both routes)
    assert chat.top_p == to_chat(MessagesRequest(max_tokens=1, messages=[user("x")])).top_p == 0.95
    tools = tools_for(chat)
    assert tools is not None and (tools.mode, tools.name, tools.parallel) == ("named", "add", False)
    assert [(t.name, t.parameters) for t in tools.tools] == [
        (t["name"], t["input_schema"]) for t in TOOLS
    ]
    # only calls: no text
    called = {"role": "assistant", "content": body.messages[1]["content"][1:]}
    only = to_chat(MessagesPrompt(messages=[called, user("ok")]))
    assert only.messages[0] == {"role": "assistant", "content": None, "tool_calls": calls}


@pytest.mark.parametrize(
    ("choice", "mode", "parallel"),
    [
        ({"type": "auto"}, "auto", True),
        ({"type": "any"}, "required", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "get_weather"}, "named", True),
        (None, "auto", True),
    ],
)
def test_tool_choice_becomes_chats_and_the_grammar_enforces_it(
    choice: dict[str, Any] | None, mode: str, parallel: bool
) -> None:
    tools = tools_for(
        to_chat(MessagesPrompt(messages=[user(ASK)], tools=TOOLS, tool_choice=choice))
    )
    assert tools is not None and (tools.mode, tools.parallel) == (mode, parallel)
    # none: no tool is offered at all (as chat's none), so none can be called
    none = to_chat(MessagesPrompt(messages=[user(ASK)], tools=TOOLS, tool_choice={"type": "none"}))
    assert tools_for(none) is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"service_tier": "auto"}, "service_tier"),
        ({"stop": ["x"]}, "stop"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
        ),
        ({"messages": [user("hi"), {"role": "assistant", "content": "The"}]}, "messages[1]"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "z": 1}]}]},
            "messages[0].content[0].z",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tools[0].input_schema"),
        ({"tools": [{"input_schema": {"type": "object"}}]}, "tools[0].name"),
        ({"tools": [ADD, ADD]}, "tools[1]"),
        ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nowhere"}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as info:
        tools_for(to_chat(MessagesPrompt(**{"messages": [user("hi")], **fields})))
    assert info.value.param == param
    assert ".function" not in str(info.value) and "parameters" not in str(info.value)


def test_the_schema_admits_what_the_translation_takes_and_not_what_it_refuses() -> None:
    import jsonschema

    schema = jsonschema.Draft202012Validator(MessagesRequest.model_json_schema())
    hi = {"max_tokens": 5, "messages": [user("hi")]}
    taken = {
        **hi,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "cache_control": {"type": "ephemeral"},
        "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "add", "disable_parallel_tool_use": True},
        "thinking": {"type": "disabled"},
    }
    assert not list(schema.iter_errors(taken))
    to_chat(MessagesRequest(**taken))
    for refused in (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}},
        {"temperature": 1.5},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"tool_choice": {"type": "any"}},  # with no tools
        {"service_tier": "auto"},
        {"max_tokens": None},
    ):
        assert not schema.is_valid({**hi, **refused}), refused


# -- the shaper: engine deltas as Anthropic's message and events ----------------------------------


@functools.cache
def stream_event() -> TypeAdapter[Any]:
    return TypeAdapter(RawMessageStreamEvent)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The data of each server-sent event, checked against its `event:` line."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            events.append(json.loads(data.removeprefix("data: ")))
            assert kind == f"event: {events[-1]['type']}"
    return events


def replayed(
    shaper: MessageShaper,
    text: str,
    finish: str = "stop",
    size: int = 3,
    stop: str | None = None,
    usage: Usage | None = None,
) -> list[dict[str, Any]]:
    """The stream events of an answer with this text, fed a few characters at a time."""
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    last = len(pieces) - 1
    raw = shaper.opening() + b"".join(
        shaper.sse(Delta(0, piece, finish if k == last else None, stop=stop if k == last else None))
        for k, piece in enumerate(pieces)
    )
    events = sse_events(raw + shaper.closing(usage or Usage(12, len(pieces), 5)))
    for event in events:  # each one what the SDK's own event models accept (but ping)
        if event["type"] != "ping":
            stream_event().validate_python(event)
    return events


def final_message(events: list[dict[str, Any]]) -> Message:
    """The message the SDK's stream helper assembles from these events."""
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot = None
    buffers: dict[int, bytes] = {}  # the partial input JSON of each tool_use block
    for event in events:
        if event["type"] != "ping":
            snapshot = accumulate_event(
                event=stream_event().validate_python(event),
                current_snapshot=snapshot,
                json_bufs=buffers,
            )
    assert snapshot is not None
    return snapshot


def test_a_text_answer_streams_as_one_text_block_and_ends_the_turn() -> None:
    events = replayed(MessageShaper("m", 12, 100, []), "Hello there, world.")
    assert collapsed([e["type"] for e in events]) == ORDER
    start = Message.model_validate(events[0]["message"])
    assert start.id.startswith("msg_") and start.content == [] and start.usage.input_tokens == 12
    final = final_message(events)
    assert final.content[0].type == "text" and final.content[0].text == "Hello there, world."
    assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)
    # Anthropic's count: input_tokens are those computed, the cached ones apart; they add up
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (7, 5)
    assert final.usage.cache_creation_input_tokens == 0 and final.usage.output_tokens == 7
    # not streamed: the same message
    shaper = MessageShaper("m", 12, 100, [])
    shaper.add(Delta(0, "Hello there, world.", "stop"))
    body = Message.model_validate(shaper.body(Usage(12, 7, 5)))
    assert body.model_dump(exclude={"id"}) == final.model_dump(exclude={"id"})


def test_a_stop_sequence_of_the_request_is_named_and_a_templates_is_not() -> None:
    events = replayed(MessageShaper("m", 9, 100, ["END", "STOP"]), "one two", stop="STOP")
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}
    template = replayed(MessageShaper("m", 9, 100, ["END"]), "one two", stop="<end_of_turn>")
    assert template[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_max_tokens_or_the_context_cut_the_answer() -> None:
    cut = replayed(MessageShaper("m", 9, 3, []), "one two three", "length", usage=Usage(9, 3))
    assert cut[-2]["delta"]["stop_reason"] == "max_tokens"
    full = replayed(MessageShaper("m", 9, 99, []), "one two three", "length", usage=Usage(9, 3))
    assert full[-2]["delta"]["stop_reason"] == "model_context_window_exceeded"


def tool_shaper(family: Any) -> MessageShaper:
    return MessageShaper("m", 40, 100, [], family)


def test_text_then_calls_stream_as_a_text_block_then_tool_use_blocks() -> None:
    calls = [("add", '{"a": 2, "b": 3}'), ("get_weather", '{"city": "Rome"}')]
    events = replayed(tool_shaper(HERMES), "Let me see. " + HERMES.text(calls))
    block = ["content_block_start", "content_block_delta", "content_block_stop"]
    assert collapsed([e["type"] for e in events]) == [
        "message_start",
        "ping",
        *block * 3,
        "message_delta",
        "message_stop",
    ]
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert all(b["id"].startswith("toolu_") and b["input"] == {} for b in starts[1:])
    final = final_message(events)
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "text" and final.content[0].text == "Let me see. "
    used = [(b.name, b.input) for b in final.content[1:] if b.type == "tool_use"]
    assert used == [(name, json.loads(arguments)) for name, arguments in calls]
    assert [b.id for b in final.content[1:]] == [b["id"] for b in starts[1:]]
    # not streamed: the same blocks (with ids of their own)
    shaper = tool_shaper(HERMES)
    shaper.add(Delta(0, "Let me see. " + HERMES.text(calls), "stop"))
    body = Message.model_validate(shaper.body(Usage(40, 9, 0)))
    assert [b.model_dump(exclude={"id"}) for b in body.content] == [
        b.model_dump(exclude={"id"}) for b in final.content
    ]


def test_only_calls_give_no_text_block_and_only_text_gives_no_call() -> None:
    calls = replayed(tool_shaper(GENERIC), GENERIC.text([("add", '{"a": 1, "b": 2}')]))
    assert [b.type for b in final_message(calls).content] == ["tool_use"]
    native = replayed(tool_shaper(HERMES), "\n" + HERMES.text([("add", '{"a": 1, "b": 2}')]))
    assert [b.type for b in final_message(native).content] == ["tool_use"]
    text = final_message(replayed(tool_shaper(GENERIC), '{"response": "Hello there"}'))
    assert [(b.type, b.text) for b in text.content] == [("text", "Hello there")]  # type: ignore[union-attr]
    assert text.stop_reason == "end_turn"


def test_a_call_cut_by_max_tokens_is_left_out_of_the_body() -> None:
    text = HERMES.text([("add", '{"a": 1, "b": 2}'), ("add", '{"a": 3, "b": 4}')])
    shaper = MessageShaper("m", 9, 20, [], HERMES)
    shaper.add(Delta(0, text[:-16], "length"))
    body = Message.model_validate(shaper.body(Usage(9, 20)))
    assert body.stop_reason == "max_tokens"
    assert [(b.type, b.input) for b in body.content] == [("tool_use", {"a": 1, "b": 2})]  # type: ignore[union-attr]


def test_a_failed_stream_ends_with_an_error_event() -> None:
    [event] = sse_events(MessageShaper("m", 9, 9, []).failed("gone", "shutting_down", Usage()))
    assert event == {"type": "error", "error": {"type": "overloaded_error", "message": "gone"}}


# -- errors: Anthropic's shape on Anthropic's routes, from the one mapping -------------------------


def test_errors_take_the_shape_of_the_routes_api() -> None:
    app = FastAPI()

    async def full() -> None:
        raise QueueFull("2 requests are waiting")

    async def refused() -> None:
        raise BadRequest("no", "thing")

    for path in ("/v1/messages", "/v1/chat/completions", "/v1/models"):
        app.add_api_route(path, full, methods=["POST"])
        app.add_api_route(path, refused, methods=["GET"])
    errors.install(app)
    client = TestClient(app)
    overloaded = client.post("/v1/messages")
    assert overloaded.status_code == 529 and overloaded.headers["retry-after"]
    assert overloaded.json() == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "server busy: 2 requests are waiting; retry shortly",
        },
    }
    busy = client.post("/v1/chat/completions")
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "queue_full"
    assert client.get("/v1/messages").json()["error"] == {
        "type": "invalid_request_error",
        "message": "no",
    }
    assert client.get("/v1/models").json()["error"]["param"] == "thing"  # OpenAI's
    shaped = client.get("/v1/models", headers={"anthropic-version": "2023-06-01"}).json()
    assert shaped["type"] == "error"
    missing = client.get("/v1/messages/nowhere").json()
    assert missing["error"]["type"] == "not_found_error"


# -- the real servers, the official Python SDK ------------------------------------------------------


def sdk(server: openai.OpenAI, key: str = "unused") -> anthropic.Anthropic:
    """The Anthropic SDK on this server (its base URL is the server's root: it adds /v1/messages)."""
    return anthropic.Anthropic(base_url=root_url(server), api_key=key, max_retries=0)


def prompt_tokens(usage: Any) -> int:
    """The whole prompt, as Anthropic counts it: computed, read from the cache, written to it."""
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def test_a_plain_message_gets_a_message_the_sdk_reads(llmkit_server: openai.OpenAI) -> None:
    message = sdk(llmkit_server).messages.create(messages=[user("Say hello.")], **SHORT)
    Message.model_validate(message.to_dict())
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == SHORT["model"]
    [block] = message.content
    assert block.type == "text" and block.text.strip()
    usage = message.usage
    assert 0 < usage.output_tokens <= 16 and usage.cache_creation_input_tokens == 0
    assert usage.input_tokens >= 0 and prompt_tokens(usage) > 5
    assert message.stop_sequence is None
    if message.stop_reason == "max_tokens":
        assert usage.output_tokens == 16
    else:
        assert message.stop_reason == "end_turn"


def test_system_blocks_are_the_system_string_and_the_chat_routes_prompt(
    llmkit_server: openai.OpenAI,
) -> None:
    client = sdk(llmkit_server)
    question = [user("Name three colours.")]
    system = "You are terse. Answer in English."
    # Greedy output repeats for the same batch layout: compare requests that both find their
    # prompt in the cache (see test_server's usage test).
    for _ in range(2):
        as_string = client.messages.create(system=system, messages=question, **SHORT)
    blocks = [
        {"type": "text", "text": "You are terse. "},
        {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
    ]
    as_blocks = client.messages.create(system=blocks, messages=question, **SHORT)  # type: ignore[arg-type]
    assert as_blocks.content[0].text == as_string.content[0].text  # type: ignore[union-attr]
    assert as_blocks.usage.cache_read_input_tokens > 0  # the same prompt, found in the cache
    counted = client.messages.count_tokens(model="x", system=blocks, messages=question)  # type: ignore[arg-type]
    assert prompt_tokens(as_blocks.usage) == prompt_tokens(as_string.usage) == counted.input_tokens
    chat = llmkit_server.chat.completions.create(
        model="x",
        messages=[{"role": "system", "content": system}, *question],  # type: ignore[list-item]
        max_tokens=16,
        temperature=0,
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == counted.input_tokens
    assert chat.choices[0].message.content == as_string.content[0].text  # type: ignore[union-attr]


def test_the_sdks_stream_helper_gets_the_events_in_order_and_the_final_message(
    llmkit_server: openai.OpenAI,
) -> None:
    client = sdk(llmkit_server)
    with client.messages.stream(messages=[user("Pick a colour.")], **SHORT) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e.type for e in events if e.type in ORDER]
    assert collapsed(raw) == [t for t in ORDER if t != "ping"]  # the SDK drops pings
    text = "".join(e.text for e in events if e.type == "text")
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    counted = client.messages.count_tokens(model="x", messages=[user("Pick a colour.")])
    assert prompt_tokens(final.usage) == counted.input_tokens
    # On the wire: a ping after the start, every event named as its type
    asked = {"model": "x", "max_tokens": 16, "temperature": 0, "stream": True}
    body = json.dumps({"messages": [user("Pick a colour.")], **asked}).encode()
    request = urllib.request.Request(
        root_url(llmkit_server) + "/v1/messages",
        data=body,
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        wire = sse_events(response.read())
    assert collapsed([e["type"] for e in wire]) == ORDER


def test_max_tokens_cuts_the_answer(llmkit_server: openai.OpenAI) -> None:
    message = sdk(llmkit_server).messages.create(
        messages=[user("Write a long story about a castle.")], **{**SHORT, "max_tokens": 3}
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    assert message.content[0].text  # type: ignore[union-attr]


def test_a_stop_sequence_ends_the_answer_and_is_named(smollm2_server: openai.OpenAI) -> None:
    message = sdk(smollm2_server).messages.create(
        messages=[user("Write a sentence about the sea.")],
        stop_sequences=["qqq", "e"],
        **{**SHORT, "max_tokens": 32},
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "e"
    assert "e" not in message.content[0].text  # type: ignore[union-attr]


def _uses(message: Message) -> list[Any]:
    return [b for b in message.content if b.type == "tool_use"]


@slow
@pytest.mark.parametrize("server", ["smollm2_server", "llmkit_server"])
def test_tool_choice_any_tool_and_none_are_enforced(
    server: str, request: pytest.FixtureRequest
) -> None:
    create = sdk(request.getfixturevalue(server)).messages.create
    forced = create(messages=[user(ASK)], tools=TOOLS, tool_choice={"type": "any"}, **CALLS)  # type: ignore[arg-type]
    Message.model_validate(forced.to_dict())
    uses = _uses(forced)
    # (a tiny model may repeat its calls until max_tokens: the cut one is left out)
    assert uses and [b.type for b in forced.content] == ["tool_use"] * len(uses)
    assert all(valid_tool_call(b.name, b.input) for b in uses)
    assert all(b.id.startswith("toolu_") for b in uses) and len({b.id for b in uses}) == len(uses)
    assert forced.stop_reason in ("tool_use", "max_tokens")

    named = create(
        messages=[user(ASK)],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "tool", "name": "add", "disable_parallel_tool_use": True},
        **CALLS,
    )
    [call] = named.content
    assert call.type == "tool_use" and call.name == "add" and valid_tool_call("add", call.input)  # type: ignore[arg-type]
    assert named.stop_reason == "tool_use"

    none = create(
        messages=[user(ASK)],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "none"},
        **{**CALLS, "max_tokens": 12},
    )
    assert [b.type for b in none.content] == ["text"] and none.stop_reason != "tool_use"


def test_a_tool_result_round_trip(smollm2_server: openai.OpenAI) -> None:
    client = sdk(smollm2_server)
    first = client.messages.create(
        messages=[user(ASK)],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        **CALLS,
    )
    [call] = first.content
    assert call.type == "tool_use" and call.name == "get_weather"
    # As Anthropic's guide has it: the assistant's content passed back, then the results.
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}
    history: list[Any] = [
        user(ASK),
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    answer = client.messages.create(
        messages=history,
        tools=TOOLS,
        tool_choice={"type": "none"},
        **{**CALLS, "max_tokens": 24},  # type: ignore[arg-type]
    )
    assert [b.type for b in answer.content] == ["text"] and answer.content[0].text  # type: ignore[union-attr]
    asked = client.messages.count_tokens(model="x", messages=[user(ASK)])
    assert prompt_tokens(answer.usage) > asked.input_tokens + 10  # the call and its result
    failed = [{**result, "is_error": True}]
    errored = client.messages.count_tokens(
        model="x",
        messages=[*history[:2], {"role": "user", "content": failed}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "none"},
    )
    assert errored.input_tokens > prompt_tokens(answer.usage)  # the model reads it failed
    again = client.messages.create(
        messages=history,
        tools=TOOLS,
        tool_choice={"type": "any"},
        **CALLS,  # type: ignore[arg-type]
    )
    assert _uses(again)  # and a model may call again after a result


@slow
@pytest.mark.parametrize("server", ["smollm2_server", "qwen_template_server"])
def test_count_tokens_is_the_prompt_the_message_used_tools_included(
    server: str, request: pytest.FixtureRequest
) -> None:
    client = sdk(request.getfixturevalue(server))
    fields: dict[str, Any] = {
        "system": "Be brief.",
        "messages": [user(ASK)],
        "tools": TOOLS,
        "tool_choice": {"type": "any"},
    }
    counted = client.messages.count_tokens(model="x", **fields)
    message = client.messages.create(**fields, **CALLS)
    assert counted.input_tokens == prompt_tokens(message.usage)
    bare = client.messages.count_tokens(model="x", system="Be brief.", messages=[user(ASK)])
    assert counted.input_tokens > bare.input_tokens + 20  # the tools are in the prompt


def test_a_native_template_streams_calls_and_never_its_tags(
    qwen_template_server: openai.OpenAI,
) -> None:
    with sdk(qwen_template_server).messages.stream(
        messages=[user(ASK)],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        **CALLS,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    [call] = final.content
    assert call.type == "tool_use" and valid_tool_call(call.name, call.input)  # type: ignore[arg-type]
    partial = "".join(e.partial_json for e in events if e.type == "input_json")  # type: ignore[union-attr]
    assert json.loads(partial) == call.input and "<tool_call>" not in partial
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "code_execution_20250522", "name": "code"}]}, "tools[0].type"),
        ({"messages": [user("Hi"), {"role": "assistant", "content": "The"}]}, "messages[1]"),
        ({"extra_body": {"n": 2}}, "n"),
    ],
)
def test_what_the_server_cannot_honour_is_an_anthropic_400(
    llmkit_server: openai.OpenAI, bad: dict[str, Any], param: str
) -> None:
    client = sdk(llmkit_server)
    fields = {**SHORT, "messages": [user("hi")], **bad}
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(stream=stream, **fields)
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert (
            body["error"]["type"] == "invalid_request_error" and param in body["error"]["message"]
        )
    assert client.messages.create(messages=[user("hi")], **SHORT).content


def test_models_answer_in_anthropics_shape_when_an_anthropic_sdk_asks(
    llmkit_server: openai.OpenAI,
) -> None:
    client = sdk(llmkit_server)
    [card] = client.models.list().data
    assert card.type == "model" and card.id == "gemma-3-270m" and card.created_at.year == 1970
    assert client.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"
    assert llmkit_server.models.list().data[0].object == "model"  # the OpenAI SDK's, unchanged


def test_the_routes_are_described_with_anthropics_errors_and_bounds(
    llmkit_server: openai.OpenAI,
) -> None:
    status, schema = get_json(root_url(llmkit_server) + "/openapi.json")
    assert status == 200
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        responses = schema["paths"][path]["post"]["responses"]
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/AnthropicError"
        )
        assert "529" in responses and "503" not in responses
    body = schema["components"]["schemas"]["MessagesRequest"]
    assert body["properties"]["temperature"]["anyOf"][0]["maximum"] == 1
    assert "max_tokens" in body["required"] and body["additionalProperties"] is False
    assert (
        "text/event-stream"
        in schema["paths"]["/v1/messages"]["post"]["responses"]["200"]["content"]
    )


# -- the key, a missing max_tokens and a full queue: a server of its own ---------------------------


@pytest.fixture(scope="module")
def guarded_server(server_models_dir: Path) -> Iterator[openai.OpenAI]:
    """gemma behind an API key, one slot and a queue of one."""
    with llmkit.serve(
        "gemma-3-270m",
        api_key="s3cret",
        parallel=1,
        max_queue=1,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        yield client


def _post(server: openai.OpenAI, path: str, body: Any, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        root_url(server) + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_key_is_taken_as_x_api_key_and_a_wrong_one_is_an_authentication_error(
    guarded_server: openai.OpenAI,
) -> None:
    small = {**SHORT, "max_tokens": 2}
    assert sdk(guarded_server, "s3cret").messages.create(messages=[user("hi")], **small).content
    bearer = anthropic.Anthropic(
        base_url=root_url(guarded_server), api_key=None, auth_token="s3cret", max_retries=0
    )
    assert bearer.messages.count_tokens(model="x", messages=[user("hi")]).input_tokens > 0
    wrong = sdk(guarded_server, "wrong")
    for ask in (
        lambda: wrong.messages.create(messages=[user("hi")], **small),
        lambda: wrong.messages.count_tokens(model="x", messages=[user("hi")]),
        lambda: wrong.models.list(),
    ):
        with pytest.raises(anthropic.AuthenticationError) as info:
            ask()
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert (
            body["error"]["type"] == "authentication_error"
            and "x-api-key" in body["error"]["message"]
        )
    # The OpenAI routes keep OpenAI's shape
    with pytest.raises(openai.AuthenticationError) as openai_info:
        openai.OpenAI(base_url=str(guarded_server.base_url), api_key="wrong").models.list()
    assert (
        isinstance(openai_info.value.body, dict)
        and openai_info.value.body["code"] == "invalid_api_key"
    )


def test_a_missing_max_tokens_is_an_anthropic_400(guarded_server: openai.OpenAI) -> None:
    status, body = _post(
        guarded_server,
        "/v1/messages",
        {"model": "x", "messages": [user("hi")]},
        **{"x-api-key": "s3cret"},
    )
    assert status == 400
    assert body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


def test_a_full_queue_answers_529_overloaded_with_retry_after(
    guarded_server: openai.OpenAI,
) -> None:
    client = sdk(guarded_server, "s3cret")
    running = guarded_server.with_options(max_retries=0).chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=300,
        stream=True,
        extra_body={"min_tokens": 300},  # it holds the one slot until the end of the test
    )
    next(iter(running))
    waiting = threading.Thread(
        target=lambda: client.messages.create(messages=[user("hi")], **{**SHORT, "max_tokens": 2})
    )
    waiting.start()
    deadline = time.monotonic() + 10
    while get_json(root_url(guarded_server) + "/health")[1]["waiting"] < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.05)
    start = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(messages=[user("hi")], **{**SHORT, "max_tokens": 2})
    assert time.monotonic() - start < 1.0
    assert info.value.status_code == 529 and isinstance(info.value, anthropic.OverloadedError)
    assert info.value.response.headers["retry-after"]
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    running.close()
    waiting.join(60)


# -- the official TypeScript SDK, through node ------------------------------------------------------

NODE_SCRIPT = """
const sdk = require("@anthropic-ai/sdk");
const Anthropic = sdk.default || sdk.Anthropic || sdk;
const client = new Anthropic({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const ask = { model: "claude-x", max_tokens: 16, temperature: 0,
              messages: [{ role: "user", content: "Say hello." }] };
(async () => {
  const plain = await client.messages.create(ask);
  const stream = client.messages.stream(ask);
  const types = [];
  let text = "";
  stream.on("streamEvent", (event) => types.push(event.type));
  stream.on("text", (delta) => { text += delta; });
  const final = await stream.finalMessage();
  console.log(JSON.stringify({ plain, final, types, text }));
})().catch((error) => { console.error(error); process.exit(1); });
"""


@pytest.fixture(scope="session")
def anthropic_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with @anthropic-ai/sdk installed from npm, and the script that uses it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm, to install and run @anthropic-ai/sdk")
    root = tmp_path_factory.mktemp("anthropic-node")
    installed = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "@anthropic-ai/sdk"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    (root / "messages.cjs").write_text(NODE_SCRIPT)
    return root


def test_the_typescript_sdk_gets_a_message_and_a_stream(
    llmkit_server: openai.OpenAI, anthropic_node: Path
) -> None:
    ran = subprocess.run(
        ["node", "messages.cjs", root_url(llmkit_server)],
        cwd=anthropic_node,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    plain = Message.model_validate(out["plain"])
    assert plain.id.startswith("msg_") and plain.content[0].text  # type: ignore[union-attr]
    assert plain.stop_reason in ("end_turn", "max_tokens")
    final = Message.model_validate(out["final"])
    assert final.content[0].text == out["text"] and out["text"]  # type: ignore[union-attr]
    assert collapsed(out["types"]) == [t for t in ORDER if t != "ping"]
    assert final.usage.output_tokens > 0
