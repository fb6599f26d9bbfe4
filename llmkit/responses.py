"""POST /v1/responses: OpenAI's Responses API, stateless, on the engine /v1/chat/completions uses.

A Responses request becomes a ChatRequest (`instructions` a system message first, `input` the
messages, `max_output_tokens` the token limit, `text.format` the response_format), so prompts,
sampling, grammars and the engine are exactly the chat route's; the answer is one assistant
message in the shapes the openai SDK parses, and a stream is the SDK's event sequence.

Nothing is stored. What needs a response kept on the server (`previous_response_id`,
`store: true`, `background`, `conversation`, item references) and what this server does not do
(tools, reasoning, images and files, logprobs) is a 400 naming the parameter, never ignored; so is
any field this route does not know.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import llama_cpp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
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
from llmkit.params import ChatRequest, choices_for


class StreamOptions(BaseModel):
    include_obfuscation: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # refused by name in response_format_for

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    """The body of POST /v1/responses: the fields this server honours or knowingly refuses."""

    # Unknown fields are kept so that chat_request can refuse each by name.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Unset, the chat route's defaults apply (as they do for the same model there).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    text: TextConfig | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted only with the values that mean "nothing stored, no tools": refused otherwise.
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Labels that change nothing about the answer: echoed back.
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # llmkit finds the longest cached prefix by itself
    # llmkit's own sampling options, as /v1/chat/completions takes them.
    seed: int | None = None
    stop: str | list[str] | None = None
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
    """The chat completion request that computes this response; a BadRequest for what can't be."""
    refuse_unsupported(body)
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages_for(body),
        "max_completion_tokens": body.max_output_tokens,
        "response_format": response_format_for(body.text),
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
    if body.tools:
        raise BadRequest("tools are not supported by this server yet", "tools")
    if body.tool_choice not in (None, "auto", "none"):
        raise BadRequest(
            "tool_choice needs tools, which this server does not support yet", "tool_choice"
        )
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


_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text")  # output_text: a previous answer passed back
_ITEM_HINTS = {
    "item_reference": f"item references need stored items: {_STATELESS}",
    "function_call": "tools are not supported by this server yet",
    "function_call_output": "tools are not supported by this server yet",
    "reasoning": "reasoning items are not supported by this server",
}


def messages_for(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages: instructions first, as a system message."""
    messages = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    if not body.input:
        raise BadRequest("input must be a string or a non-empty list of messages", "input")
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")  # {"role", "content"} alone is a message
        if kind != "message":
            reason = _ITEM_HINTS.get(kind, "this server takes message items only")
            raise BadRequest(f"{where} has type {kind!r}: {reason}", where)
        role = item.get("role")
        if role not in _ROLES:
            raise BadRequest(
                f"{where}.role must be one of {list(_ROLES)}, not {role!r}", f"{where}.role"
            )
        messages.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    return messages


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
    spec = text.format or {"type": "text"}
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


def choices(chat: ChatRequest, llama: llama_cpp.Llama) -> list[Choice]:
    """choices_for, with its errors naming this route's parameters instead of the chat route's."""
    try:
        return choices_for(chat, llama)[0]
    except BadRequest as exc:
        message, param = str(exc), exc.param or ""
        if param == "response_format":
            message, param = message.replace("response_format", "text.format", 1), "text.format"
        elif param.startswith(("messages", "prompt")):
            param = "input"
        raise BadRequest(message, param or None) from None


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


class Reply:
    """One response, built from the engine's deltas: as stream events, or as one object at the end."""

    def __init__(self, body: ResponsesRequest, chat: ChatRequest, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.text = ""
        self.finish: str | None = None
        self.sequence = 0
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
            "tool_choice": "none" if body.tool_choice == "none" else "auto",
            "top_p": chat.top_p,
            "user": body.user,
        }
        self._delta_head: str | None = None

    @property
    def status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    def message(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [self.part()]
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def body(
        self, status: str, usage: Usage | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The response object (the SDK's `Response`) as it stands with this status."""
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
            "output": [] if status == "in_progress" else [self.message(_item_status(status))],
            "usage": usage_dict(usage) if usage is not None else None,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,
            "background": False,
            "service_tier": "default",
            "tools": [],
            "top_logprobs": 0,
            "truncation": "disabled",
            **self._echo,
        }

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        if delta.finish_reason is not None:
            self.finish = delta.finish_reason

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=_COMPACT)}\n\n".encode()

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> bytes:
        """The events before the first token: the response, its message and its text part."""
        started = self.body("in_progress")
        return b"".join(
            [
                self.event("response.created", response=started),
                self.event("response.in_progress", response=started),
                self.event(
                    "response.output_item.added", output_index=0, item=self.message("in_progress")
                ),
                self.event(
                    "response.content_part.added",
                    **self._where(),
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                ),
            ]
        )

    def sse(self, delta: Delta) -> bytes:
        """The event for one delta (none for an empty one): the text added to the part."""
        self.add(delta)
        if not delta.text:
            return b""
        # Sent for nearly every token: formatted without building and dumping dicts, as api.py's
        # chat chunks are (on 2 cores, the server's per-token work is time taken from llama.cpp).
        if self._delta_head is None:
            fixed = json.dumps(
                {"type": "response.output_text.delta", **self._where(), "logprobs": []},
                separators=_COMPACT,
            )
            self._delta_head = "event: response.output_text.delta\ndata: " + fixed[:-1]
        sequence, self.sequence = self.sequence, self.sequence + 1
        tail = f',"sequence_number":{sequence},"delta":{json.dumps(delta.text)}}}\n\n'
        return (self._delta_head + tail).encode()

    def closing(self, usage: Usage) -> bytes:
        """The events after the last token, ending in response.completed or response.incomplete."""
        status = self.status
        return b"".join(
            [
                self.event(
                    "response.output_text.done", **self._where(), text=self.text, logprobs=[]
                ),
                self.event("response.content_part.done", **self._where(), part=self.part()),
                self.event("response.output_item.done", output_index=0, item=self.message(status)),
                self.event(f"response.{status}", response=self.body(status, usage)),
            ]
        )

    def failed(self, message: str, usage: Usage) -> bytes:
        error = {"code": "server_error", "message": message}
        return self.event("response.failed", response=self.body("failed", usage, error))


def _item_status(status: str) -> str:
    return "incomplete" if status == "failed" else status


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
    # Rendering the template and tokenizing: off the event loop, as for chat completions.
    found = await run_in_threadpool(choices, chat, api.llama)
    reply = Reply(body, chat, body.model or api.model_name)
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
