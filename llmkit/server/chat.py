"""POST /v1/chat/completions and /v1/completions: a body, its choices, and a shaper each.

Three shapers turn the engine's deltas into OpenAI's chunks or body: a chat answer, a chat
answer with tools (the text parsed into content and calls as it comes), and a text completion.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request

from llmkit.engine import Choice, Delta, Usage
from llmkit.logprobs import TokenLogprob
from llmkit.server.bodies import ChatRequest, CompletionRequest
from llmkit.server.choices import choices_for, tools_of
from llmkit.server.errors import error_event
from llmkit.server.load import Served
from llmkit.server.registry import registry_of
from llmkit.server.respond import respond
from llmkit.tools.family import Family
from llmkit.tools.parse import CallParser, Event, parse
from llmkit.tools.request import ToolRequest

Piece = Callable[[int], bytes]  # a token's bytes (the engine's piece), for logprobs


async def chat(request: Request, body: ChatRequest) -> Any:
    registry = registry_of(request)
    served = await registry.acquire(request, body.model, body.keep_alive)
    # Compiling the tools' schemas, rendering the template and tokenizing take time in proportion
    # to the request: off the event loop, so that the other streams' tokens keep flowing.
    tools, choices = await served.work(chat_choices, body, served)
    model = registry.reply_name(body.model, served)
    shaper: ChatShaper
    if tools is not None:
        shaper = ToolCallShaper(model, len(choices), _usage_asked(body), tools, served.family)
    else:
        piece = served.engine.piece if any(c.params.logprobs is not None for c in choices) else None
        shaper = ChatShaper(model, len(choices), _usage_asked(body), piece)
    return await respond(request, served, choices, shaper, body.stream)


def chat_choices(body: ChatRequest, served: Served) -> tuple[ToolRequest | None, list[Choice]]:
    """The request's tools (validated, their schemas compiled) and its choices."""
    tools = tools_of(body)
    return tools, choices_for(body, served, tools)[0]


async def completions(request: Request, body: CompletionRequest) -> Any:
    registry = registry_of(request)
    served = await registry.acquire(request, body.model, body.keep_alive)
    choices, echo = await served.work(choices_for, body, served)
    piece = served.engine.piece if any(c.params.logprobs is not None for c in choices) else None
    shaper = CompletionShaper(
        registry.reply_name(body.model, served), echo, _usage_asked(body), piece
    )
    return await respond(request, served, choices, shaper, body.stream)


def _usage_asked(body: ChatRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def chat_usage(usage: Usage) -> dict[str, Any]:
    """`usage` as chat completions and completions answer it."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class _Chunks:
    """What chat and completion answers share: the envelope of every chunk and of the body, the
    choices' texts and finish reasons, the usage chunk and the end of the stream."""

    object = ""  # the body's `object`
    chunk_object = ""  # each chunk's
    id_prefix = ""

    def __init__(self, model: str, n: int, include_usage: bool, piece: Piece | None) -> None:
        self.model = model
        self.include_usage = include_usage
        self.piece = piece  # set when the request asks for logprobs
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.texts = [""] * n
        self.finish: list[str | None] = [None] * n
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]  # for the body
        self.started = [False] * n
        self._head: str | None = None

    @property
    def finished(self) -> bool:
        return None not in self.finish

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def text_event(self, i: int, text: str) -> bytes:
        # The event sent for nearly every token, formatted without building and dumping dicts:
        # on 2 cores, the server's per-token work is time taken from llama.cpp.
        if self._head is None:
            head = json.dumps(self.chunk([]), separators=(",", ":"))
            self._head = "data: " + head[: head.rindex('"choices":')] + '"choices":[{'
        return (self._head + self.text_tail(i, json.dumps(text))).encode()

    def text_tail(self, i: int, text_json: str) -> str:
        raise NotImplementedError

    def entries(self, delta: Delta) -> list[TokenLogprob] | None:
        """The delta's logprobs, the prompt's first (echo); None when the request asks for none."""
        if self.piece is None:
            return None
        return (delta.prompt_logprobs or []) + (delta.logprobs or [])

    def token(self, token: int) -> tuple[str, bytes]:
        assert self.piece is not None
        raw = self.piece(token)
        return raw.decode(errors="replace"), raw

    def add(self, delta: Delta) -> None:
        i = delta.index
        self.started[i] = True
        self.texts[i] += delta.text
        self.logprobs[i] += self.entries(delta) or []
        if delta.finish_reason is not None:
            self.finish[i] = delta.finish_reason

    def opening(self) -> bytes:
        return b""

    def usage(self, usage: Usage) -> bytes:
        return _sse(self.chunk([], usage=chat_usage(usage))) if self.include_usage else b""

    def closing(self, usage: Usage) -> bytes:
        return b"data: [DONE]\n\n"

    def failed(self, message: str, code: str | None, usage: Usage) -> bytes:
        return error_event(message, code)

    def envelope(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": chat_usage(usage),
        }


