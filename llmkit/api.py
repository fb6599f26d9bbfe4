"""llmkit's OpenAI routes: requests validated, run on the batched engine, answered in OpenAI's shapes.

These replace llama_cpp.server's own generation routes, which cut concurrent streams short, ignore
`n`, send no usage chunk, accept out-of-range parameters and make /v1/models wait on the model.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import llama_cpp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmkit import embeddings as embedding
from llmkit.embeddings import Embedder
from llmkit.engine import (
    CacheFull,
    Delta,
    Engine,
    Job,
    PromptTooLong,
    QueueFull,
    ShuttingDown,
    Usage,
    opened,
)
from llmkit.errors import BadRequest
from llmkit.logprobs import TokenLogprob
from llmkit.params import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    choices_for,
    tools_of,
)
from llmkit.tools.family import Family
from llmkit.tools.parse import CallParser, Event, parse
from llmkit.tools.render import ChatTemplate, tool_family
from llmkit.tools.request import ToolRequest

RETRY_AFTER_SECONDS = 2

Kind = Literal["chat.completion", "text_completion"]


def openai_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape the OpenAI API (and so every OpenAI SDK) understands."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class Reply:
    """One request's answer, built from the engine's deltas: as chunks, or as one body at the end."""

    def __init__(
        self,
        kind: Kind,
        model: str,
        echo: list[str],
        include_usage: bool,
        piece: Callable[[int], bytes] | None = None,
        tools: ToolRequest | None = None,
        family: Family | None = None,
    ) -> None:
        self.kind = kind
        self.model = model
        self.echo = echo
        self.include_usage = include_usage
        self.piece = piece  # set when the request asks for logprobs: a token's bytes
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in echo]  # for the body
        self._offsets = [0] * len(echo)  # completions' text_offset: where the next token starts
        self.id = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.texts = [""] * len(echo)
        self.finish: list[str | None] = [None] * len(echo)
        self._started = [False] * len(echo)
        self._head: str | None = None
        # With tools: each choice's text is parsed into content and calls as it comes.
        self.family = family
        self.legacy = bool(tools and tools.legacy)
        self.parsers = [CallParser(family) for _ in echo] if tools and family else None
        self.call_ids: list[list[str]] = [[] for _ in echo]

    def _call_id(self, i: int, k: int) -> str:
        while len(self.call_ids[i]) <= k:
            self.call_ids[i].append(f"call_{uuid.uuid4().hex[:24]}")
        return self.call_ids[i][k]

    def _finish_reason(self, reason: str, calls: int) -> str:
        if calls and reason == "stop":
            return "function_call" if self.legacy else "tool_calls"
        return reason

    def _tool_deltas(self, i: int, events: list[Event]) -> list[dict[str, Any]]:
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
                    "id": self._call_id(i, e.index),
                    "type": "function",
                    "function": {"name": e.text, "arguments": ""},
                }
                out.append({"tool_calls": [call]})
            else:
                out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
        return out

    def _tool_sse(self, delta: Delta) -> bytes:
        i = delta.index
        assert self.parsers is not None
        out = []
        if not self._started[i]:
            self._started[i] = True
            out.append(_sse(self._choice_chunk(i, {"role": "assistant", "content": None}, None)))
        parser = self.parsers[i]
        events = parser.feed(delta.text)
        if delta.finish_reason is not None:
            events += parser.finish()
        for d in self._tool_deltas(i, events):
            out.append(_sse(self._choice_chunk(i, d, None)))
        if delta.finish_reason is not None:
            reason = self._finish_reason(delta.finish_reason, len(parser.calls))
            self.finish[i] = reason
            out.append(_sse(self._choice_chunk(i, {}, reason)))
        return b"".join(out)

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        chunk_kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        return {
            "id": self.id,
            "object": chunk_kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def sse(self, delta: Delta) -> bytes:
        """The stream events for one delta."""
        if self.parsers is not None:
            return self._tool_sse(delta)
        i, text = delta.index, delta.text
        out = []
        if not self._started[i]:
            self._started[i] = True
            text = self.echo[i] + text
            if self.kind == "chat.completion":
                out.append(_sse(self._choice_chunk(i, {"role": "assistant", "content": ""}, None)))
        entries = self._entries(delta)
        if text and entries is None:
            out.append(self._text_event(i, text))
        elif text or entries:
            logprobs = self._logprobs_object(i, entries or [])
            out.append(_sse(self._choice_chunk(i, {"content": text}, None, text, logprobs)))
        if delta.finish_reason is not None:
            self.finish[i] = delta.finish_reason
            out.append(_sse(self._choice_chunk(i, {}, delta.finish_reason, "")))
        return b"".join(out)

    def _entries(self, delta: Delta) -> list[TokenLogprob] | None:
        """The delta's logprobs, the prompt's first (echo); None when the request asks for none."""
        if self.piece is None:
            return None
        return (delta.prompt_logprobs or []) + (delta.logprobs or [])

    def _token(self, token: int) -> tuple[str, bytes]:
        assert self.piece is not None
        raw = self.piece(token)
        return raw.decode(errors="replace"), raw

    def _logprobs_object(self, i: int, entries: list[TokenLogprob]) -> dict[str, Any]:
        """`choices[].logprobs` in the shape of this endpoint: chat's content list, or legacy."""
        if self.kind == "chat.completion":
            content = []
            for entry in entries:
                text, raw = self._token(entry.token)
                top = []
                for token, logprob in entry.top:
                    alt_text, alt_raw = self._token(token)
                    top.append({"token": alt_text, "logprob": logprob, "bytes": list(alt_raw)})
                content.append(
                    {
                        "token": text,
                        "logprob": entry.logprob,
                        "bytes": list(raw),
                        "top_logprobs": top,
                    }
                )
            return {"content": content, "refusal": None}
        tokens, offsets = [], []
        for entry in entries:
            text = self._token(entry.token)[0]
            tokens.append(text)
            offsets.append(self._offsets[i])
            self._offsets[i] += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                None if e.logprob is None else {self._token(t)[0]: lp for t, lp in e.top}
                for e in entries
            ],
            "text_offset": offsets,
        }

    def _text_event(self, i: int, text: str) -> bytes:
        # The event sent for nearly every token, formatted without building and dumping dicts:
        # on 2 cores, the server's per-token work is time taken from llama.cpp.
        if self._head is None:
            head = json.dumps(self._chunk([]), separators=(",", ":"))
            self._head = "data: " + head[: head.rindex('"choices":')] + '"choices":[{'
        text_json = json.dumps(text)
        if self.kind == "chat.completion":
            tail = f'"index":{i},"delta":{{"content":{text_json}}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        else:
            tail = f'"text":{text_json},"index":{i},"logprobs":null,"finish_reason":null}}]}}\n\n'
        return (self._head + tail).encode()

    def _choice_chunk(
        self,
        i: int,
        delta: dict[str, Any],
        finish: str | None,
        text: str = "",
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat.completion":
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
        return self._chunk([choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self._chunk([], usage=usage_dict(usage))

    def add(self, delta: Delta) -> None:
        i = delta.index
        if not self._started[i]:
            self._started[i] = True
            self.texts[i] = self.echo[i]
        self.texts[i] += delta.text
        self.logprobs[i] += self._entries(delta) or []
        if delta.finish_reason is not None:
            self.finish[i] = delta.finish_reason

    def _tool_message(self, i: int, text: str, finish: str) -> tuple[dict[str, Any], str]:
        """The message of a tool request's choice: its content, and its calls."""
        assert self.family is not None
        parsed = parse(self.family, text)
        calls = [c for c in parsed.calls if c.complete]
        content = parsed.content if parsed.content or not calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls and self.legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        elif calls:
            message["tool_calls"] = [
                {
                    "id": self._call_id(i, k),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for k, c in enumerate(calls)
            ]
        return message, self._finish_reason(finish, len(calls))

    def body(self, usage: Usage) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for i, (text, finish) in enumerate(zip(self.texts, self.finish, strict=True)):
            logprobs = None if self.piece is None else self._logprobs_object(i, self.logprobs[i])
            if self.kind == "chat.completion":
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if self.parsers is not None and self.family is not None and finish is not None:
                    message, finish = self._tool_message(i, text, finish)
                choices.append(
                    {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
                )
            else:
                choices.append(
                    {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
                )
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_dict(usage),
        }


class LoopChannel:
    """The engine's channel into an asyncio event loop: one call_soon_threadsafe a step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def inbox(self) -> asyncio.Queue[Any]:
        return asyncio.Queue()

    def deliver(self, items: list[tuple[Job, Any]]) -> None:
        self.loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.inbox.put_nowait(item)


async def events(job: Job) -> AsyncIterator[Delta | Usage]:
    """A LoopChannel job's deltas as they come, then its usage; raises what failed the job."""
    while True:
        event = opened(await job.inbox.get())
        if event is None:
            return
        yield event


def _sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class Api:
    """The routes, bound to one engine, the model's tokenizer and the name the model is served under."""

    def __init__(
        self,
        engine: Engine,
        llama: llama_cpp.Llama,
        model_name: str,
        api_key: str | None,
        template: ChatTemplate | None = None,
        sizing: str = "",
        embedder: Embedder | None = None,
    ) -> None:
        self.engine = engine
        self.template = template or ChatTemplate(None)
        self.sizing = sizing  # why these slots and this context (the plan's words)
        self.embedder = embedder
        self.llama = llama
        self.model_name = model_name
        self.api_key = api_key
        self.shutting_down = False

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/health", self.health, methods=["GET"])
        router.add_api_route("/ready", self.ready, methods=["GET"])
        key = [Depends(self.check_key)]
        v1 = APIRouter(prefix="/v1", dependencies=key)
        v1.add_api_route("/models", self.models, methods=["GET"])
        v1.add_api_route("/models/{model_id:path}", self.model, methods=["GET"])
        v1.add_api_route("/chat/completions", self.chat, methods=["POST"])
        v1.add_api_route("/completions", self.completions, methods=["POST"])
        v1.add_api_route("/embeddings", self.embeddings, methods=["POST"])
        from llmkit import responses  # it builds on this module

        responses.add_routes(v1, self)
        router.include_router(v1)
        extras = APIRouter(prefix="/extras", dependencies=key)  # llama_cpp.server's own
        extras.add_api_route("/tokenize", self.tokenize, methods=["POST"])
        extras.add_api_route("/tokenize/count", self.count_tokens, methods=["POST"])
        extras.add_api_route("/detokenize", self.detokenize, methods=["POST"])
        router.include_router(extras)
        return router

    def _tokens(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=True, special=True)

    async def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        return {"tokens": await run_in_threadpool(self._tokens, body.input)}

    async def count_tokens(self, body: TokenizeRequest) -> dict[str, Any]:
        return {"count": len(await run_in_threadpool(self._tokens, body.input))}

    async def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        n_vocab = self.llama.n_vocab()
        if not all(0 <= t < n_vocab for t in body.tokens):
            raise BadRequest(f"token ids must be between 0 and {n_vocab - 1}", param="tokens")
        text = await run_in_threadpool(self.llama.detokenize, body.tokens)
        return {"text": text.decode(errors="replace")}

    async def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            raise Unauthorized()

    async def health(self) -> JSONResponse:
        # Never touches the model: answers while a generation runs, and says when we are draining.
        status = "shutting_down" if self.shutting_down else "ok"
        engine = self.engine
        body = {
            "status": status,
            "model": self.model_name,
            "busy": engine.busy,
            "waiting": engine.waiting,
            "slots": {"total": engine.parallel, "active": engine.active},
            "tools": self.tool_support(),
            "plan": {
                "parallel": engine.parallel,
                "ctx": engine.slot_ctx,
                "kv_type": engine.kv_type,
                "speculation": engine.speculation,
                "reason": self.sizing,
            },
        }
        return JSONResponse(body, status_code=503 if self.shutting_down else 200)

    def not_ready(self) -> tuple[str, str] | None:
        """Why a request sent now would not start soon (code, message); None when it would."""
        engine = self.engine
        if self.shutting_down:
            return "draining", "the server is shutting down: send new requests elsewhere"
        if not engine.accepting:
            return "engine_stopped", "the model's scheduler has stopped"
        if engine.queue_full:
            return "queue_full", f"{engine.waiting} requests are already waiting"
        return None

    async def ready(self) -> JSONResponse:
        # Readiness, for a balancer's health check: liveness is /health. Both are instant.
        reason = self.not_ready()
        if reason is not None:
            return _busy(reason[1], reason[0])
        engine = self.engine
        body = {
            "status": "ready",
            "model": self.model_name,
            "waiting": engine.waiting,
            "slots": {"total": engine.parallel, "active": engine.active},
        }
        return JSONResponse(body)

    def tool_support(self) -> dict[str, Any]:
        """How this model's template calls tools: natively (which family) or generic JSON."""
        family = tool_family(self.template)
        return {"native": family.native, "format": family.name}

    def _model_card(self, model_id: str) -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "llmkit"}
        return {**card, "tools": self.tool_support()}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card(self.model_name)]}

    async def model(self, model_id: str) -> dict[str, Any]:
        # Any name resolves to the one model this server runs, as /v1/chat/completions does.
        return self._model_card(model_id)

    async def chat(self, request: Request, body: ChatRequest) -> Any:
        return await self._generate(request, body, "chat.completion")

    async def completions(self, request: Request, body: CompletionRequest) -> Any:
        return await self._generate(request, body, "text_completion")

    async def embeddings(self, body: EmbeddingRequest) -> Any:
        inputs = body.inputs()
        if self.embedder is None:
            raise BadRequest("this server computes no embeddings", param="model")
        try:
            future = self.embedder.submit(inputs, body.dimensions)
        except embedding.QueueFull as exc:
            return _busy(f"server busy: {exc}; retry shortly", "queue_full")
        except embedding.ShuttingDown as exc:
            return _busy(str(exc), "shutting_down")
        # On the embedder's own thread: the event loop, and the engine's streams, go on.
        result = await asyncio.wrap_future(future)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": embedding.encoded(vector, body.encoding_format),
            }
            for i, vector in enumerate(result.vectors)
        ]
        tokens = result.prompt_tokens
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.model or self.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _generate(
        self, request: Request, body: ChatRequest | CompletionRequest, kind: Kind
    ) -> Any:
        # Rendering the template and tokenizing take milliseconds a thousand tokens: off the
        # event loop, so that the other streams' tokens keep flowing meanwhile.
        tools = tools_of(body) if isinstance(body, ChatRequest) else None
        choices, echo = await run_in_threadpool(choices_for, body, self.llama, self.template, tools)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        wants_logprobs = any(c.params.logprobs is not None for c in choices)
        piece = self.engine.piece if wants_logprobs else None
        family = tool_family(self.template) if tools else None
        response = Reply(
            kind, body.model or self.model_name, echo, include_usage, piece, tools, family
        )
        try:
            job = self.engine.submit(choices, LoopChannel(asyncio.get_running_loop()))
        except QueueFull as exc:
            return _busy(f"server busy: {exc}; retry shortly", "queue_full")
        except ShuttingDown as exc:
            return _busy(str(exc), "shutting_down")
        except PromptTooLong as exc:
            param = "messages" if kind == "chat.completion" else "prompt"
            raise BadRequest(str(exc), param=param) from None
        stream = events(job)
        try:
            if not body.stream:
                return JSONResponse(
                    await _until_disconnect(request, _collect(job, response, stream))
                )
            # Wait (through the queue and the prompt) for the first event: a request that fails
            # before its first token gets a proper status code, not a broken stream.
            first = await _until_disconnect(request, anext(stream))
        except (StopAsyncIteration, _Unfinished):
            return _busy("the server is shutting down", "shutting_down")
        except CacheFull as exc:
            return _busy(str(exc), "kv_cache_full")
        except BaseException:
            job.cancel()
            raise
        return StreamingResponse(
            self._stream(job, response, first, stream),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, job: Job, response: Reply, first: Any, stream: AsyncIterator[Any]
    ) -> AsyncIterator[bytes]:
        try:
            item = first
            while True:
                if isinstance(item, Delta):
                    yield response.sse(item)
                elif response.include_usage:
                    yield _sse(response.usage_chunk(item))
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    break
            if None in response.finish:  # cut by shutdown after the grace period
                yield _sse(
                    _error_event(
                        "the server shut down before this response finished", "shutting_down"
                    )
                )
                return
            yield _sse("[DONE]")
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band
            yield _sse(_error_event(str(exc), None))
        finally:
            job.cancel()  # a client that went away frees its slot within a step


async def _collect(job: Job, response: Reply, stream: AsyncIterator[Any]) -> dict[str, Any]:
    usage = job.usage
    async for item in stream:
        if isinstance(item, Delta):
            response.add(item)
        else:
            usage = item
    if None in response.finish:
        raise _Unfinished()
    return response.body(usage)


class _Unfinished(Exception):
    """The job ended without finishing every choice: the server is shutting down."""


def _error_event(message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _busy(message: str, code: str) -> JSONResponse:
    return openai_error(
        503,
        message,
        kind="server_busy",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class Unauthorized(Exception):
    pass


async def _until_disconnect(request: Request, awaitable: Any) -> Any:
    """Await the first event, but give up (and cancel the job) if the client hangs up first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
