"""The Messages API's answer, from the engine's deltas: content blocks (text, and a `tool_use`
block for each call) as one message, or as the event sequence the Anthropic SDKs parse
(message_start, content_block_start, content_block_delta, content_block_stop, message_delta,
message_stop; a ping after the start).

Usage is counted as Anthropic counts it: `input_tokens` are the prompt tokens computed for this
request, `cache_read_input_tokens` those reused from the prompt cache (the two add up to the
prompt, what count_tokens says), and no cache is ever written on request
(`cache_creation_input_tokens` 0: llmkit's prefix reuse is implicit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmkit.engine import Delta, Usage
from llmkit.server.events import CallEvents, named_event, new_id
from llmkit.tools.family import Family
from llmkit.tools.parse import Call, CallParser


def messages_usage(usage: Usage) -> dict[str, Any]:
    """`usage` as the Messages API answers it."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


@dataclass
class Block:
    """A content block of the answer: text, or a call (its input JSON as written so far)."""

    index: int
    text: str = ""  # the text, or the call's input as JSON
    call: Call | None = None  # the parser's, for a tool_use block
    id: str = ""
    stopped: bool = False  # its content_block_stop is sent

    def start(self) -> dict[str, Any]:
        """The block as content_block_start opens it: empty."""
        if self.call is None:
            return {"type": "text", "text": ""}
        return {"type": "tool_use", "id": self.id, "name": self.call.name, "input": {}}

    def final(self) -> dict[str, Any] | None:
        """The block as the message holds it; None for a call cut before its input ended."""
        if self.call is None:
            return {"type": "text", "text": self.text}
        try:
            arguments = json.loads(self.call.arguments) if self.call.complete else None
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return None
        return {"type": "tool_use", "id": self.id, "name": self.call.name, "input": arguments}


