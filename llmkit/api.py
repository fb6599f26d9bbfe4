"""llmkit's OpenAI routes: requests validated, run on the engine, answered in OpenAI's shapes.

These replace llama_cpp.server's own generation routes, which cut concurrent streams short, ignore
`n`, send no usage chunk, accept out-of-range parameters and make /v1/models wait on the model.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import llama_cpp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, Field

from llmkit.engine import Engine, Job, QueueFull, ShuttingDown

MAX_N = 16
MAX_STOP = 16
RETRY_AFTER_SECONDS = 2


class BadRequest(Exception):
    """A request the server cannot honour; answered with 400 and this message."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    # The OpenAI API's ranges, which llama_cpp.server does not check.
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(_Common, CreateChatCompletionRequest):  # type: ignore[misc]
    messages: list[dict[str, Any]] = Field(min_length=1)  # type: ignore[assignment]
    response_format: dict[str, Any] | None = None  # type: ignore[assignment]
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Common, CreateCompletionRequest):  # type: ignore[misc]
    prompt: str | list[str] | list[int] = ""  # type: ignore[assignment]


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten text-part lists into strings, as chat templates expect."""
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLES:
            raise BadRequest(
                f"messages[{i}].role must be one of {sorted(_ROLES)}, not {role!r}",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise BadRequest(
                        f"messages[{i}] has a {kind!r} part; this model takes text only",
                        param=f"messages[{i}].content",
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of text parts",
                param=f"messages[{i}].content",
            )
        elif content is None and role != "assistant":
            raise BadRequest(f"messages[{i}].content is missing", param=f"messages[{i}].content")
        out.append(
            {**message, "role": "system" if role == "developer" else role, "content": content}
        )
    return out


def grammar_for(
    response_format: dict[str, Any] | None, grammar: str | None
) -> llama_cpp.LlamaGrammar | None:
    """The grammar that forces JSON (or the schema) when asked; compiled here so errors are 400s."""
    try:
        if grammar is not None:
            return llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
        if not response_format or response_format.get("type") in (None, "text"):
            return None
        kind = response_format.get("type")
        if kind == "json_object":
            schema = response_format.get("schema")
            if schema is None:
                return llama_cpp.LlamaGrammar.from_string(
                    llama_cpp.llama_grammar.JSON_GBNF, verbose=False
                )
            return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise BadRequest(
                    "response_format.json_schema.schema must be a JSON schema object",
                    param="response_format",
                )
            return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except BadRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - llama.cpp's grammar errors are the user's to fix
        raise BadRequest(
            f"could not build a grammar from this request: {exc}", param="response_format"
        ) from None
    raise BadRequest(
        f"response_format.type must be text, json_object or json_schema, not {kind!r}",
        param="response_format",
    )


def seeds_for(seed: int | None, n: int) -> list[int]:
    """One seed per choice: the caller's seed (then seed+1, ...) or fresh random ones.

    llama_cpp without a seed reuses the same one for every call, so `n` choices and repeated
    requests at temperature > 0 would all be the same text.
    """
    if seed is None:
        return [secrets.randbits(32) for _ in range(n)]
    return [(seed + i) % 2**32 for i in range(n)]


_DROP = {
    "n",
    "best_of",
    "stream",
    "stream_options",
    "user",
    "logit_bias_type",
    "min_tokens",
    "model",
    "max_completion_tokens",
    "response_format",
    "grammar",
    "seed",
}


def llama_kwargs(body: ChatRequest | CompletionRequest, eos_token: int) -> dict[str, Any]:
    """The request as keyword arguments for llama_cpp's create_(chat_)completion."""
    best_of = getattr(body, "best_of", None)
    if best_of not in (None, 1, body.n):
        raise BadRequest("best_of is not supported (ask for n choices instead)", param="best_of")
    if isinstance(body.stop, list) and len(body.stop) > MAX_STOP:
        raise BadRequest(f"stop takes at most {MAX_STOP} sequences", param="stop")
    kwargs = body.model_dump(exclude=_DROP)
    if isinstance(body, ChatRequest):
        kwargs["messages"] = normalize_messages(body.messages)
        if body.max_completion_tokens is not None:
            kwargs["max_tokens"] = body.max_completion_tokens
    kwargs["grammar"] = grammar_for(getattr(body, "response_format", None), body.grammar)
    if body.min_tokens > 0:
        min_tokens = llama_cpp.MinTokensLogitsProcessor(body.min_tokens, eos_token)
        kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([min_tokens])
    return kwargs


def _usage(job: Job) -> dict[str, int]:
    u = job.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


Work = Callable[[Job], Iterator[dict[str, Any]]]


