"""`llmkit serve`: llama_cpp.server's app with llmkit's routes, run by uvicorn, stopped cleanly."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.net import is_loopback, url_host
from llmkit.plan import Plan, plan
from llmkit.settings import ServeSettings

# The context of the Llama that only tokenizes and renders prompts (llama.cpp's minimum).
_TOKENIZER_CTX = 256

# llama_cpp.server's generation and model routes: llmkit's replace them (see api.py for why).
_REPLACED_ROUTES = {
    "/v1/completions",
    "/v1/engines/copilot-codex/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/embeddings",
    # Its tokenizer extras pass token ids unchecked to llama.cpp, which aborts the process on one
    # outside the vocabulary: llmkit's check them.
    "/extras/tokenize",
    "/extras/tokenize/count",
    "/extras/detokenize",
}


def build_app(config: ServeSettings, prepared: Plan):  # type: ignore[no-untyped-def]
    """Load the model through llama_cpp.server's create_app and put llmkit's routes on top."""
    import llama_cpp
    from fastapi import Depends
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from llama_cpp.server import app as llama_server
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.exceptions import HTTPException

    from llmkit import grammar, params
    from llmkit.api import Api, Unauthorized, openai_error
    from llmkit.embeddings import Embedder
    from llmkit.engine import Engine
    from llmkit.errors import BadRequest
    from llmkit.metrics import Metrics, RequestCounter
    from llmkit.openapi import with_bounds, with_openai_errors
    from llmkit.origins import OriginGuard, Policy

    # Drop the routes llmkit replaces from llama_cpp.server's router before the app includes it.
    llama_server.router.routes[:] = [
        r for r in llama_server.router.routes if getattr(r, "path", None) not in _REPLACED_ROUTES
    ]
    app = llama_server.create_app(
        server_settings=ServerSettings(
            host=config.host, port=config.port, api_key=prepared.api_key, interrupt_requests=False
        ),
        model_settings=[
            ModelSettings(
                model=str(prepared.path),
                model_alias=prepared.name,
                # This Llama tokenizes and renders chat templates; the engine makes its own
                # context (with the slots) for generation, so this one is kept small.
                n_ctx=_TOKENIZER_CTX,
                n_batch=_TOKENIZER_CTX,
                n_ubatch=_TOKENIZER_CTX,
                n_threads=prepared.threads,
                n_threads_batch=prepared.threads,
                n_gpu_layers=0,
                chat_format=prepared.chat_format,
                logits_all=False,
                verbose=config.verbose,
            )
        ],
    )
    # llama_cpp.server lets every origin in, with credentials: llmkit's OriginGuard decides.
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    llama = llama_server._llama_proxy(None)  # type: ignore[misc]  # the model create_app loaded
    metrics = Metrics()
    engine = Engine(
        llama.model,
        parallel=prepared.parallel,
        slot_ctx=prepared.n_ctx,
        threads=prepared.threads,
        max_queue=config.max_queue,
        kv_type=prepared.kv_type,
        speculation=not config.no_speculation,
        draft_from_recent=config.draft_from_recent,
        observer=metrics,
    )
    grammar.warm_up(engine.vocab, engine.eog)  # llguidance's tokenizer, before any JSON request
    # Its context (and --embedding-model's weights) only once a request asks for embeddings;
    # half the threads, so that generation keeps cores of its own while vectors are computed.
    embedder = Embedder(
        prepared.embedding_path or llama.model,
        n_ctx=prepared.embedding_ctx or prepared.n_ctx,
        threads=max(1, prepared.threads // 2),
        max_queue=config.max_queue,
    )
    metrics.watch(engine, embedder)
    api = Api(
        engine,
        llama,
        prepared.name,
        prepared.api_key,
        chat_template(llama, prepared),
        sizing=prepared.sizing,
        embedder=embedder,
    )
    app.include_router(api.router())
    app.add_api_route(
        "/metrics",
        _metrics_route(metrics),
        methods=["GET"],
        dependencies=[Depends(api.check_key)],
        include_in_schema=False,  # Prometheus text, not an OpenAI route
    )
    if not config.no_ui:
        from llmkit import webui

        webui.add_routes(app, webui.Page.packaged())  # no API key: the page asks for it
    app.add_middleware(RequestCounter, metrics=metrics)
    fastapi_schema = app.openapi

    bounds = {params.TOKEN_ID: llama.n_vocab() - 1}
    if prepared.embedding_path is None:  # the embeddings' model is this one (else not loaded yet)
        bounds[params.EMBEDDING_TOKEN_ID] = llama.n_vocab() - 1
        bounds[params.EMBEDDING_SIZE] = llama_cpp.llama_model_n_embd_out(llama.model)

    def openapi() -> dict[str, Any]:  # FastAPI's, with the errors and bounds as llmkit answers
        if not getattr(app, "llmkit_schema", None):
            app.llmkit_schema = with_bounds(with_openai_errors(fastapi_schema()), bounds)  # type: ignore[attr-defined]
        return app.llmkit_schema  # type: ignore[attr-defined,no-any-return]

    app.openapi = openapi  # type: ignore[method-assign]
    policy = Policy.for_server(config.host, config.allow_origin, config.allow_host)
    app.add_middleware(OriginGuard, policy=policy)  # outermost: before anything else runs

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("", "application/json"):  # FastAPI did not read it as JSON at all
            return openai_error(
                415, f"the body must be JSON (Content-Type: application/json), not {kind}"
            )
        message, param = params.invalid(exc.errors())
        return openai_error(400, message, param=param)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Any, exc: BadRequest) -> Any:
        return openai_error(400, str(exc), param=exc.param)

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Any, exc: Unauthorized) -> Any:
        return openai_error(
            401,
            "invalid or missing API key (send Authorization: Bearer KEY)",
            code="invalid_api_key",
        )

    @app.exception_handler(HTTPException)  # starlette's: unknown routes and methods too
    async def http_error(_: Any, exc: HTTPException) -> Any:
        return openai_error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Any, exc: Exception) -> Any:
        # A bug, not the request's fault: the id ties the answer to the traceback in the log.
        error_id = uuid.uuid4().hex[:12]
        logging.getLogger("llmkit").exception("request failed (error id %s)", error_id)
        return openai_error(
            500,
            f"internal error (id {error_id}): {exc}",
            kind="server_error",
            code="internal_error",
        )

    return app, api, engine


def chat_template(llama: Any, prepared: Plan) -> Any:
    """The Jinja template requests render through (--chat-template-file's, else the GGUF's when
    no chat format is named), installed as the model's chat handler; tools use it too."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llmkit.tools.render import ChatTemplate

    text = prepared.chat_template
    if text is None and prepared.chat_format is None:
        text = llama.metadata.get("tokenizer.chat_template")
    model = llama._model
    bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
    eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
    if prepared.chat_template is not None:
        llama.chat_handler = Jinja2ChatFormatter(text or "", eos, bos).to_chat_handler()
    return ChatTemplate(text, bos, eos)


