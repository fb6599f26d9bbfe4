"""`llmkit serve`: the HTTP layer. `run` plans, loads the model, builds the app and serves it with
uvicorn until a signal, then drains and stops cleanly.

The package, one job a module: `load` (the one model loader), `registry` (the served models:
found by name, loaded on demand, unloaded when idle), `budget` (which idle models make room for
another), `app` (the route table), `errors`
(the one error mapping), `bodies` and `schemas` (request bodies), `choices` (a body into the
engine's choices), `respond` (one request's life), a shaper per wire API (`chat`,
`response_events`), `responses` (the Responses API into chat), `info` (the routes that generate
nothing), and `openapi`, `origins`, `metrics`, `webui`.
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from llmkit.durations import human_duration
from llmkit.errors import LlmkitError
from llmkit.net import is_loopback, url_host
from llmkit.plan import Fleet, Plan, plan_fleet
from llmkit.server import webui
from llmkit.settings import ServeSettings
from llmkit.sizes import human_size


def base_url(config: ServeSettings) -> str:
    """The /v1 URL a client on this machine uses to reach the server."""
    return f"http://{url_host(config.host)}:{config.port}/v1"


def banner(config: ServeSettings, fleet: Fleet) -> str:
    url = base_url(config)
    prepared = fleet.plans[0]
    lines = [
        f"llmkit serving {', '.join(p.name for p in fleet.plans)}",
        f"  url          {url}",
        f"  web chat     {'off (--no-ui)' if config.no_ui else webui.page_url(url)}",
        f"  model file   {prepared.path}",
        f"  threads      {prepared.threads}",
        f"  context      {prepared.n_ctx} tokens per request (KV cache {prepared.kv_type})",
        f"  parallel     {prepared.parallel} slots (batched decoding)",
        f"  sized        {prepared.sizing}",
        f"  speculation  {_speculation(config)}",
        f"  embeddings   {prepared.embedding_path or 'the served model'}"
        f", inputs of {prepared.embedding_ctx or prepared.n_ctx} tokens at most",
        f"  chat format  {prepared.chat_format or ('from --chat-template-file' if prepared.chat_template else 'from the model (GGUF chat template)')}",
        f"  prompt cache {_prompt_cache(prepared)}",
        f"  queue        {config.max_queue} choices waiting at most; grace {config.grace:g} s on shutdown",
        f"  limits       bodies of {human_size(prepared.max_body)} at most, {config.request_timeout:g} s "
        f"to send a request, {config.max_connections} connections",
        f"  api key      {'required' if prepared.api_key else 'none'}",
    ]
    if len(fleet.plans) > 1:
        lines[4:4] = [f"  (the model, context and cache lines are {prepared.name}'s)"]
        lines += _models(fleet)
    return "\n".join(lines)


def _models(fleet: Fleet) -> list[str]:
    """The banner's lines for several models: the budget, and each model's cost and lifetime."""
    budget = human_size(fleet.budget) if fleet.budget is not None else "unchecked"
    stay = human_duration(fleet.keep_alive)
    lines = [
        f"  memory       {budget} for all loaded models ({fleet.budget_reason})",
        f"  models       loaded on first use, unloaded idle after {stay} (or for room)",
    ]
    for p in fleet.plans:
        if p.name in fleet.failed:
            lines.append(f"    {p.name:<24} FAILED: {fleet.failed[p.name]}")
            continue
        if p.name in fleet.too_big:
            when = f"CANNOT LOAD: {fleet.too_big[p.name]}"
        else:
            when = "loaded at start, kept" if p.name in fleet.preload else "on demand"
        lines.append(
            f"    {p.name:<24} {human_size(p.memory_bytes):>9}  {p.parallel} slots × "
            f"{p.n_ctx} tokens  {when}"
        )
    return lines


def _prompt_cache(prepared: Plan) -> str:
    ram = f"RAM {human_size(prepared.cache_ram)}" if prepared.cache_ram else "RAM off"
    if prepared.cache_dir is None:
        return f"{ram}, disk off"
    return f"{ram}, disk {human_size(prepared.cache_disk)} in {prepared.cache_dir}"


def _speculation(config: ServeSettings) -> str:
    if config.no_speculation:
        return "off"
    if config.draft_from_recent:
        return "n-gram drafts (prompt lookup, and recent requests)"
    return "n-gram drafts (prompt lookup)"


def raise_open_files_limit(connections: int) -> None:
    """Raise the soft limit on open files to the hard one (as Go does for Ollama): systemd's
    default soft limit, 1024, is reached by a few hundred clients; warn when even the hard limit
    is below what --max-connections needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = connections + _FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(
            f"warning: at most {soft} open files (ulimit -n), fewer than --max-connections "
            f"{connections} needs ({needed}): raise LimitNOFILE or lower --max-connections",
            file=sys.stderr,
            flush=True,
        )


# The model file, llama.cpp's and Python's own files, the log: a margin over the sockets.
_FILES_BESIDES_CONNECTIONS = 64


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
    fleet = plan_fleet(config, log=lambda m: print(m, file=sys.stderr, flush=True))
    prepared = fleet.plans[0]
    raise_open_files_limit(config.max_connections)
    from llmkit.server.app import build_app
    from llmkit.server.deadlines import deadline_protocol
    from llmkit.server.load import Served, load, quiet_llama_logs
    from llmkit.server.metrics import Metrics
    from llmkit.server.registry import Registry

    if not config.verbose:
        quiet_llama_logs()  # before the model loads and the engine makes its context
    print(banner(config, fleet), flush=True)
    metrics = Metrics()

    def loader(planned: Plan) -> Served:
        # A model loaded on demand builds llguidance's tokenizer on its first JSON request, not
        # at once: an unload waits for that build, which would make every switch seconds slower.
        return load(
            planned,
            max_queue=config.max_queue,
            speculation=not config.no_speculation,
            draft_from_recent=config.draft_from_recent,
            observer=metrics.observer(planned.name),
            verbose=config.verbose,
            grammar_seconds=config.grammar_seconds,
            warm=planned.name in fleet.preload,
        )

    registry = Registry(fleet, loader, max_waiting=config.max_queue)
    registry.preload_now()
    metrics.watch(registry)
    app = build_app(config, registry, prepared.api_key, metrics, prepared.max_body)

    class Server(uvicorn.Server):
        stop_started = False  # the listener is closing and the grace period has begun

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                names = ", ".join(fleet.preload)
                print(f"ready: {names} on {base_url(config)}", flush=True)
                notify("READY=1")

        def handle_exit(self, sig: int, frame: Any) -> None:
            if registry.draining:  # a second signal: stop draining, close the listener now
                self.stop_listening(sig)
                return
            registry.draining = True  # /ready answers 503 from now on
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
                timer = threading.Timer(config.grace, registry.stop_generating)
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
        http=deadline_protocol(config.request_timeout),
        limit_concurrency=config.max_connections,
    )
    server = Server(uv_config)
    try:
        server.run()
    finally:
        registry.close(timeout=5.0)
    if not server.started:
        raise LlmkitError(f"could not listen on {config.host}:{config.port} (is the port in use?)")
    print("stopped", flush=True)
