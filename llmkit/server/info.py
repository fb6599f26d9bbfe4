"""The routes that generate nothing: liveness and readiness, the models, the tokenizer, embeddings
and the metrics. None of them waits on a generation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from llmkit.embeddings import encoded
from llmkit.errors import BadRequest
from llmkit.server.bodies import (
    DetokenizeRequest,
    EmbeddingRequest,
    LoadRequest,
    TokenizeRequest,
)
from llmkit.server.errors import busy
from llmkit.server.registry import FAILED, LOADED, Model, Registry, registry_of
from llmkit.server.respond import until_disconnect


async def health(request: Request) -> JSONResponse:
    # Never touches a model: answers while a generation runs, and says when we are draining.
    registry = registry_of(request)
    body: dict[str, Any] = {"status": "shutting_down" if registry.draining else "ok"}
    body.update(_engine_detail(registry.default))  # the default model's, as before several
    body["memory"] = {
        "budget_bytes": registry.budget,
        "resident_bytes": sum(m.nbytes for m in registry.models if m.resident),
    }
    body["models"] = [{"id": m.name, **m.card(), **_engine_detail(m)} for m in registry.models]
    return JSONResponse(body, status_code=503 if registry.draining else 200)


def _engine_detail(model: Model) -> dict[str, Any]:
    """A model's scheduler, as /health shows it (its plan only, when not loaded)."""
    plan = model.plan
    detail: dict[str, Any] = {
        "model": model.name,
        "plan": {
            "parallel": plan.parallel,
            "ctx": plan.n_ctx,
            "kv_type": plan.kv_type,
            "reason": plan.sizing,
        },
    }
    served = model.served
    if served is not None and model.state == LOADED:
        engine = served.engine
        detail["busy"] = engine.busy
        detail["waiting"] = engine.waiting
        detail["slots"] = {"total": engine.parallel, "active": engine.active}
        detail["tools"] = served.tool_support()
        detail["plan"]["speculation"] = engine.speculation
    return detail


def not_ready(registry: Registry) -> tuple[str, str] | None:
    """Why a request sent now would not start soon (code, message); None when it would: some
    model can take one (loaded with room in its queue, or loadable)."""
    if registry.draining:
        return "draining", "the server is shutting down: send new requests elsewhere"
    reasons = []
    for model in registry.models:
        reason = _model_not_ready(model)
        if reason is None:
            return None
        reasons.append(reason)
    return reasons[0]


def _model_not_ready(model: Model) -> tuple[str, str] | None:
    if model.too_big is not None:
        return "model_too_big", f"{model.name} cannot be loaded: {model.too_big}"
    if model.state == FAILED:
        return "model_failed", f"{model.name} failed to load: {model.error}"
    if model.state != LOADED or model.served is None:
        return None  # loads on the first request
    engine = model.served.engine
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
    body: dict[str, Any] = {"status": "ready"}
    default = registry.default
    body["model"] = default.name
    if default.served is not None and default.state == LOADED:
        engine = default.served.engine
        body["waiting"] = engine.waiting
        body["slots"] = {"total": engine.parallel, "active": engine.active}
    return JSONResponse(body)


def _model_card(model: Model, model_id: str) -> dict[str, Any]:
    card: dict[str, Any] = {"id": model_id, "object": "model", "created": 0, "owned_by": "llmkit"}
    if model.served is not None and model.state == LOADED:
        card["tools"] = model.served.tool_support()
    return {**card, **model.card()}


def _anthropic_card(model_id: str) -> dict[str, Any]:
    # Anthropic's ModelInfo; no date of its own: the epoch, as OpenAI's card says `created: 0`.
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": "1970-01-01T00:00:00Z",
    }


async def models(request: Request) -> dict[str, Any]:
    listed = registry_of(request).models
    if "anthropic-version" in request.headers:  # an Anthropic SDK: its page of models
        data = [_anthropic_card(m.name) for m in listed]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
    return {"object": "list", "data": [_model_card(m, m.name) for m in listed]}


async def model(request: Request, model_id: str) -> dict[str, Any]:
    # With one model served, any name resolves to it, as /v1/chat/completions does.
    found = registry_of(request).lookup(model_id)
    if "anthropic-version" in request.headers:
        return _anthropic_card(model_id)
    return _model_card(found, model_id)


async def load_model(
    request: Request, model_id: str, body: LoadRequest | None = None
) -> dict[str, Any]:
    """POST /v1/models/{id}/load: load it now (an operator's warm-up), to stay `keep_alive` once
    idle (default: as when a request loads it); answers once loaded."""
    registry = registry_of(request)
    found = registry.lookup(model_id)
    await registry.load(found, body.keep_alive if body is not None else None)
    return _model_card(found, found.name)


async def unload_model(request: Request, model_id: str) -> dict[str, Any]:
    """POST /v1/models/{id}/unload: unload it once its requests are done; answers once unloaded.
    A later request loads it again."""
    registry = registry_of(request)
    found = registry.lookup(model_id)
    await registry.unload(found, reason="(asked)")
    return _model_card(found, found.name)


async def tokenize(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    served = await registry_of(request).acquire(request, body.model)
    return {"tokens": await served.work(served.tokens, body.input)}


async def count_tokens(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    served = await registry_of(request).acquire(request, body.model)
    return {"count": len(await served.work(served.tokens, body.input))}


async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, Any]:
    served = await registry_of(request).acquire(request, body.model)
    n_vocab = served.llama.n_vocab()
    if not all(0 <= t < n_vocab for t in body.tokens):
        raise BadRequest(f"token ids must be between 0 and {n_vocab - 1}", param="tokens")
    text = await served.work(served.llama.detokenize, body.tokens)
    return {"text": text.decode(errors="replace")}


async def embeddings(request: Request, body: EmbeddingRequest) -> Any:
    inputs = body.inputs()
    registry = registry_of(request)
    served = await registry.acquire(request, body.model, body.keep_alive)
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
            "model": registry.reply_name(body.model, served),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def metrics(request: Request):  # type: ignore[no-untyped-def]  # (an annotation breaks /openapi.json)
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
