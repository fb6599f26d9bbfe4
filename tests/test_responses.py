"""POST /v1/responses: the real server, the gemma model, the real openai SDK's responses client."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, Field, TypeAdapter

from llmkit.errors import BadRequest
from llmkit.responses import ResponsesRequest, chat_request
from tests.helpers import chat, get_json, root_url, scrape

slow = pytest.mark.slow

SHORT: dict[str, Any] = {"model": "gpt-4o-mini", "temperature": 0, "max_output_tokens": 16}
COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def collapsed(types: list[str]) -> list[str]:
    """Event types with each run of deltas shown once."""
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_instructions_come_first_as_a_system_message_and_items_become_messages() -> None:
    body = ResponsesRequest(
        instructions="Be terse.",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Hi, "},
                    {"type": "input_text", "text": "I am Ada."},
                ],
            },
            # An earlier answer passed back as the SDK returned it: how a stateless chat grows.
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}],
            },
            {"role": "developer", "content": "Answer in one word."},
            {"type": "message", "role": "user", "content": "My name?"},
        ],
        max_output_tokens=7,
        text={"format": {"type": "json_schema", "name": "n", "schema": COLOR, "strict": True}},
    )
    chat_body = chat_request(body)
    assert chat_body.messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "My name?"},
    ]
    assert chat_body.max_completion_tokens == 7
    assert chat_body.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": COLOR, "strict": True},
    }
    assert chat_request(ResponsesRequest(input="Hi")).messages == [
        {"role": "user", "content": "Hi"}
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as info:
        chat_request(ResponsesRequest(**fields))
    assert info.value.param == param


@slow
def test_a_string_input_gets_a_response_the_sdk_reads(llmkit_server: openai.OpenAI) -> None:
    response = llmkit_server.responses.create(input="Say hello to the world.", **SHORT)
    Response.model_validate(response.to_dict())  # the SDK parses leniently; its model is strict
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.model == "gpt-4o-mini"
    assert response.created_at > 0
    assert response.tools == [] and response.tool_choice == "auto" and response.store is False
    assert response.temperature == 0 and response.max_output_tokens == 16
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.role == "assistant" and message.status == response.status
    [part] = message.content
    assert part.type == "output_text" and part.annotations == []
    assert response.output_text == part.text and part.text.strip()
    usage = response.usage
    assert usage is not None and usage.input_tokens > 5
    assert 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens >= 0
    if response.status == "incomplete":
        assert usage.output_tokens == 16
        assert response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.status == "completed" and response.incomplete_details is None


@slow
def test_messages_and_instructions_give_the_chat_routes_answer(
    llmkit_server: openai.OpenAI,
) -> None:
    system = "You are a helpful assistant."
    question = "Name three colours."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    # Greedy output repeats for the same batch layout: compare requests that both find their
    # prompt in the cache (see test_server's usage test).
    for _ in range(2):
        expected = llmkit_server.chat.completions.create(
            model="x", messages=messages, temperature=0, max_tokens=16
        )
    response = llmkit_server.responses.create(
        instructions=system,
        input=[{"role": "user", "content": [{"type": "input_text", "text": question}]}],
        **SHORT,
    )
    assert response.output_text == expected.choices[0].message.content
    assert response.instructions == system
    assert response.usage.input_tokens == expected.usage.prompt_tokens
    assert response.usage.input_tokens_details.cached_tokens > 0  # the chat request's prompt
    assert response.usage.output_tokens == expected.usage.completion_tokens
    finish = expected.choices[0].finish_reason
    assert response.status == ("incomplete" if finish == "length" else "completed")


@slow
def test_max_output_tokens_cuts_the_answer_and_marks_it_incomplete(
    llmkit_server: openai.OpenAI,
) -> None:
    response = llmkit_server.responses.create(
        input="Write a long story about a castle.",
        extra_body={"min_tokens": 3},  # the end-of-turn token is banned until then
        **{**SHORT, "max_output_tokens": 3},
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.usage.output_tokens == 3
    assert response.output_text


@slow
def test_a_json_schema_text_format_returns_json_matching_it(llmkit_server: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = llmkit_server.responses.create(
        input="Invent a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
        },
        **{**SHORT, "max_output_tokens": 64},
    )
    assert response.status == "completed"
    data = json.loads(response.output_text)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and len(data["name"]) <= 12
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 120
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"


@slow
def test_the_sdks_parse_helper_gets_its_pydantic_model_back(llmkit_server: openai.OpenAI) -> None:
    class Pet(BaseModel):
        name: str = Field(max_length=10)
        legs: int = Field(ge=0, le=8)

    parsed = llmkit_server.responses.parse(
        input="Describe a pet.", text_format=Pet, **{**SHORT, "max_output_tokens": 48}
    )
    assert isinstance(parsed.output_parsed, Pet)
    assert 0 <= parsed.output_parsed.legs <= 8


@slow
def test_a_json_object_text_format_starts_a_json_object(llmkit_server: openai.OpenAI) -> None:
    response = llmkit_server.responses.create(
        input="Describe a cat as a JSON object.", text={"format": {"type": "json_object"}}, **SHORT
    )
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)
    else:
        assert response.output_text.lstrip().startswith("{")


@slow
def test_the_sdks_stream_helper_gets_the_events_in_order_and_the_final_response(
    llmkit_server: openai.OpenAI,
) -> None:
    # A small schema: the grammar ends the answer well within the limit, so it completes.
    with llmkit_server.responses.stream(
        input="Pick a colour.",
        text={"format": {"type": "json_schema", "name": "colour", "schema": COLOR}},
        **{**SHORT, "max_output_tokens": 48},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert collapsed(types) == [*STREAM_ORDER, "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    text = "".join(deltas)
    assert json.loads(text)["color"] in ("red", "green", "blue")
    assert final.output_text == text
    assert next(e for e in events if e.type == "response.output_text.done").text == text
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    assert final.status == "completed" and final.output[0].status == "completed"
    assert final.output[0].id == events[2].item.id
    assert len(deltas) <= final.usage.output_tokens <= 48


@slow
def test_a_raw_stream_cut_by_max_output_tokens_ends_with_response_incomplete(
    llmkit_server: openai.OpenAI,
) -> None:
    stream = llmkit_server.responses.create(
        input="Write a long story about a castle.",
        stream=True,
        extra_body={"min_tokens": 4},
        **{**SHORT, "max_output_tokens": 4},
    )
    events = list(stream)
    for event in events:  # each one what the SDK's own (strict) event models accept
        TypeAdapter(ResponseStreamEvent).validate_python(event.to_dict())
    assert collapsed([e.type for e in events]) == [*STREAM_ORDER, "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1].response
    assert last.status == "incomplete" and last.incomplete_details.reason == "max_output_tokens"
    assert last.usage.output_tokens == 4
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert last.output_text == text and events[-2].item.status == "incomplete"


@slow
@pytest.mark.parametrize(
    "bad",
    [
        {"previous_response_id": "resp_123"},
        {"store": True},
        {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]},
        {"background": True},
        {"conversation": "conv_123"},
        {"reasoning": {"effort": "low"}},
        {"input": [{"type": "function_call_output", "call_id": "c", "output": "42"}]},
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        {"temperature": 3},
        {"extra_body": {"max_tokens": 5}},
    ],
)
def test_what_the_server_does_not_do_is_an_openai_400_naming_the_parameter(
    llmkit_server: openai.OpenAI, bad: dict[str, Any]
) -> None:
    fields = {**SHORT, "input": "hi", **bad}
    expected = next(iter(bad.get("extra_body", bad)))
    if expected == "input":
        expected = "input[0]" if "call_id" in bad["input"][0] else "input[0].content[0]"
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            llmkit_server.responses.create(stream=stream, **fields)
        error = info.value.body
        assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        assert error["param"] == expected and error["message"]
    assert llmkit_server.responses.create(input="hi", **SHORT).output_text is not None


@slow
def test_asking_for_a_stored_response_is_a_clear_404(llmkit_server: openai.OpenAI) -> None:
    responses = llmkit_server.responses
    for ask in (responses.retrieve, responses.delete, responses.cancel, responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as info:
            ask("resp_123")
        assert "'resp_123': this server stores no responses" in info.value.body["message"]


@slow
def test_the_route_is_described_and_counted(llmkit_server: openai.OpenAI) -> None:
    status, schema = get_json(root_url(llmkit_server) + "/openapi.json")
    assert status == 200 and "post" in schema["paths"]["/v1/responses"]
    llmkit_server.responses.create(input="hi", **SHORT)
    assert scrape(llmkit_server)["llmkit_requests_total{endpoint=/v1/responses,status=200}"] >= 1


@slow
def test_a_client_that_hangs_up_mid_stream_frees_the_model(llmkit_server: openai.OpenAI) -> None:
    stream = llmkit_server.responses.create(
        input="Write a very long story about a castle.",
        stream=True,
        extra_body={"min_tokens": 2000},  # it would run for a minute unless cancelled
        **{**SHORT, "max_output_tokens": 2000},
    )
    for i, _ in enumerate(stream):
        if i == 6:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while get_json(root_url(llmkit_server) + "/health")[1]["busy"]:
        assert time.monotonic() < deadline, "the hung-up response kept its slot"
        time.sleep(0.05)
    assert chat(llmkit_server, "hi", max_tokens=4).choices