def generation_work(
    call: Callable[..., Any],
    prompts: list[Any],
    kwargs: dict[str, Any],
    *,
    n: int,
    seed: int | None,
    stream: bool,
    include_usage: bool,
    model: str,
    kind: Literal["chat.completion", "text_completion"],
) -> Work:
    """The job for a chat or text completion: every prompt times n choices, each generated in full."""
    prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

    def work(job: Job) -> Iterator[dict[str, Any]]:
        cid, created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
        choices: list[dict[str, Any]] = []
        for p, prompt in enumerate(prompts):
            for i, choice_seed in enumerate(seeds_for(seed, n)):
                index = p * n + i
                result = call(**prompt, **kwargs, seed=choice_seed, stream=stream)
                if stream:
                    for chunk in result:
                        if job.cancelled.is_set():
                            return
                        chunk.update(id=cid, created=created, model=model)
                        for choice in chunk["choices"]:
                            choice["index"] = index
                        yield chunk
                else:
                    for choice in result["choices"]:
                        choice["index"] = index
                        choices.append(choice)
                if i == 0:  # n choices share one prompt: count it once
                    job.usage.prompt_tokens += job.usage.last_prompt_tokens
        if stream and include_usage:
            yield {
                "id": cid,
                "object": chunk_kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(job),
            }
        elif not stream:
            yield {
                "id": cid,
                "object": kind,
                "created": created,
                "model": model,
                "choices": choices,
                "usage": _usage(job),
            }

    return work


def _sse(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class Api:
    """The routes, bound to one engine and the name the model is served under."""

    def __init__(self, engine: Engine, model_name: str, api_key: str | None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key
        self.shutting_down = False

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/health", self.health, methods=["GET"])
        key = [Depends(self.check_key)]
        v1 = APIRouter(prefix="/v1", dependencies=key)
        v1.add_api_route("/models", self.models, methods=["GET"])
        v1.add_api_route("/models/{model_id:path}", self.model, methods=["GET"])
        v1.add_api_route("/chat/completions", self.chat, methods=["POST"])
        v1.add_api_route("/completions", self.completions, methods=["POST"])
        v1.add_api_route("/embeddings", self.embeddings, methods=["POST"])
        router.include_router(v1)
        return router

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
        body = {
            "status": status,
            "model": self.model_name,
            "busy": self.engine.busy,
            "waiting": self.engine.waiting,
        }
        return JSONResponse(body, status_code=503 if self.shutting_down else 200)

    def _model_card(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "llmkit"}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card(self.model_name)]}

    async def model(self, model_id: str) -> dict[str, Any]:
        # Any name resolves to the one model this server runs, as /v1/chat/completions does.
        return self._model_card(model_id)

    async def chat(self, request: Request, body: ChatRequest) -> Any:
        kwargs = llama_kwargs(body, self.engine.llama.token_eos())
        prompts = [{"messages": kwargs.pop("messages")}]
        call = self.engine.llama.create_chat_completion
        return await self._generate(request, body, call, prompts, kwargs, "chat.completion")

    async def completions(self, request: Request, body: CompletionRequest) -> Any:
        kwargs = llama_kwargs(body, self.engine.llama.token_eos())
        prompt = kwargs.pop("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompts = [{"prompt": p} for p in prompt]
        else:
            prompts = [{"prompt": prompt}]
        call = self.engine.llama.create_completion
        return await self._generate(request, body, call, prompts, kwargs, "text_completion")

    async def _generate(
        self,
        request: Request,
        body: ChatRequest | CompletionRequest,
        call: Callable[..., Any],
        prompts: list[dict[str, Any]],
        kwargs: dict[str, Any],
        kind: Literal["chat.completion", "text_completion"],
    ) -> Any:
        work = generation_work(
            call,
            prompts,
            kwargs,
            n=body.n,
            seed=body.seed,
            stream=body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            model=body.model or self.model_name,
            kind=kind,
        )
        return await self._respond(request, work, body.stream)

    async def embeddings(self, request: Request) -> Any:
        body = await request.json()
        text = body.get("input") if isinstance(body, dict) else None
        if not text:
            raise BadRequest("input is required", param="input")
        llama = self.engine.llama

        def work(job: Job) -> Iterator[dict[str, Any]]:
            result = llama.create_embedding(text, model=body.get("model") or self.model_name)
            yield dict(result)

        return await self._respond(request, work, stream=False)

    async def _respond(self, request: Request, work: Work, stream: bool) -> Any:
        try:
            job = self.engine.submit(work)
        except QueueFull as exc:
            return openai_error(
                503,
                f"server busy: {exc}; retry shortly",
                kind="server_busy",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except ShuttingDown as exc:
            return openai_error(
                503,
                str(exc),
                kind="server_busy",
                code="shutting_down",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        events = aiter(job)
        try:
            # Wait (through the queue and the prompt) for the first event: a request that fails
            # before its first token gets a proper status code, not a broken stream.
            first = await _until_disconnect(request, anext(events))
        except StopAsyncIteration:
            return openai_error(
                503, "the server is shutting down", kind="server_busy", code="shutting_down"
            )
        except BaseException:
            job.cancel()
            raise
        if not stream:
            return JSONResponse(first)
        return StreamingResponse(
            self._stream(job, first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, job: Job, first: Any, events: AsyncIterator[Any]
    ) -> AsyncIterator[bytes]:
        try:
            yield _sse(first)
            async for item in events:
                yield _sse(item)
            if job.cancelled.is_set():  # cut by shutdown after the grace period: say so
                yield _sse(
                    {
                        "error": {
                            "message": "the server shut down before this response finished",
                            "type": "server_error",
                            "param": None,
                            "code": "shutting_down",
                        }
                    }
                )
                return
            yield _sse("[DONE]")
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band
            yield _sse(
                {
                    "error": {
                        "message": str(exc),
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        finally:
            job.cancel()  # a client that went away frees the model within a token


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
