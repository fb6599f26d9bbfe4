"""The FastAPI app: the whole route table in one list, the middleware, the one error mapping.

Middleware, outermost first: the origin and Host guard (before anything else runs), the request
counter of /metrics, the API key (llmkit.server.gate: before any body byte is read), then
FastAPI's routing with llmkit's error table (llmkit.server.errors). A body is bounded in bytes
(413), and a large one is parsed off the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from llmkit import __version__
from llmkit.server import chat, errors, info, messages, responses
from llmkit.server.gate import Gate
from llmkit.server.load import Served
from llmkit.server.metrics import Metrics, RequestCounter
from llmkit.server.openapi import with_bounds, with_openai_errors
from llmkit.server.origins import OriginGuard, Policy
from llmkit.server.registry import Leases, Registry
from llmkit.server.schemas import EMBEDDING_SIZE, EMBEDDING_TOKEN_ID, TOKEN_ID
from llmkit.settings import ServeSettings

# (path, methods, endpoint, whether /openapi.json documents it). Which need the API key is the
# gate's rule (llmkit.server.gate.keyed): all but /health, /ready, the page and the schema.
Route = tuple[str, list[str], Callable[..., Any], bool]
ROUTES: list[Route] = [
    ("/health", ["GET"], info.health, True),
    ("/ready", ["GET"], info.ready, True),
    ("/v1/models", ["GET"], info.models, True),
    # An operator's load and unload (under the key, as every /v1 route).
    ("/v1/models/{model_id}/load", ["POST"], info.load_model, True),
    ("/v1/models/{model_id}/unload", ["POST"], info.unload_model, True),
    ("/v1/models/{model_id:path}", ["GET"], info.model, True),
    ("/v1/chat/completions", ["POST"], chat.chat, True),
    ("/v1/completions", ["POST"], chat.completions, True),
    ("/v1/embeddings", ["POST"], info.embeddings, True),
    ("/v1/responses", ["POST"], responses.create, True),
    # A clear 404 where a stored response is asked for (retrieve, delete, cancel, input_items).
    ("/v1/responses/{response_id}", ["GET", "DELETE"], responses.stored, True),
    ("/v1/responses/{response_id}/{part:path}", ["GET", "POST"], responses.stored_part, True),
    # Anthropic's Messages API (its errors in Anthropic's shape: llmkit.server.errors).
    ("/v1/messages", ["POST"], messages.create, True),
    ("/v1/messages/count_tokens", ["POST"], messages.count_tokens, True),
    # llama_cpp.server's tokenizer extras, with the token ids checked.
    ("/extras/tokenize", ["POST"], info.tokenize, True),
    ("/extras/tokenize/count", ["POST"], info.count_tokens, True),
    ("/extras/detokenize", ["POST"], info.detokenize, True),
    ("/metrics", ["GET"], info.metrics, False),  # Prometheus text, not an OpenAI route
]
# A body this long or longer is parsed and checked on a worker thread: parsing takes the event
# loop about 10 ms a megabyte, and refusing a large invalid body (its errors built, one per item)
# a second or more, while every stream and health check waits.
PARSE_ON_LOOP_BELOW = 64 * 1024


class _OffLoopJson(Request):
    body_field: Any = None  # the route's body (FastAPI's field), to check a large one against

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) < PARSE_ON_LOOP_BELOW:
                self._json = json.loads(body)
            else:
                self._json = await run_in_threadpool(_checked, body, self.body_field)
        return self._json


def _checked(body: bytes, field: Any) -> Any:
    """A large body parsed, and refused here (off the loop) if it is not valid: only a valid one
    reaches FastAPI's own check, on the loop, where it is quick."""
    parsed = json.loads(body)
    if field is not None:
        _, found = field.validate(parsed, {}, loc=("body",))
        if found:
            message, param = errors.invalid(found)
            raise errors.InvalidBody(message, param)
    return parsed


class OffLoopRoute(APIRoute):
    """A route whose JSON body, when large, is parsed and checked on a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field

        async def route(request: Request) -> Response:
            offloop = _OffLoopJson(request.scope, request.receive)
            offloop.body_field = field
            return await handler(offloop)

        return route


def build_app(
    config: ServeSettings,
    registry: Registry,
    api_key: str | None,
    metrics: Metrics,
    max_body: int,
) -> FastAPI:
    """The app that serves `registry`'s models as `config` says."""
    # No /docs: Swagger UI comes from a CDN, onto the origin where the web chat keeps the key.
    app = FastAPI(
        title="llmkit",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=registry.lifespan,
    )
    app.state.registry = registry
    app.state.metrics = metrics
    router = APIRouter(route_class=OffLoopRoute)
    for path, methods, endpoint, documented in ROUTES:
        router.add_api_route(path, endpoint, methods=methods, include_in_schema=documented)
    app.include_router(router)
    if not config.no_ui:
        from llmkit.server import webui

        webui.add_routes(app, webui.Page.packaged())  # no API key: the page asks for it
    errors.install_handlers(app)
    # The schema's token-id bounds are one model's: stated only when one model is served (each
    # model checks its own ids in any case).
    if len(registry.models) == 1 and registry.default.served is not None:
        _state_bounds(app, registry.default.served)
    app.add_middleware(Leases, registry=registry)
    app.add_middleware(Gate, api_key=api_key, max_body=max_body)
    app.add_middleware(RequestCounter, metrics=metrics)
    policy = Policy.for_server(config.host, config.allow_origin, config.allow_host)
    app.add_middleware(OriginGuard, policy=policy)  # outermost: before anything else runs
    return app


def _state_bounds(app: FastAPI, served: Served) -> None:
    """/openapi.json as the server answers: OpenAI errors, and the bounds the model sets."""
    import llama_cpp

    n_vocab = served.llama.n_vocab()
    bounds = {TOKEN_ID: n_vocab - 1}
    if served.plan.embedding_path is None:  # the embeddings' model is this one (else not loaded)
        bounds[EMBEDDING_TOKEN_ID] = n_vocab - 1
        bounds[EMBEDDING_SIZE] = llama_cpp.llama_model_n_embd_out(served.llama.model)
    fastapi_schema = app.openapi
    schema: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not schema:
            schema.update(with_bounds(with_openai_errors(fastapi_schema()), bounds))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