class MessageShaper(CallEvents):
    """One message, built from the engine's deltas: as stream events, or as one body at the end.

    Without tools the content is one text block, opened before the first token. With tools the
    text is parsed as chat's is (llmkit.tools.parse), and each block is opened as it appears: a
    text block for the text, a tool_use block for each call."""

    prompt_param = "messages"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        stop_sequences: list[str],
        family: Family | None = None,
    ) -> None:
        super().__init__()
        self.id = new_id("msg", 24)
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stop_sequences = stop_sequences
        self.parser = CallParser(family) if family is not None else None
        self.blocks: list[Block] = [] if self.parser else [Block(0)]
        self.finish: str | None = None
        self.stop: str | None = None  # the stop sequence that ended the answer, if one did
        self._calls: dict[int, Block] = {}  # by the parser's index of the call
        self._delta_head: tuple[int, str] | None = None  # (block index, its events' fixed part)

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def stop_reason(self, usage: Usage) -> tuple[str, str | None]:
        """Why the answer ended (Anthropic's stop_reason), and the stop sequence it matched."""
        if self.finish == "length":
            if usage.completion_tokens >= self.max_tokens:
                return "max_tokens", None
            return "model_context_window_exceeded", None
        if self.stop is not None and self.stop in self.stop_sequences:
            return "stop_sequence", self.stop
        if any(block.final() is not None for block in self.blocks if block.call is not None):
            return "tool_use", None
        return "end_turn", None

    def message(self, usage: Usage | None) -> dict[str, Any]:
        """The message (the SDK's `Message`): whole with `usage`, empty at the stream's start."""
        if usage is None:
            content: list[dict[str, Any]] = []
            reason: tuple[str | None, str | None] = (None, None)
            counted = {
                "input_tokens": self.prompt_tokens,  # the cache's share is known at the end
                "output_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            }
        else:
            content = [b for b in (block.final() for block in self.blocks) if b is not None]
            reason = self.stop_reason(usage)
            counted = messages_usage(usage)
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason[0],
            "stop_sequence": reason[1],
            "usage": counted,
        }

    def body(self, usage: Usage) -> dict[str, Any]:
        return self.message(usage)

    def add(self, delta: Delta) -> None:
        if self.parser is not None:
            self._parsed(delta)  # the same blocks as a stream's (its events unsent)
            return
        self.blocks[0].text += delta.text
        self._ended(delta)

    def _ended(self, delta: Delta) -> None:
        if delta.finish_reason is not None:
            self.finish, self.stop = delta.finish_reason, delta.stop

    def event(self, kind: str, **fields: Any) -> bytes:
        return named_event(kind, {"type": kind, **fields})

    def opening(self) -> bytes:
        """The events before the first token: the message (and its text block, without tools),
        and a ping."""
        started = self.event("message_start", message=self.message(None))
        opened = b"".join(self._started(block) for block in self.blocks)
        return started + opened + self.event("ping")

    def _started(self, block: Block) -> bytes:
        return self.event("content_block_start", index=block.index, content_block=block.start())

    def _close_open(self) -> bytes:
        """Close the block still open, if any (another follows, or the message ends)."""
        block = self.blocks[-1] if self.blocks else None
        if block is None or block.stopped:
            return b""
        block.stopped = True
        return self.event("content_block_stop", index=block.index)

    def sse(self, delta: Delta) -> bytes:
        """The events for one delta (none for an empty one)."""
        if self.parser is not None:
            return self._parsed(delta)
        self.add(delta)
        return self._text_delta(self.blocks[0], delta.text) if delta.text else b""

    def _text_delta(self, block: Block, text: str) -> bytes:
        # Sent for nearly every token: formatted without building and dumping dicts, as chat's
        # chunks are (on 2 cores, the server's per-token work is time taken from llama.cpp).
        if self._delta_head is None or self._delta_head[0] != block.index:
            head = (
                'event: content_block_delta\ndata: {"type":"content_block_delta",'
                f'"index":{block.index},"delta":{{"type":"text_delta","text":'
            )
            self._delta_head = block.index, head
        return f"{self._delta_head[1]}{json.dumps(text)}}}}}\n\n".encode()

    # A tool request's parts (CallEvents): text blocks and tool_use blocks --------------------

    def _answered(self) -> bool:
        return bool(self.blocks)

    def _call_opened(self, index: int) -> bytes:
        assert self.parser is not None
        out = self._close_open()
        block = Block(len(self.blocks), call=self.parser.calls[index], id=new_id("toolu", 24))
        self.blocks.append(block)
        self._calls[index] = block
        return out + self._started(block)

    def _arguments(self, index: int, text: str) -> bytes:
        block = self._calls[index]
        block.text += text
        json_delta = {"type": "input_json_delta", "partial_json": text}
        return self.event("content_block_delta", index=block.index, delta=json_delta)

    def _text_grown(self, text: str) -> bytes | None:
        block = self.blocks[-1] if self.blocks else None
        if block is None or block.call is not None or block.stopped:
            return None
        block.text += text
        return self._text_delta(block, text)

    def _text_opened(self, text: str) -> bytes:
        out = self._close_open()
        block = Block(len(self.blocks), text)
        self.blocks.append(block)
        out += self._started(block)
        return out + (self._text_delta(block, text) if text else b"")

    def usage(self, usage: Usage) -> bytes:
        return b""  # in message_delta

    def closing(self, usage: Usage) -> bytes:
        """The events after the last token: the open block closed, message_delta (why it
        stopped, and the usage), message_stop."""
        reason, sequence = self.stop_reason(usage)
        ended = self.event(
            "message_delta",
            delta={"stop_reason": reason, "stop_sequence": sequence},
            usage=messages_usage(usage),
        )
        return self._close_open() + ended + self.event("message_stop")

    def failed(self, message: str, code: str | None, usage: Usage) -> bytes:
        # As Anthropic ends a stream that fails: an error event (the SDKs raise it).
        kind = "overloaded_error" if code == "shutting_down" else "api_error"
        return self.event("error", error={"type": kind, "message": message})
