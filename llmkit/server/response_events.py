"""The Responses API's answer, from the engine's deltas: output items (an assistant message, a
`function_call` item for each call) as one response object, or as the event sequence the openai
SDK parses (response.created, output_item.added, output_text.delta, ..., response.completed).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from llmkit.engine import Delta, Usage
from llmkit.server.bodies import ChatRequest, ResponsesRequest
from llmkit.server.events import COMPACT, CallEvents, named_event, new_id
from llmkit.tools.family import Family
from llmkit.tools.parse import Call, CallParser
from llmkit.tools.request import ToolRequest


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        # No explicit cache writes: llmkit's prefix reuse is implicit and promises no retention.
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


@dataclass
class Message:
    """The output's assistant message item: its text so far."""

    id: str
    index: int  # its output_index
    text: str = ""
    status: str | None = None  # set once its done events are sent

    def item(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [self.part()]
        return {
            "type": "message",
            "id": self.id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}


@dataclass
class FunctionCall:
    """A function_call item of the output: one call the model writes, its arguments so far."""

    id: str
    index: int
    call: Call  # the parser's: its name, and whether its arguments are complete
    call_id: str = field(default_factory=lambda: new_id("call", 24))  # as chat's
    arguments: str = ""
    status: str | None = None

    def item(self, status: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": self.id,
            "call_id": self.call_id,
            "name": self.call.name,
            "arguments": self.arguments,
            "status": status,
        }


Item = Message | FunctionCall


def echoed_tools(tools: list[Any] | None) -> list[dict[str, Any]]:
    """The request's function tools as the response names them (the SDK's FunctionTool)."""
    return [
        {
            "type": "function",
            "name": tool["name"],
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            # The Responses API's default; and the schema is enforced whatever `strict` says.
            "strict": True if tool.get("strict") is None else tool["strict"],
        }
        for tool in tools or []
    ]


class ResponsesShaper(CallEvents):
    """One response, built from the engine's deltas: as stream events, or as one object at the end.

    Without tools the output is one message, opened before the first token. With tools the text
    is parsed as chat's is (llmkit.tools.parse), and each item is opened as it appears: a message
    for the text, a function_call for each call."""

    prompt_param = "input"

    def __init__(
        self,
        body: ResponsesRequest,
        chat: ChatRequest,
        model: str,
        tools: ToolRequest | None = None,
        family: Family | None = None,
    ) -> None:
        super().__init__()
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.finish: str | None = None
        self.sequence = 0
        self.parser = (
            CallParser.of(family, tools) if tools is not None and family is not None else None
        )
        self.items: list[Item] = [] if self.parser else [Message(new_id("msg"), 0)]
        self._calls: dict[int, FunctionCall] = {}  # by the parser's index of the call
        self._echo = {
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {},
            "model": model,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "prompt_cache_key": body.prompt_cache_key,
            "safety_identifier": body.safety_identifier,
            "temperature": chat.temperature,
            "text": {"format": (body.text and body.text.format) or {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": echoed_tools(body.tools),
            "top_p": chat.top_p,
            "user": body.user,
        }
        self._delta_head: tuple[str, str] | None = None  # (message id, its events' fixed part)

    @property
    def status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    def item_status(self, item: Item, status: str) -> str:
        """An item's status in a response with this status: its own, once it is done."""
        if item.status is not None:
            return item.status
        if isinstance(item, FunctionCall):
            return "completed" if item.call.complete else "incomplete"
        return "incomplete" if status in ("incomplete", "failed") else status

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def body(self, usage: Usage) -> dict[str, Any]:
        """The finished response."""
        return self.response(self.status, usage)

    def response(
        self, status: str, usage: Usage | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The response object (the SDK's `Response`) as it stands with this status."""
        output = [] if status == "in_progress" else self.items
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "output": [item.item(self.item_status(item, status)) for item in output],
            "usage": responses_usage(usage) if usage is not None else None,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "top_logprobs": 0,
            "truncation": "disabled",
            **self._echo,
        }

    def add(self, delta: Delta) -> None:
        if self.parser is not None:
            self._parsed(delta)  # the same items as a stream's (its events unsent)
            return
        self._only().text += delta.text
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return named_event(kind, data)

    def _where(self, message: Message) -> dict[str, Any]:
        return {"item_id": message.id, "output_index": message.index, "content_index": 0}

    def opening(self) -> bytes:
        """The events before the first token: the response (and its message, without tools)."""
        started = self.response("in_progress")
        created = self.event("response.created", response=started)
        progress = self.event("response.in_progress", response=started)
        return b"".join([created, progress, *(self._added(item) for item in self.items)])

    def _added(self, item: Item) -> bytes:
        """The events that open an item: with no text or arguments yet."""
        added = self.event(
            "response.output_item.added", output_index=item.index, item=item.item("in_progress")
        )
        if isinstance(item, FunctionCall):
            return added
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return added + self.event("response.content_part.added", **self._where(item), part=empty)

    def _done(self, item: Item, status: str) -> bytes:
        """The events that close an item, with all its text or arguments."""
        item.status = status
        if isinstance(item, FunctionCall):
            where = {"item_id": item.id, "output_index": item.index}
            events = [
                self.event(
                    "response.function_call_arguments.done", **where, arguments=item.arguments
                )
            ]
        else:
            where = self._where(item)
            events = [
                self.event("response.output_text.done", **where, text=item.text, logprobs=[]),
                self.event("response.content_part.done", **where, part=item.part()),
            ]
        done = self.event(
            "response.output_item.done", output_index=item.index, item=item.item(status)
        )
        return b"".join([*events, done])

    def _close_open(self, status: str = "completed") -> bytes:
        """Close the item still open, if any (another follows, or the response ends)."""
        item = self.items[-1] if self.items else None
        if item is None or item.status is not None:
            return b""
        return self._done(item, self.item_status(item, status))

    def sse(self, delta: Delta) -> bytes:
        """The events for one delta (none for an empty one)."""
        if self.parser is not None:
            return self._parsed(delta)
        self.add(delta)
        return self._text_delta(self._only(), delta.text) if delta.text else b""

    def _only(self) -> Message:
        """The one message of an answer without tools."""
        message = self.items[0]
        assert isinstance(message, Message)
        return message

    def _text_delta(self, message: Message, text: str) -> bytes:
        # Sent for nearly every token: formatted without building and dumping dicts, as chat's
        # chunks are (on 2 cores, the server's per-token work is time taken from llama.cpp).
        if self._delta_head is None or self._delta_head[0] != message.id:
            fixed = json.dumps(
                {"type": "response.output_text.delta", **self._where(message), "logprobs": []},
                separators=COMPACT,
            )
            self._delta_head = message.id, "event: response.output_text.delta\ndata: " + fixed[:-1]
        sequence, self.sequence = self.sequence, self.sequence + 1
        tail = f',"sequence_number":{sequence},"delta":{json.dumps(text)}}}\n\n'
        return (self._delta_head[1] + tail).encode()

    # A tool request's parts (CallEvents): message items and function_call items --------------

    def _ended(self, delta: Delta) -> None:
        self.finish = delta.finish_reason

    def _answered(self) -> bool:
        return bool(self.items)

    def _call_opened(self, index: int) -> bytes:
        assert self.parser is not None
        out = self._close_open()
        call = FunctionCall(new_id("fc"), len(self.items), self.parser.calls[index])
        self.items.append(call)
        self._calls[index] = call
        return out + self._added(call)

    def _arguments(self, index: int, text: str) -> bytes:
        call = self._calls[index]
        call.arguments += text
        where = {"item_id": call.id, "output_index": call.index}
        return self.event("response.function_call_arguments.delta", **where, delta=text)

    def _text_grown(self, text: str) -> bytes | None:
        item = self.items[-1] if self.items else None
        if not isinstance(item, Message) or item.status is not None:
            return None
        item.text += text
        return self._text_delta(item, text)

    def _text_opened(self, text: str) -> bytes:
        out = self._close_open()
        message = Message(new_id("msg"), len(self.items), text)
        self.items.append(message)
        out += self._added(message)
        return out + (self._text_delta(message, text) if text else b"")

    def usage(self, usage: Usage) -> bytes:
        return b""  # in the closing event's response

    def closing(self, usage: Usage) -> bytes:
        """The events after the last token, ending in response.completed or response.incomplete."""
        status = self.status
        closed = self._close_open(status)
        return closed + self.event(f"response.{status}", response=self.response(status, usage))

    def failed(self, message: str, code: str | None, usage: Usage) -> bytes:
        error = {"code": "server_error", "message": message}
        return self.event("response.failed", response=self.response("failed", usage, error))