class ChatShaper(_Chunks):
    """A chat completion: `delta`s in the chunks, a `message` in the body."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def choice_chunk(
        self,
        i: int,
        delta: dict[str, Any],
        finish: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _sse(self.chunk([choice]))

    def text_tail(self, i: int, text_json: str) -> str:
        return f'"index":{i},"delta":{{"content":{text_json}}},"logprobs":null,"finish_reason":null}}]}}\n\n'

    def sse(self, delta: Delta) -> bytes:
        i, text = delta.index, delta.text
        out = []
        if not self.started[i]:
            self.started[i] = True
            out.append(self.choice_chunk(i, {"role": "assistant", "content": ""}, None))
        entries = self.entries(delta)
        if text and entries is None:
            out.append(self.text_event(i, text))
        elif text or entries:
            logprobs = self.logprobs_object(entries or [])
            out.append(self.choice_chunk(i, {"content": text}, None, logprobs))
        if delta.finish_reason is not None:
            self.finish[i] = delta.finish_reason
            out.append(self.choice_chunk(i, {}, delta.finish_reason))
        return b"".join(out)

    def logprobs_object(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """`choices[].logprobs` as chat answers it: a list of tokens with their alternatives."""
        content = []
        for entry in entries:
            text, raw = self.token(entry.token)
            top = []
            for token, logprob in entry.top:
                alt_text, alt_raw = self.token(token)
                top.append({"token": alt_text, "logprob": logprob, "bytes": list(alt_raw)})
            content.append(
                {"token": text, "logprob": entry.logprob, "bytes": list(raw), "top_logprobs": top}
            )
        return {"content": content, "refusal": None}

    def message(self, i: int) -> tuple[dict[str, Any], str | None]:
        """Choice i's message and finish reason, for the body."""
        return {"role": "assistant", "content": self.texts[i]}, self.finish[i]

    def body(self, usage: Usage) -> dict[str, Any]:
        choices = []
        for i in range(len(self.texts)):
            logprobs = None if self.piece is None else self.logprobs_object(self.logprobs[i])
            message, finish = self.message(i)
            choices.append(
                {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
            )
        return self.envelope(choices, usage)


class ToolCallShaper(ChatShaper):
    """A chat completion with tools: each choice's text parsed into content and calls as it
    comes, answered as `tool_calls` (or a legacy `function_call`)."""

    def __init__(
        self, model: str, n: int, include_usage: bool, tools: ToolRequest, family: Family
    ) -> None:
        super().__init__(model, n, include_usage, None)  # logprobs are refused beside tools
        self.family = family
        self.legacy = tools.legacy
        self.tools = tools
        self.parsers = [CallParser.of(family, tools) for _ in range(n)]
        self.call_ids: list[list[str]] = [[] for _ in range(n)]

    def call_id(self, i: int, k: int) -> str:
        while len(self.call_ids[i]) <= k:
            self.call_ids[i].append(f"call_{uuid.uuid4().hex[:24]}")
        return self.call_ids[i][k]

    def finish_reason(self, reason: str, calls: int) -> str:
        if calls and reason == "stop":
            return "function_call" if self.legacy else "tool_calls"
        return reason

    def deltas(self, i: int, events: list[Event]) -> list[dict[str, Any]]:
        """The chunks' deltas for parsed events: content, a call's start, its arguments."""
        out: list[dict[str, Any]] = []
        for e in events:
            if e.kind == "content":
                out.append({"content": e.text})
            elif self.legacy:
                key = "name" if e.kind == "call" else "arguments"
                function = (
                    {key: e.text} if e.kind == "arguments" else {key: e.text, "arguments": ""}
                )
                out.append({"function_call": function})
            elif e.kind == "call":
                call = {
                    "index": e.index,
                    "id": self.call_id(i, e.index),
                    "type": "function",
                    "function": {"name": e.text, "arguments": ""},
                }
                out.append({"tool_calls": [call]})
            else:
                out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
        return out

    def sse(self, delta: Delta) -> bytes:
        i = delta.index
        out = []
        if not self.started[i]:
            self.started[i] = True
            out.append(self.choice_chunk(i, {"role": "assistant", "content": None}, None))
        parser = self.parsers[i]
        events = parser.feed(delta.text)
        if delta.finish_reason is not None:
            events += parser.finish()
        for d in self.deltas(i, events):
            out.append(self.choice_chunk(i, d, None))
        if delta.finish_reason is not None:
            reason = self.finish_reason(delta.finish_reason, len(parser.calls))
            self.finish[i] = reason
            out.append(self.choice_chunk(i, {}, reason))
        return b"".join(out)

    def message(self, i: int) -> tuple[dict[str, Any], str | None]:
        finish = self.finish[i]
        if finish is None:
            return super().message(i)
        parsed = parse(self.family, self.texts[i], self.tools)
        calls = [c for c in parsed.calls if c.complete]
        content = parsed.content if parsed.content or not calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls and self.legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        elif calls:
            message["tool_calls"] = [
                {
                    "id": self.call_id(i, k),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for k, c in enumerate(calls)
            ]
        return message, self.finish_reason(finish, len(calls))


class CompletionShaper(_Chunks):
    """A text completion: `text` in the chunks and the body, the prompt first with `echo`, and
    the legacy logprobs (tokens, their logprobs, alternatives and offsets)."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl"
    prompt_param = "prompt"

    def __init__(
        self, model: str, echo: list[str], include_usage: bool, piece: Piece | None
    ) -> None:
        super().__init__(model, len(echo), include_usage, piece)
        self.echo = echo
        self.offsets = [0] * len(echo)  # text_offset: where the next token starts

    def text_tail(self, i: int, text_json: str) -> str:
        return f'"text":{text_json},"index":{i},"logprobs":null,"finish_reason":null}}]}}\n\n'

    def choice_chunk(
        self, i: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
        return _sse(self.chunk([choice]))

    def add(self, delta: Delta) -> None:
        if not self.started[delta.index]:
            self.texts[delta.index] = self.echo[delta.index]
        super().add(delta)

    def sse(self, delta: Delta) -> bytes:
        i, text = delta.index, delta.text
        out = []
        if not self.started[i]:
            self.started[i] = True
            text = self.echo[i] + text
        entries = self.entries(delta)
        if text and entries is None:
            out.append(self.text_event(i, text))
        elif text or entries:
            out.append(self.choice_chunk(i, text, None, self.logprobs_object(i, entries or [])))
        if delta.finish_reason is not None:
            self.finish[i] = delta.finish_reason
            out.append(self.choice_chunk(i, "", delta.finish_reason))
        return b"".join(out)

    def logprobs_object(self, i: int, entries: list[TokenLogprob]) -> dict[str, Any]:
        """`choices[].logprobs` as legacy completions answer it."""
        tokens, offsets = [], []
        for entry in entries:
            text = self.token(entry.token)[0]
            tokens.append(text)
            offsets.append(self.offsets[i])
            self.offsets[i] += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                None if e.logprob is None else {self.token(t)[0]: lp for t, lp in e.top}
                for e in entries
            ],
            "text_offset": offsets,
        }

    def body(self, usage: Usage) -> dict[str, Any]:
        choices = []
        for i, (text, finish) in enumerate(zip(self.texts, self.finish, strict=True)):
            logprobs = None if self.piece is None else self.logprobs_object(i, self.logprobs[i])
            choices.append(
                {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
            )
        return self.envelope(choices, usage)
