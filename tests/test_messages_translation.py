"""Anthropic's Messages API without a model: a request translated to the chat request that
computes it (llmkit.server.messages.to_chat), its schema, and errors in Anthropic's shape on
Anthropic's routes (llmkit.server.errors)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llmkit.engine import QueueFull
from llmkit.errors import BadRequest
from llmkit.server import errors
from llmkit.server.bodies import MessagesPrompt, MessagesRequest
from llmkit.server.messages import to_chat, tools_for
from tests.helpers import ADD_TOOL, WEATHER_TOOL, anthropic_tool

WEATHER = anthropic_tool(WEATHER_TOOL)
ADD = anthropic_tool(ADD_TOOL)
TOOLS = [WEATHER, ADD]
ASK = "What is the weather in Paris? And what is 2 plus 3?"


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
        # Found by the fuzz: a type that is no string was a 500 (unhashable).
        ({"tools": TOOLS, "tool_choice": {"type": {}}}, "tool_choice.type"),
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
    errors.install_handlers(app)
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
