"""POST /v1/responses: OpenAI's Responses API, stateless, on the engine /v1/chat/completions uses.

A Responses request becomes a ChatRequest (`instructions` a system message first, `input` the
messages, `max_output_tokens` the token limit, `text.format` the response_format, the flat
function `tools` chat's nested ones), so prompts, sampling, grammars, tool calling (llmkit.tools:
the same validation, rendering, grammar and parser) and the engine are exactly the chat route's.
The answer is output items in the shapes the openai SDK parses (an assistant message, and a
`function_call` item for each call), and a stream is the SDK's event sequence.

Nothing is stored. What needs a response kept on the server (`previous_response_id`,
`store: true`, `background`, `conversation`, item references) and what this server does not do
(hosted tools, reasoning, images and files, logprobs) is a 400 naming the parameter, never
ignored; so is any field this route does not know.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import llama_cpp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ConfigDict, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from llmkit.api import (
    Api,
    LoopChannel,
    _busy,
    _Unfinished,
    _until_disconnect,
    events,
    openai_error,
)
from llmkit.engine import (
    CacheFull,
    Choice,
    Delta,
    Job,
    PromptTooLong,
    QueueFull,
    ShuttingDown,
    Usage,
)
from llmkit.errors import BadRequest
from llmkit.params import Body, ChatRequest, Stop, choices_for, tools_of
from llmkit.tools.family import Family
from llmkit.tools.parse import Call, CallParser
from llmkit.tools.render import ChatTemplate, tool_family
from llmkit.tools.request import ToolRequest


def only(*values: Any) -> Any:
    """A field's schema that admits only `values` (and null): what this server can honour of a
    field it otherwise refuses by name, with a reason, in refuse_unsupported."""
    return WithJsonSchema({"enum": [*values, None]})


# Unknown fields are kept so that each is refused by name (with a hint), in code; the schema
# says they are refused.
_REFUSED_BY_NAME = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

# The input items messages_for takes: messages of text, and function calls with their outputs.
_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text")  # output_text: a previous answer passed back
_TEXT = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "text"],
                "properties": {"type": {"enum": list(_TEXT_PARTS)}, "text": {"type": "string"}},
            },
        },
    ]
}
_ID = {"type": "string", "minLength": 1}
INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "type": {"const": "message"},
                            "role": {"enum": list(_ROLES)},
                            "content": _TEXT,
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "call_id", "name", "arguments"],
                        "properties": {
                            "type": {"const": "function_call"},
                            "call_id": _ID,
                            "name": _ID,
                            "arguments": {"type": "string"},
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "call_id", "output"],
                        "properties": {
                            "type": {"const": "function_call_output"},
                            "call_id": _ID,
                            "output": _TEXT,
                        },
                    },
                ]
            },
        },
    ]
}
# A flat function tool, as chat_tools takes it (llmkit.tools.request checks the rest).
TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "name"],
        "properties": {
            "type": {"const": "function"},
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "description": {"type": ["string", "null"]},
            "parameters": {
                "type": ["object", "null"],  # null: a tool without parameters
                "properties": {"type": {"const": "object"}},
            },
            "strict": {"type": ["boolean", "null"]},
        },
        "additionalProperties": {"type": "null"},  # any other key refused unless null
    },
}
_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "name"],
            "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
        },
        {"type": "null"},
    ]
}


class StreamOptions(Body):
    include_obfuscation: Annotated[bool | None, only(False)] = None


# text.format as response_format_for reads it.
_TEXT_FORMAT = {
    "anyOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "schema"],
            "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}},
        },
    ]
}


class TextConfig(Body):
    model_config = _REFUSED_BY_NAME  # refused by name in response_format_for

    format: Annotated[dict[str, Any] | None, WithJsonSchema(_TEXT_FORMAT)] = None
    verbosity: Annotated[str | None, only("medium")] = None


class ResponsesRequest(Body):
    """The body of POST /v1/responses: the fields this server honours or knowingly refuses."""

    # Between the fields, what JSON Schema can say: a tool_choice but none needs tools offered
    # (that it names one of them is checked in code only).
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "additionalProperties": False,
            "if": {
                "required": ["tool_choice"],
                "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}},
            },
            "then": {
                "required": ["tools"],
                "properties": {"tools": {"type": "array", "minItems": 1}},
            },
        },
    )

    model: str | None = None
    input: Annotated[str | list[dict[str, Any]], WithJsonSchema(INPUT_SCHEMA)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Unset, the chat route's defaults apply (as they do for the same model there).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    text: TextConfig | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Function tools, as llmkit.tools enforces them for chat completions.
    tools: Annotated[
        list[Any] | None, WithJsonSchema({"anyOf": [TOOLS_SCHEMA, {"type": "null"}]})
    ] = None
    tool_choice: Annotated[str | dict[str, Any] | None, WithJsonSchema(_TOOL_CHOICE)] = None
    parallel_tool_calls: bool | None = None
    # Accepted only with the values that mean "nothing stored": refused otherwise.
    store: Annotated[bool | None, only(False)] = None
    background: Annotated[bool | None, only(False)] = None
    previous_response_id: Annotated[str | None, only("")] = None
    conversation: Annotated[Any, WithJsonSchema({"type": "null"})] = None
    include: Annotated[
        list[str] | None,
        WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}),
    ] = None
    truncation: Annotated[Literal["auto", "disabled"] | None, only("disabled")] = None
    # Labels that change nothing about the answer: echoed back.
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # llmkit finds the longest cached prefix by itself
    # llmkit's own sampling options, as /v1/chat/completions takes them.
    seed: int | None = None
    stop: Stop | None = None
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, ge=0.0)
    min_tokens: int | None = Field(default=None, ge=0)


# Why a field that would need state or a feature this server lacks is refused.
_STATELESS = "this server stores no responses; send the whole conversation in `input`"
_HINTS = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
}
_EXTENSIONS = ("seed", "stop", "top_k", "min_p", "repeat_penalty", "min_tokens")


def chat_request(body: ResponsesRequest) -> ChatRequest:
    """The chat completion request that computes this response; a BadRequest for what can't be
    (but for its tools, which tools_for validates)."""
    refuse_unsupported(body)
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages_for(body),
        "max_completion_tokens": body.max_output_tokens,
        "response_format": response_format_for(body.text),
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    for name in ("temperature", "top_p", *_EXTENSIONS):
        if getattr(body, name) is not None:
            fields[name] = getattr(body, name)
    return ChatRequest(**fields)


def refuse_unsupported(body: ResponsesRequest) -> None:
    """A 400 for every field set to something this server would otherwise have to ignore."""
    if body.previous_response_id:
        raise BadRequest(
            f"previous_response_id is not supported: {_STATELESS}", "previous_response_id"
        )
    if body.store:
        raise BadRequest(
            "store=true is not supported: this server stores no responses (leave store unset or false)",
            "store",
        )
    if body.background:
        raise BadRequest(
            "background responses are not supported: this server stores no responses", "background"
        )
    if body.conversation is not None:
        raise BadRequest(f"conversation is not supported: {_STATELESS}", "conversation")
    if body.include:
        raise BadRequest(
            f"include: this server has nothing more to include ({body.include[0]!r})", "include"
        )
    if body.truncation == "auto":
        raise BadRequest(
            "truncation=auto is not supported: an input longer than the context is a 400",
            "truncation",
        )
    if body.stream_options and body.stream_options.include_obfuscation:
        raise BadRequest(
            "stream_options.include_obfuscation is not supported (leave it unset or false)",
            "stream_options.include_obfuscation",
        )
    for name in body.model_extra or {}:
        hint = f" (use {_HINTS[name]})" if name in _HINTS else ""
        raise BadRequest(f"{name} is not supported by this server's /v1/responses{hint}", name)


# The Responses API's function tool, flat: chat's has name, description and parameters nested
# under `function`. `strict` or not, the grammar enforces the schema: never looser than asked.
_FUNCTION_KEYS = ("type", "name", "description", "parameters", "strict")


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """The function tools in chat's shape, for llmkit.tools to validate (None: none offered).

    An empty list offers nothing, as the OpenAI API takes it."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object", where)
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(
                f"{where} has type {kind!r}: this server calls function tools only "
                "(no hosted tools: web_search, file_search, computer, mcp, …)",
                f"{where}.type",
            )
        if "function" in tool:
            raise BadRequest(
                f"{where}.function: the Responses API's function tools are flat "
                "({type: function, name, description, parameters}), not chat's",
                f"{where}.function",
            )
        for key, value in tool.items():
            if key not in _FUNCTION_KEYS and value is not None:
                raise BadRequest(f"{where}.{key} is not supported by this server", f"{where}.{key}")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise BadRequest(f"{where}.strict must be a boolean", f"{where}.strict")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        if function.get("parameters") is None:  # the SDK's FunctionTool: no parameters
            function.pop("parameters", None)
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    """`tool_choice` in chat's shape: the strings as they are, a named function nested."""
    if not isinstance(choice, dict):
        return choice  # "auto", "none", "required" or None; llmkit.tools refuses the rest
    kind = choice.get("type")
    if kind == "allowed_tools":
        raise BadRequest(
            "tool_choice allowed_tools is not supported: offer only those tools in `tools`",
            "tool_choice",
        )
    if kind != "function":
        raise BadRequest(
            f"tool_choice has type {kind!r}: this server calls function tools only", "tool_choice"
        )
    name = choice.get("name")
    if not isinstance(name, str):
        raise BadRequest("tool_choice must name a function: {type: function, name}", "tool_choice")
    return {"type": "function", "function": {"name": name}}


