"""The routes that generate nothing: liveness and readiness, the models, the tokenizer, embeddings
and the metrics. None of them waits on a generation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from llmkit.embeddings import encoded
from llmkit.errors import BadRequest
from llmkit.server.bodies import DetokenizeRequest, EmbeddingRequest, TokenizeRequest
from llmkit.server.errors import busy
from llmkit.server.load import Served
from llmkit.server.registry import Registry, registry_of
from llmkit.server.respond import until_disconnect


async def health(request: Request) -> JSONResponse:
    # Never touches the model: answers while a generation runs, and says when we are draining.
    registry = registry_of(request)
    served = registry.default
    engine = served.engine
    body = {
        "status": "shutting_down" if registry.draining else "ok",
        "model": served.name,
        "busy": engine.busy,
        "waiting": engine.waiting,
        "slots": {"total": engine.parallel, "active": engine.active},
        "tools": served.tool_support(),
        "plan": {
            "parallel": engine.parallel,
            "ctx": engine.slot_ctx,
            "kv_type": engine.kv_type,
            "speculation": engine.speculation,
            "reason": served.plan.sizing,
        },
    }
    return JSONResponse(body, status_code=503 if registry.draining else 200)


def not_ready(registry: Registry) -> tuple[str, str] | None:
    """Why a request sent now would not start soon (code, message); None when it would."""
    engine = registry.default.engine
    if registry.draining:
        return "draining", "the server is shutting down: send new requests elsewhere"
    if not engine.accepting:
        return "engine_stopped", "the model's scheduler has stopped"
    if engine.queue_full:
        return "queue_full", f"{engine.waiting} choices are already waiting for a slot"
    return None


async def ready(request: Request) -> JSONResponse:
    # Readiness, for a balancer's health check: liveness is /health. Both are instant.
    registry = registry_of(request)
    reason = not_ready(registry)
    if reason is not None:
        return busy(reason[1], reason[0])
    served = registry.default
    engine = served.engine
    body = {
        "status": "ready",
        "model": served.name,
        "waiting": engine.waiting,
        "slots": {"total": engine.parallel, "active": engine.active},
    }
    return JSONResponse(body)


def _model_card(served: Served, model_id: str) -> dict[str, Any]:
    card = {"id": model_id, "object": "model", "created": 0, "owned_by": "llmkit"}
    return {**card, "tools": served.tool_support()}


def _anthropic_card(model_id: str) -> dict[str, Any]:
    # Anthropic's ModelInfo; no date of its own: the epoch, as OpenAI's card says `created: 0`.
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": "1970-01-01T00:00:00Z",
    }


async def models(request: Request) -> dict[str, Any]:
    served = registry_of(request).served
    if "anthropic-version" in request.headers:  # an Anthropic SDK: its page of models
        data = [_anthropic_card(s.name) for s in served]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
    return {"object": "list", "data": [_model_card(s, s.name) for s in served]}


async def model(request: Request, model_id: str) -> dict[str, Any]:
    # Any name resolves to the one model this server runs, as /v1/chat/completions does.
    served = registry_of(request).find(model_id)
    if "anthropic-version" in request.headers:
        return _anthropic_card(model_id)
    return _model_card(served, model_id)


async def tokenize(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    served = registry_of(request).find(body.model)
    return {"tokens": await run_in_threadpool(served.tokens, body.input)}


async def count_tokens(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    served = registry_of(request).find(body.model)
    return {"count": len(await run_in_threadpool(served.tokens, body.input))}


async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, Any]:
    llama = registry_of(request).find(body.model).llama
    n_vocab = llama.n_vocab()
    if not all(0 <= t < n_vocab for t in body.tokens):
        raise BadRequest(f"token ids must be between 0 and {n_vocab - 1}", param="tokens")
    text = await run_in_threadpool(llama.detokenize, body.tokens)
    return {"text": text.decode(errors="replace")}


async def embeddings(request: Request, body: EmbeddingRequest) -> Any:
    inputs = body.inputs()
    served = registry_of(request).find(body.model)
    # QueueFull and ShuttingDown are answered by the app's error table.
    stop = threading.Event()
    future = served.embedder.submit(inputs, body.dimensions, stop)
    # On the embedder's own thread: the event loop, and the engine's streams, go on. A client
    # that hangs up stops its work between two batches.
    try:
        result = await until_disconnect(request, asyncio.wrap_future(future))
    except BaseException:
        stop.set()
        raise
    data = [
        {"object": "embedding", "index": i, "embedding": encoded(vector, body.encoding_format)}
        for i, vector in enumerate(result.vectors)
    ]
    tokens = result.prompt_tokens
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model or served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def metrics(request: Request):  # type: ignore[no-untyped-def]  # (an annotation breaks /openapi.json)
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
