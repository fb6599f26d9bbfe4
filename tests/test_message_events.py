"""The Messages API's shaper (llmkit.server.message_events): engine deltas as Anthropic's message
and event stream, each event checked with the anthropic SDK's own types (no model)."""

from __future__ import annotations

import functools
import json
from typing import Any

from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from llmkit.engine import Delta, Usage
from llmkit.server.message_events import MessageShaper
from llmkit.tools.family import GENERIC, HERMES
from tests.helpers import MESSAGE_EVENTS, collapsed, sse_events


@functools.cache
def stream_event() -> TypeAdapter[Any]:
    return TypeAdapter(RawMessageStreamEvent)


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
    assert collapsed([e["type"] for e in events]) == MESSAGE_EVENTS
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