def _metrics_route(metrics: Any) -> Any:
    from fastapi import Response

    async def metrics_route():  # type: ignore[no-untyped-def]  # (an annotation breaks /openapi.json)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return metrics_route


def base_url(config: ServeSettings) -> str:
    """The /v1 URL a client on this machine uses to reach the server."""
    return f"http://{url_host(config.host)}:{config.port}/v1"


def page_url(config: ServeSettings) -> str | None:
    """The web chat's address on this machine; None with --no-ui."""
    return None if config.no_ui else f"http://{url_host(config.host)}:{config.port}/"


def banner(config: ServeSettings, prepared: Plan) -> str:
    url = base_url(config)
    lines = [
        f"llmkit serving {prepared.name}",
        f"  url          {url}",
        f"  web chat     {page_url(config) or 'off (--no-ui)'}",
        f"  model file   {prepared.path}",
        f"  threads      {prepared.threads}",
        f"  context      {prepared.n_ctx} tokens per request (KV cache {prepared.kv_type})",
        f"  parallel     {prepared.parallel} slots (batched decoding)",
        f"  sized        {prepared.sizing}",
        f"  speculation  {_speculation(config)}",
        f"  embeddings   {prepared.embedding_path or 'the served model'}"
        f", inputs of {prepared.embedding_ctx or prepared.n_ctx} tokens at most",
        f"  chat format  {prepared.chat_format or ('from --chat-template-file' if prepared.chat_template else 'from the model (GGUF chat template)')}",
        f"  queue        {config.max_queue} waiting at most; grace {config.grace:g} s on shutdown",
        f"  api key      {'required' if prepared.api_key else 'none'}",
    ]
    return "\n".join(lines)


