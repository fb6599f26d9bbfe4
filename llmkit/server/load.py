"""Loading a planned model: the one loader, which the server and the benchmark both use.

A model is served by a small `llama_cpp.Llama` that only tokenizes and renders chat templates,
an Engine with its own context (the slots) for generation, and an Embedder that makes its context
only once a request asks for embeddings. `Served` holds them, one value per loaded model, so that
a route finds everything it needs by the request's model; it frees them only once no request's
work on a worker thread uses them (`Served.work`).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from starlette.concurrency import run_in_threadpool

from llmkit import grammar
from llmkit.embeddings import Embedder
from llmkit.engine import CacheConfig, Engine, Observer, ShuttingDown
from llmkit.plan import Plan
from llmkit.prompts import TextLimit, longest_token_bytes
from llmkit.sampling import GRAMMAR_SECONDS
from llmkit.tools.family import Family
from llmkit.tools.render import ChatTemplate, tool_family

# The context of the Llama that only tokenizes and renders prompts (llama.cpp's minimum).
TOKENIZER_CTX = 256

# Each model file's longest token in bytes (prompts.longest_token_bytes: 0.2-0.5 s of a load).
_TOKEN_BYTES: dict[tuple[str, int], int | None] = {}

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(eq=False)
class Served:
    """One loaded model and everything a request to it needs."""

    name: str
    plan: Plan
    llama: llama_cpp.Llama  # tokenizes and renders prompts
    engine: Engine
    template: ChatTemplate  # what tools are offered through
    embedder: Embedder
    warming: threading.Thread | None = None  # llguidance's tokenizer, built in the background
    limit: TextLimit | None = None  # the most text a prompt can be (None: no bound is known)
    family: Family = field(init=False)  # how its template calls tools
    _users: int = field(default=0, init=False)  # work() calls running
    _closed: bool = field(default=False, init=False)
    _idle: threading.Condition = field(default_factory=threading.Condition, init=False)

    def __post_init__(self) -> None:
        self.family = tool_family(self.template)

    async def work(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """fn on a worker thread (a prompt rendered and tokenized, grammars built), holding the
        model until it returns: close() frees nothing of llama.cpp's under it.

        The thread holds the model, not the request's task: the server's shutdown cancels the
        tasks left after its grace, and their threads go on."""
        return await run_in_threadpool(self._held, functools.partial(fn, *args, **kwargs))

    def _held(self, call: Callable[[], R]) -> R:
        with self._idle:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            self._users += 1
        try:
            return call()
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def tool_support(self) -> dict[str, Any]:
        """How this model's template calls tools: natively (which family) or generic JSON."""
        return {"native": self.family.native, "format": self.family.name}

    def tokens(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=True, special=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the engine and the embedder, then free the model once nothing uses it."""
        self.engine.close(timeout=timeout)
        self.embedder.close()
        if self.warming is not None:  # it reads the model's vocabulary
            self.warming.join()
        with self._idle:
            self._closed = True  # no work() starts from now on
            unused = self._idle.wait_for(lambda: self._users == 0, timeout)
        # llguidance's view of the vocabulary is kept by its address: a model loaded again (several
        # models, unloaded when idle) gets another, and this one would stay in memory for good.
        grammar.forget(self.engine.vocab)
        # A scheduler that did not stop in time, or a prompt still tokenized after the timeout,
        # uses the model: leave it to the process exit (freed under them, llama.cpp crashes).
        if self.engine.ctx is None and unused:
            self.llama.close()


def load(
    plan: Plan,
    *,
    max_queue: int,
    speculation: bool = True,
    draft_from_recent: bool = False,
    observer: Observer | None = None,
    verbose: bool = False,
    grammar_seconds: float = GRAMMAR_SECONDS,
    warm: bool = True,
) -> Served:
    """Load the plan's model: its tokenizer, its engine (the slots) and its embedder. `warm`
    builds llguidance's tokenizer in the background at once (else on the first JSON request)."""
    llama = llama_cpp.Llama(
        model_path=str(plan.path),
        # This Llama tokenizes and renders chat templates; the engine makes its own context (with
        # the slots) for generation, so this one is kept small.
        n_ctx=TOKENIZER_CTX,
        n_batch=TOKENIZER_CTX,
        n_ubatch=TOKENIZER_CTX,
        n_threads=plan.threads,
        n_threads_batch=plan.threads,
        n_gpu_layers=0,
        chat_format=plan.chat_format,
        logits_all=False,
        verbose=verbose,
    )
    try:
        template = chat_template(llama, plan)
        engine = Engine(
            llama.model,
            parallel=plan.parallel,
            slot_ctx=plan.n_ctx,
            threads=plan.threads,
            max_queue=max_queue,
            kv_type=plan.kv_type,
            speculation=speculation,
            draft_from_recent=draft_from_recent,
            observer=observer,
            grammar_seconds=grammar_seconds,
            cache=CacheConfig(plan.cache_ram, plan.cache_dir, plan.cache_disk, plan.model_sha256),
        )
    except BaseException:
        llama.close()
        raise
    # Before any JSON request needs it: seconds for a large vocabulary (Gemma 3's 262k tokens).
    warming = grammar.warm_up(engine.vocab, engine.eog) if warm else None
    # Its context (and --embedding-model's weights) only once a request asks for embeddings;
    # half the threads, so that generation keeps cores of its own while vectors are computed.
    embedder = Embedder(
        plan.embedding_path or llama.model,
        n_ctx=plan.embedding_ctx or plan.n_ctx,
        threads=max(1, plan.threads // 2),
        max_queue=max_queue,
    )
    key = (str(plan.path), plan.path.stat().st_mtime_ns)
    if key not in _TOKEN_BYTES:  # a model loaded again (several models) reads its vocabulary once
        _TOKEN_BYTES[key] = longest_token_bytes(llama.model)
    token_bytes = _TOKEN_BYTES[key]
    limit = None if token_bytes is None else TextLimit(plan.n_ctx, token_bytes)
    return Served(plan.name, plan, llama, engine, template, embedder, warming, limit)


def chat_template(llama: llama_cpp.Llama, plan: Plan) -> ChatTemplate:
    """The Jinja template requests render through (--chat-template-file's, else the GGUF's when
    no chat format is named), installed as the model's chat handler; tools use it too."""
    text = plan.chat_template
    if text is None and plan.chat_format is None:
        text = llama.metadata.get("tokenizer.chat_template")
    model = llama._model
    bos = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
    eos = model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else ""
    if plan.chat_template is not None:
        llama.chat_handler = Jinja2ChatFormatter(text or "", eos, bos).to_chat_handler()
    return ChatTemplate(text, bos, eos)


def quiet_llama_logs() -> None:
    """Keep llama.cpp's own log lines (llama_context: ..., llama_kv_cache_iswa: ...) off the output.

    `Llama(verbose=False)` only quiets its own load, and llama-cpp-python's log callback maps the
    levels of an older llama.cpp (its ERROR is today's WARN), so the engine's context creation
    still prints. Errors still get through.
    """
    global _quiet_callback
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