def tools_for(chat: ChatRequest) -> ToolRequest | None:
    """The tool request llmkit.tools makes of the chat request, its errors in this route's names."""
    try:
        return tools_of(chat)
    except BadRequest as exc:
        raise _renamed(exc) from None


_ITEM_HINTS = {
    "item_reference": f"item references need stored items: {_STATELESS}",
    "reasoning": "reasoning items are not supported by this server",
}


def messages_for(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages: instructions first, as a system message;
    calls passed back as an assistant message's tool_calls, their outputs as role tool."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    if not body.input:
        raise BadRequest("input must be a string or a non-empty list of messages", "input")
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")  # {"role", "content"} alone is a message
        if kind == "function_call":
            call = _call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the same turn: text, calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            continue
        if kind != "message":
            reason = _ITEM_HINTS.get(str(kind), "this server takes message and function call items")
            raise BadRequest(f"{where} has type {kind!r}: {reason}", where)
        role = item.get("role")
        if role not in _ROLES:
            raise BadRequest(
                f"{where}.role must be one of {list(_ROLES)}, not {role!r}", f"{where}.role"
            )
        messages.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    return messages


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    return value


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A function_call item passed back, as chat's assistant tool call."""
    function = {"name": _string(item, "name", where), "arguments": item.get("arguments")}
    if not isinstance(function["arguments"], str):
        raise BadRequest(f"{where}.arguments must be a JSON string", f"{where}.arguments")
    return {"id": _string(item, "call_id", where), "type": "function", "function": function}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of input_text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind not in _TEXT_PARTS:
            raise BadRequest(
                f"{where}[{j}] has type {kind!r}: this model takes text only", f"{where}[{j}]"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
        texts.append(text)
    return "".join(texts)


def response_format_for(text: TextConfig | None) -> dict[str, Any] | None:
    """`text.format` as the chat route's response_format (None for free text)."""
    if text is None:
        return None
    for name in text.model_extra or {}:
        raise BadRequest(f"text.{name} is not supported by this server", f"text.{name}")
    if text.verbosity not in (None, "medium"):  # medium is the default: no instruction at all
        raise BadRequest("text.verbosity is not supported by this server", "text.verbosity")
    spec = {"type": "text"} if text.format is None else text.format  # {} has no type: refused
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest(
                "text.format.schema must be a JSON schema object", "text.format.schema"
            )
        # strict or not, the schema is enforced by the grammar: never looser than asked.
        named = {"name": spec.get("name"), "schema": schema, "strict": spec.get("strict")}
        return {"type": "json_schema", "json_schema": named}
    raise BadRequest(
        f"text.format.type must be text, json_object or json_schema, not {kind!r}",
        "text.format.type",
    )


def choices(
    chat: ChatRequest,
    llama: llama_cpp.Llama,
    template: ChatTemplate | None = None,
    tools: ToolRequest | None = None,
) -> list[Choice]:
    """choices_for, with its errors naming this route's parameters instead of the chat route's."""
    try:
        return choices_for(chat, llama, template, tools)[0]
    except BadRequest as exc:
        raise _renamed(exc) from None


_NESTED = re.compile(r"(tools\[\d+\])\.function\b")  # chat's tools[i].function.name: tools[i].name


def _renamed(exc: BadRequest) -> BadRequest:
    """A chat route's BadRequest as this route names the parameters."""
    message, param = str(exc), exc.param or ""
    if param == "response_format":
        message, param = message.replace("response_format", "text.format", 1), "text.format"
    elif param.startswith(("messages", "prompt")):
        param = "input"
    elif param.startswith("tools"):
        message, param = _NESTED.sub(r"\1", message), _NESTED.sub(r"\1", param)
    return BadRequest(message, param or None)


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        # No explicit cache writes: llmkit's prefix reuse is implicit and promises no retention.
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


_COMPACT = (",", ":")  # JSON separators for the stream's events


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


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
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")  # as chat's
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


class Reply:
    """One response, built from the engine's deltas: as stream events, or as one object at the end.

    Without tools the output is one message, opened before the first token. With tools the text
    is parsed as chat's is (llmkit.tools.parse), and each item is opened as it appears: a message
    for the text, a function_call for each call."""

    def __init__(
        self,
        body: ResponsesRequest,
        chat: ChatRequest,
        model: str,
        tools: ToolRequest | None = None,
        family: Family | None = None,
    ) -> None:
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.finish: str | None = None
        self.sequence = 0
        self.parser = CallParser(family) if tools is not None and family is not None else None
        self.items: list[Item] = [] if self.parser else [Message(_new_id("msg"), 0)]
        self._calls: dict[int, FunctionCall] = {}  # by the parser's index of the call
        self._pending = ""  # whitespace before any item: a message only if no call follows
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

    def body(
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
            "usage": usage_dict(usage) if usage is not None else None,
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
        return f"event: {kind}\ndata: {json.dumps(data, separators=_COMPACT)}\n\n".encode()

    def _where(self, message: Message) -> dict[str, Any]:
        return {"item_id": message.id, "output_index": message.index, "content_index": 0}

    def opening(self) -> bytes:
        """The events before the first token: the response (and its message, without tools)."""
        started = self.body("in_progress")
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
        # Sent for nearly every token: formatted without building and dumping dicts, as api.py's
        # chat chunks are (on 2 cores, the server's per-token work is time taken from llama.cpp).
        if self._delta_head is None or self._delta_head[0] != message.id:
            fixed = json.dumps(
                {"type": "response.output_text.delta", **self._where(message), "logprobs": []},
                separators=_COMPACT,
            )
            self._delta_head = message.id, "event: response.output_text.delta\ndata: " + fixed[:-1]
        sequence, self.sequence = self.sequence, self.sequence + 1
        tail = f',"sequence_number":{sequence},"delta":{json.dumps(text)}}}\n\n'
        return (self._delta_head[1] + tail).encode()

    def _parsed(self, delta: Delta) -> bytes:
        """A tool request's delta, parsed as chat's are: text, a call's start, its arguments."""
        assert self.parser is not None
        events = self.parser.feed(delta.text)
        if delta.finish_reason is not None:
            events += self.parser.finish()
            self.finish = delta.finish_reason
        out = []
        for e in events:
            if e.kind == "content":
                out.append(self._content(e.text))
            elif e.kind == "call":
                out.append(self._close_open())
                self._pending = ""
                call = FunctionCall(_new_id("fc"), len(self.items), self.parser.calls[e.index])
                self.items.append(call)
                self._calls[e.index] = call
                out.append(self._added(call))
            else:
                call = self._calls[e.index]
                call.arguments += e.text
                where = {"item_id": call.id, "output_index": call.index}
                out.append(
                    self.event("response.function_call_arguments.delta", **where, delta=e.text)
                )
        if delta.finish_reason is not None and not self.items:  # no call: the answer is text
            out.append(self._message(self._pending))
        return b"".join(out)

    def _content(self, text: str) -> bytes:
        item = self.items[-1] if self.items else None
        if isinstance(item, Message) and item.status is None:
            item.text += text
            return self._text_delta(item, text)
        self._pending += text
        if not self._pending.strip():  # held back: it may be only what precedes a call
            return b""
        return self._message(self._pending)

    def _message(self, text: str) -> bytes:
        """Open a message item with this text."""
        out = self._close_open()
        message = Message(_new_id("msg"), len(self.items), text)
        self.items.append(message)
        self._pending = ""
        out += self._added(message)
        return out + (self._text_delta(message, text) if text else b"")

    def closing(self, usage: Usage) -> bytes:
        """The events after the last token, ending in response.completed or response.incomplete."""
        status = self.status
        closed = self._close_open(status)
        return closed + self.event(f"response.{status}", response=self.body(status, usage))

    def failed(self, message: str, usage: Usage) -> bytes:
        error = {"code": "server_error", "message": message}
        return self.event("response.failed", response=self.body("failed", usage, error))


def add_routes(router: APIRouter, api: Api) -> None:
    """Put POST /responses on the /v1 router, and a clear 404 where a stored response is asked for
    (retrieve, delete, cancel, input_items)."""

    async def create(request: Request, body: ResponsesRequest) -> Any:
        return await respond(api, request, body)

    async def stored(response_id: str) -> Any:
        return openai_error(
            404,
            f"no response {response_id!r}: this server stores no responses",
            code="response_not_found",
        )

    async def stored_part(response_id: str, part: str) -> Any:  # cancel, input_items
        return await stored(response_id)

    router.add_api_route("/responses", create, methods=["POST"])
    router.add_api_route("/responses/{response_id}", stored, methods=["GET", "DELETE"])
    router.add_api_route(
        "/responses/{response_id}/{part:path}", stored_part, methods=["GET", "POST"]
    )


async def respond(api: Api, request: Request, body: ResponsesRequest) -> Any:
    """Run one Responses request on the engine, as Api._generate runs a chat completion."""
    chat = chat_request(body)
    tools = tools_for(chat)
    # Rendering the template and tokenizing: off the event loop, as for chat completions.
    found = await run_in_threadpool(choices, chat, api.llama, api.template, tools)
    family = tool_family(api.template) if tools else None
    reply = Reply(body, chat, body.model or api.model_name, tools, family)
    try:
        job = api.engine.submit(found, LoopChannel(asyncio.get_running_loop()))
    except QueueFull as exc:
        return _busy(f"server busy: {exc}; retry shortly", "queue_full")
    except ShuttingDown as exc:
        return _busy(str(exc), "shutting_down")
    except PromptTooLong as exc:
        raise BadRequest(str(exc), param="input") from None
    stream = events(job)
    try:
        if not body.stream:
            return JSONResponse(await _until_disconnect(request, _collect(job, reply, stream)))
        # The first event (after the queue and the prompt) before the status line: a request
        # that fails before its first token gets a proper status code, not a broken stream.
        first = await _until_disconnect(request, anext(stream))
    except (StopAsyncIteration, _Unfinished):
        return _busy("the server is shutting down", "shutting_down")
    except CacheFull as exc:
        return _busy(str(exc), "kv_cache_full")
    except BaseException:
        job.cancel()
        raise
    return StreamingResponse(
        _stream(job, reply, first, stream),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(job: Job, reply: Reply, stream: AsyncIterator[Any]) -> dict[str, Any]:
    usage = job.usage
    async for item in stream:
        if isinstance(item, Delta):
            reply.add(item)
        else:
            usage = item
    if reply.finish is None:
        raise _Unfinished()
    return reply.body(reply.status, usage)


async def _stream(
    job: Job, reply: Reply, first: Any, stream: AsyncIterator[Any]
) -> AsyncIterator[bytes]:
    usage = job.usage
    try:
        yield reply.opening()
        item = first
        while True:
            if isinstance(item, Delta):
                if chunk := reply.sse(item):
                    yield chunk
            else:
                usage = item
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                break
        if reply.finish is None:  # cut by shutdown after the grace period
            yield reply.failed("the server shut down before this response finished", usage)
            return
        yield reply.closing(usage)
    except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band
        yield reply.failed(str(exc), usage)
    finally:
        job.cancel()  # a client that went away frees its slot within a step