def _speculation(config: ServeSettings) -> str:
    if config.no_speculation:
        return "off"
    if config.draft_from_recent:
        return "n-gram drafts (prompt lookup, and recent requests)"
    return "n-gram drafts (prompt lookup)"


def quiet_llama_logs() -> None:
    """Keep llama.cpp's own log lines (llama_context: ..., llama_kv_cache_iswa: ...) off the output.

    `Llama(verbose=False)` only quiets its own load, and llama-cpp-python's log callback maps the
    levels of an older llama.cpp (its ERROR is today's WARN), so the engine's context creation
    still prints. Errors still get through.
    """
    global _quiet_callback
    import llama_cpp

    if _quiet_callback is None:

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            global _last_level
            if level != _GGML_LOG_LEVEL_CONT:
                _last_level = level
            if _last_level == _GGML_LOG_LEVEL_ERROR:
                sys.stderr.write(text.decode("utf-8", errors="replace"))
                sys.stderr.flush()

        _quiet_callback = callback
    llama_cpp.llama_log_set(_quiet_callback, ctypes.c_void_p(0))


# ggml.h's enum ggml_log_level in the llama.cpp llama-cpp-python 0.3.36 bundles: NONE, DEBUG,
# INFO, WARN, ERROR, CONT (a continuation of the previous line).
_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5
_last_level = 0
# llama.cpp keeps a bare pointer to the callback: the ctypes object must outlive every call.
_quiet_callback: Any = None


def run(config: ServeSettings) -> None:
    """Serve until SIGTERM or Ctrl-C; in-flight requests get `grace` seconds to finish.

    SIGTERM first drains: /ready answers 503 while requests are still served for `drain_seconds`,
    then the listener closes. Ctrl-C (or a second signal) closes it at once.
    """
    import uvicorn

    from llmkit.notify import notify

    if not is_loopback(config.host) and not (config.api_key or config.api_key_file):
        print(
            f"warning: serving on {config.host} without an API key: anyone who can reach this "
            "port can use the model (set --api-key or --api-key-file)",
            file=sys.stderr,
            flush=True,
        )
    prepared = plan(config, log=lambda m: print(m, file=sys.stderr, flush=True))
    if not config.verbose:
        quiet_llama_logs()  # before build_app loads the model and the engine makes its context
    print(banner(config, prepared), flush=True)
    app, api, engine = build_app(config, prepared)

    class Server(uvicorn.Server):
        stop_started = False  # the listener is closing and the grace period has begun

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"ready: {prepared.name} on {base_url(config)}", flush=True)
                notify("READY=1")

        def handle_exit(self, sig: int, frame: Any) -> None:
            if api.shutting_down:  # a second signal: stop draining, close the listener now
                self.stop_listening(sig)
                return
            api.shutting_down = True  # /ready answers 503 from now on
            notify("STOPPING=1")
            drain = config.drain_seconds if sig == signal.SIGTERM else 0.0
            if drain <= 0:  # Ctrl-C is a person at the terminal: no balancer to wait for
                self.stop_listening(sig)
                return
            print(
                f"draining: /ready answers 503; still serving new requests for {drain:g} s",
                flush=True,
            )
            # A balancer only learns of the drain at its next health checks: requests it sends
            # meanwhile must still be served, or they fail (the listener closed at once loses them).
            timer = threading.Timer(drain, self.stop_listening, args=(sig,))
            timer.daemon = True
            timer.start()

        def stop_listening(self, sig: int) -> None:
            if not self.stop_started:
                self.stop_started = True
                print(
                    f"shutting down: finishing accepted requests (at most {config.grace:g} s)",
                    flush=True,
                )
                # After the grace period, stop what still runs, so that each unfinished response
                # ends with an error event instead of being cut by uvicorn's task cancellation.
                timer = threading.Timer(config.grace, engine.close)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, None)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutdown, which turns a clean stop into exit 143
            # (SIGTERM) or a KeyboardInterrupt; a service manager wants exit 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {
                s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=True,
        timeout_graceful_shutdown=math.ceil(config.grace) + 3,
        timeout_keep_alive=5,
    )
    server = Server(uv_config)
    try:
        server.run()
    finally:
        engine.close(timeout=5.0)
        if api.embedder is not None:
            api.embedder.close()
    if not server.started:
        raise LlmkitError(f"could not listen on {config.host}:{config.port} (is the port in use?)")
    print("stopped", flush=True)
