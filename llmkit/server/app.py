"""The FastAPI app: the whole route table in one list, the middleware, the one error mapping.

Middleware, outermost first: the origin and Host guard (before anything else runs), the request
counter of /metrics, then FastAPI's routing with llmkit's error table (llmkit.server.errors).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request

from llmkit import __version__
from llmkit.server import chat, errors, info, messages, responses
from llmkit.server.load import Served
from llmkit.server.metrics import Metrics, RequestCounter
from llmkit.server.openapi import with_bounds, with_openai_errors
from llmkit.server.origins import OriginGuard, Policy
from llmkit.server.registry import Registry
from llmkit.server.schemas import EMBEDDING_SIZE, EMBEDDING_TOKEN_ID, TOKEN_ID
from llmkit.settings import ServeSettings

# (path, methods, endpoint, whether the API key is needed, whether /openapi.json documents it)
Route = tuple[str, list[str], Callable[..., Any], bool, bool]
ROUTES: list[Route] = [
    ("/health", ["GET"], info.health, False, True),
    ("/ready", ["GET"], info.ready, False, True),
    ("/v1/models", ["GET"], info.models, True, True),
    ("/v1/models/{model_id:path}", ["GET"], info.model, True, True),
    ("/v1/chat/completions", ["POST"], chat.chat, True, True),
    ("/v1/completions", ["POST"], chat.completions, True, True),
    ("/v1/embeddings", ["POST"], info.embeddings, True, True),
    ("/v1/responses", ["POST"], responses.create, True, True),
    # A clear 404 where a stored response is asked for (retrieve, delete, cancel, input_items).
    ("/v1/responses/{response_id}", ["GET", "DELETE"], responses.stored, True, True),
    ("/v1/responses/{response_id}/{part:path}", ["GET", "POST"], responses.stored_part, True, True),
    # Anthropic's Messages API (its errors in Anthropic's shape: llmkit.server.errors).
    ("/v1/messages", ["POST"], messages.create, True, True),
    ("/v1/messages/count_tokens", ["POST"], messages.count_tokens, True, True),
    # llama_cpp.server's tokenizer extras, with the token ids checked.
    ("/extras/tokenize", ["POST"], info.tokenize, True, True),
    ("/extras/tokenize/count", ["POST"], info.count_tokens, True, True),
    ("/extras/detokenize", ["POST"], info.detokenize, True, True),
    ("/metrics", ["GET"], info.metrics, True, False),  # Prometheus text, not an OpenAI route
]


class KeyCheck:
    """The API key, as `Authorization: Bearer KEY` (OpenAI's SDKs) or `x-api-key: KEY`
    (Anthropic's); every route but /health, /ready and the page."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key

    async def __call__(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and self._matches(token):
            return
        if not self._matches(request.headers.get("x-api-key")):
            raise errors.Unauthorized()

    def _matches(self, token: str | None) -> bool:
        assert self.api_key is not None
        # As bytes: compare_digest refuses str with non-ASCII characters (a header may have them).
        return token is not None and secrets.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )


def build_app(
    config: ServeSettings, registry: Registry, api_key: str | None, metrics: Metrics
) -> FastAPI:
    """The app that serves `registry`'s models as `config` says."""
    app = FastAPI(title="llmkit", version=__version__)
    app.state.registry = registry
    app.state.metrics = metrics
    router = APIRouter()
    key = [Depends(KeyCheck(api_key))]
    for path, methods, endpoint, needs_key, documented in ROUTES:
        router.add_api_route(
            path,
            endpoint,
            methods=methods,
            dependencies=key if needs_key else None,
            include_in_schema=documented,
        )
    app.include_router(router)
    if not config.no_ui:
        from llmkit.server import webui

        webui.add_routes(app, webui.Page.packaged())  # no API key: the page asks for it
    errors.install(app)
    _state_bounds(app, registry.default)
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
