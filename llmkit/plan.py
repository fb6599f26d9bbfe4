"""The launch plan of `llmkit serve`: everything decided before the model loads.

Which file (resolved in the catalog, pulled unless offline), how many threads, how long a context,
which chat format, which API key, and whether it all fits in memory. The server (`server.py`) and
the benchmark both start from a Plan.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit import settings
from llmkit.errors import LlmkitError
from llmkit.settings import ServeSettings


@dataclass(frozen=True)
class Plan:
    """What to load and how."""

    name: str
    path: Path
    threads: int
    n_ctx: int
    chat_format: str | None  # None: the GGUF's own template
    api_key: str | None = None  # from --api-key, or read from --api-key-file
    embedding_path: Path | None = None  # --embedding-model's file; None: the served model embeds
    embedding_ctx: int = 0  # the longest input /v1/embeddings takes; 0: n_ctx


def plan(config: ServeSettings, log: Callable[[str], None] = print) -> Plan:
    """Resolve the model (pulling it unless offline), pick context and chat format, check memory."""
    from llmkit.catalog import load_catalog, resolve
    from llmkit.modelinfo import check_fits, read_model_info
    from llmkit.store import Store

    if not config.model:
        raise LlmkitError(
            "no model: pass --model NAME (e.g. llama-2-7b-chat; gemma-3-270m works offline "
            f"with llmkit[tiny]) or set {ServeSettings.env_name('model')}"
        )
    # Before any download: a missing key file should not wait for a 4 GB pull to be noticed.
    api_key = config.api_key
    if config.api_key_file is not None:
        api_key = settings.read_api_key_file(config.api_key_file)
    reference = resolve(config.model, load_catalog())
    store = Store(
        config.models_dir or settings.default_models_dir(),
        offline=config.offline or settings.hub_offline(),
    )
    pulled = store.ensure(reference, log=log, show_progress=sys.stderr.isatty())
    spec = pulled.spec
    info = read_model_info(pulled.path)
    if config.ctx is not None:
        n_ctx = config.ctx
    else:
        trained = (
            (spec.context_length if spec else None)
            or info.context_length
            or settings.DEFAULT_CTX_CAP
        )
        n_ctx = min(trained, settings.DEFAULT_CTX_CAP)
    chat_format = config.chat_format or (spec.chat_format if spec else None)
    if chat_format is None and not info.chat_template:
        raise LlmkitError(
            f"{pulled.path.name} has no chat template and the catalog does not know it: "
            "pass --chat-format (e.g. chatml, llama-2, gemma, mistral-instruct)"
        )
    if chat_format is not None:
        _check_chat_format(chat_format)
    embedding_path, embedding_info, embedding_ctx = None, info, n_ctx
    if config.embedding_model:
        embedding = store.ensure(
            resolve(config.embedding_model, load_catalog()),
            log=log,
            show_progress=sys.stderr.isatty(),
        )
        embedding_path, embedding_info = embedding.path, read_model_info(embedding.path)
        trained = (
            (embedding.spec.context_length if embedding.spec else None)
            or embedding_info.context_length
            or settings.DEFAULT_CTX_CAP
        )
        embedding_ctx = min(trained, config.ctx or settings.DEFAULT_CTX_CAP)
    if not settings.skip_memory_check():
        extra = embedding_info.embedding_bytes(embedding_ctx, separate=embedding_path is not None)
        check_fits(info, n_ctx, config.parallel, embedding=extra)
    return Plan(
        name=spec.name if spec else pulled.path.stem,
        path=pulled.path,
        threads=config.threads or settings.physical_cores(),
        n_ctx=n_ctx,
        chat_format=chat_format,
        api_key=api_key,
        embedding_path=embedding_path,
        embedding_ctx=embedding_ctx,
    )


def _check_chat_format(chat_format: str) -> None:
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    known = LlamaChatCompletionHandlerRegistry()._chat_handlers
    if chat_format not in known:
        raise LlmkitError(f"unknown chat format {chat_format!r}; known: {', '.join(sorted(known))}")
