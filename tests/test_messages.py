"""POST /v1/messages and /v1/messages/count_tokens end to end: the real servers and the tiny models
with the official anthropic SDKs (Python, and TypeScript through node). Without a model: the
translation and the error shapes in tests/test_messages_translation.py, the shaper's events in
tests/test_message_events.py."""

from __future__ import annotations

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
from anthropic.types import Message

import llmkit
from tests.helpers import (
    ADD_TOOL,
    MESSAGE_EVENTS,
    WEATHER_TOOL,
    anthropic_tool,
    clean_env,
    collapsed,
    get_json,
    root_url,
    sse_events,
    valid_tool_call,
)

WEATHER = anthropic_tool(WEATHER_TOOL)
ADD = anthropic_tool(ADD_TOOL)
TOOLS = [WEATHER, ADD]
ASK = "What is the weather in Paris? And what is 2 plus 3?"
# The SDK (2.x) has no sampling keywords any more; the API (and so this server) takes them.
GREEDY = {"extra_body": {"temperature": 0}}
SHORT: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 16, **GREEDY}
CALLS: dict[str, Any] = {"model": "any", "max_tokens": 60, **GREEDY}
slow = pytest.mark.slow  # (the tests that take their server by name; the others are marked by it)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


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
    smollm2_server: openai.OpenAI,
) -> None:
    # The instruct model: it answers (Gemma, a base model, may end the turn at once at
    # temperature 0, and an empty answer has no text delta to check the order of).
    client = sdk(smollm2_server)
    with client.messages.stream(messages=[user("Pick a colour.")], **SHORT) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e.type for e in events if e.type in MESSAGE_EVENTS]
    assert collapsed(raw) == [t for t in MESSAGE_EVENTS if t != "ping"]  # the SDK drops pings
    text = "".join(e.text for e in events if e.type == "text")
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0
    counted = client.messages.count_tokens(model="x", messages=[user("Pick a colour.")])
    assert prompt_tokens(final.usage) == counted.input_tokens
    # On the wire: a ping after the start, every event named as its type
    asked = {"model": "x", "max_tokens": 16, "temperature": 0, "stream": True}
    body = json.dumps({"messages": [user("Pick a colour.")], **asked}).encode()
    request = urllib.request.Request(
        root_url(smollm2_server) + "/v1/messages",
        data=body,
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        wire = sse_events(response.read())
    assert collapsed([e["type"] for e in wire]) == MESSAGE_EVENTS


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
    assert collapsed(out["types"]) == [t for t in MESSAGE_EVENTS if t != "ping"]
    assert final.usage.output_tokens > 0
