"""The launch plan of `llmkit serve`: everything decided before the model loads.

Which file (resolved in the catalog, pulled unless offline), how many threads, how many slots and
how long a context (sized to the memory available when not given: `size_slots`), which chat format,
which API key. The server (`llmkit.server.load`) and the benchmark both start from a Plan.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit import settings
from llmkit.errors import LlmkitError, NotEnoughSpace, UnknownModel
from llmkit.settings import ServeSettings
from llmkit.sizes import human_size, parse_size

# The shortest context worth serving by default (a chat with a page of history); a model trained on
# less gets its own.
USEFUL_CTX = 2048
# A context chosen by memory is a multiple of this (llama.cpp pads its cache to 256 cells).
_CTX_STEP = 256


def kv_cells(slots: int, tokens: int) -> int:
    """The KV cells of `slots` slots of `tokens` each: llama.cpp pads each slot's stream to a
    multiple of 256 cells (64-token slots take 256 cells each)."""
    return slots * -(-tokens // _CTX_STEP) * _CTX_STEP


@dataclass(frozen=True)
class Plan:
    """What to load and how."""

    name: str
    path: Path
    threads: int
    n_ctx: int  # per slot
    chat_format: str | None  # None: the GGUF's own template
    api_key: str | None = None  # from --api-key, or read from --api-key-file
    chat_template: str | None = None  # from --chat-template-file: replaces the model's
    parallel: int = settings.DEFAULT_PARALLEL
    kv_type: str = "f16"
    sizing: str = ""  # why these slots and this context, for the banner and /health
    embedding_path: Path | None = None  # --embedding-model's file; None: the served model embeds
    embedding_ctx: int = 0  # the longest input /v1/embeddings takes; 0: n_ctx
    max_body: int = 4 * 1024 * 1024  # --max-body, in bytes
    cache_ram: int = 0  # bytes of the prompt cache's RAM tier (0: none)
    cache_dir: Path | None = None  # its disk tier's folder (None: no disk tier)
    cache_disk: int = 0  # bytes it may use there
    model_sha256: str = ""  # the model file's, which the disk tier's states are keyed by
    # What the model costs loaded: weights, KV cache, buffers, embedding context, prompt cache.
    memory_bytes: int = 0
    aliases: tuple[str, ...] = ()  # other names a request may use for it (the catalog's)


@dataclass(frozen=True)
class Fleet:
    """The models one server serves, and the memory they share."""

    plans: list[Plan]  # in the order given; the first is the default, loaded at start
    budget: int | None  # bytes all loaded models may use together (None: not known, unchecked)
    budget_reason: str  # where the budget comes from, for the banner
    too_big: dict[str, str]  # served names that cannot load even alone, and why
    failed: dict[str, str]  # served names whose file could not be read, and why
    preload: tuple[str, ...]  # names loaded at start and kept loaded
    keep_alive: float | None  # seconds an idle on-demand model stays (None: forever)


@dataclass(frozen=True)
class Sizing:
    """Slots and context per slot, and why."""

    parallel: int
    n_ctx: int
    reason: str


def size_slots(
    *,
    fixed_bytes: int,
    kv_bytes_per_token: float,
    available: int | None,
    trained_ctx: int,
    parallel: int | None = None,
    ctx: int | None = None,
    max_parallel: int = settings.DEFAULT_PARALLEL,
    ctx_cap: int = settings.DEFAULT_CTX_CAP,
) -> Sizing:
    """The most slots (up to max_parallel), then the longest context, that fit in `available`.

    `fixed_bytes` is what the model needs whatever the context (weights, compute buffers),
    `kv_bytes_per_token` its KV cache per token. Given values (`parallel`, `ctx`) are kept or refused
    (NotEnoughSpace), never changed; `available` None (not known) picks the defaults unchecked.
    """
    longest = min(trained_ctx, ctx_cap) if ctx is None else ctx
    useful = min(USEFUL_CTX, longest) if ctx is None else ctx  # the least each slot must hold

    def needs(slots: int, tokens: int) -> int:
        return int(fixed_bytes + kv_cells(slots, tokens) * kv_bytes_per_token)

    def fits(slots: int, tokens: int) -> bool:
        return available is None or needs(slots, tokens) <= available

    def longest_fitting(slots: int) -> int:
        if fits(slots, longest):
            return longest
        assert available is not None
        room = (available - fixed_bytes) / (slots * kv_bytes_per_token)
        return max(useful, int(room) // _CTX_STEP * _CTX_STEP)

    where = "memory not known" if available is None else f"{human_size(available)} available"
    if parallel is not None and ctx is not None:
        if not fits(parallel, ctx):
            raise _refusal(needs(parallel, ctx), available, f"{parallel} slots of {ctx} tokens")
        return Sizing(parallel, ctx, f"as asked ({where})")
    if parallel is None:
        slots = max_parallel
        while slots > 1 and not fits(slots, useful):
            slots -= 1
    else:
        slots = parallel
    if not fits(slots, useful):
        asked = f"{slots} slot{'s' if slots > 1 else ''} of {useful} tokens"
        raise _refusal(needs(slots, useful), available, asked)
    n_ctx = longest_fitting(slots) if ctx is None else ctx
    why = []
    if parallel is None:
        why.append(
            f"{slots} slots"
            if slots == max_parallel
            else f"{slots} of {max_parallel} slots (more would not fit {useful} tokens each)"
        )
    if ctx is None:
        why.append(
            f"{n_ctx} tokens each"
            + (
                f" (the model's context, at most {ctx_cap})"
                if n_ctx == longest
                else f" (the longest that fits; the model's is {trained_ctx})"
            )
        )
    cache = human_size(int(kv_cells(slots, n_ctx) * kv_bytes_per_token))
    return Sizing(
        slots,
        n_ctx,
        f"{', '.join(why)}: {human_size(fixed_bytes)} model and buffers + {cache} KV cache, {where}",
    )


def cache_ram_for(available: int | None, needed: int) -> int:
    """--cache-ram's default: half the memory left once the model and its slots are counted, at
    most DEFAULT_CACHE_RAM_MAX (1/8 of it when the memory is not known)."""
    if available is None:
        return settings.DEFAULT_CACHE_RAM_MAX // 8
    return max(0, min(settings.DEFAULT_CACHE_RAM_MAX, (available - needed) // 2))


def _size(text: str, flag: str) -> int:
    from llmkit.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise LlmkitError(f"{flag}: {exc}") from None


def model_sha256(path: Path, verified: str | None, cache_dir: Path) -> str:
    """The model file's sha256: the store's, else hashed once and remembered (by size and mtime)
    in the cache folder, so that a local file is not hashed at every start."""
    if verified:
        return verified
    import hashlib
    import json
    import os

    from llmkit.engine.disk_cache import private_dir
    from llmkit.store import sha256_file

    stat = path.stat()
    memo = private_dir(cache_dir) / "models.json"
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    seen = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), list) and known[key][0] == seen:
        return str(known[key][1])
    sha = sha256_file(path, show_progress=sys.stderr.isatty())
    known[key] = [seen, sha]
    tmp = memo.with_name(f".models.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    except OSError:
        pass  # hashed again next time
    return sha


def _refusal(needed: int, available: int | None, what: str) -> NotEnoughSpace:
    return NotEnoughSpace(
        f"{what} need about {human_size(needed)} of memory but only {human_size(available)} is "
        "available; try a smaller --ctx, fewer --parallel slots, --kv-type q8_0 or a smaller model"
    )


def plan(config: ServeSettings, log: Callable[[str], None] = print) -> Plan:
    """The plan of the first model `config` serves (the benchmark's: one model)."""
    return plan_fleet(config, log).plans[0]


def plan_fleet(config: ServeSettings, log: Callable[[str], None] = print) -> Fleet:
    """Resolve every model served (pulling unless offline), size each within the memory budget,
    and say which cannot load even alone. With one model, one that does not fit is an error."""
    from llmkit.catalog import load_catalog
    from llmkit.modelinfo import available_memory
    from llmkit.store import Store

    store = Store(
        config.models_dir or settings.default_models_dir(),
        offline=config.offline or settings.hub_offline(),
    )
    references = list(config.model or [])
    if config.all_models:
        catalog = load_catalog()
        references += [m.name or str(m.path) for m in store.installed(catalog)]
    references = list(dict.fromkeys(references))
    if not references:
        raise LlmkitError(
            "no model: pass --model NAME (e.g. llama-2-7b-chat; gemma-3-270m works offline "
            f"with llmkit[tiny]), --all-models, or set {ServeSettings.env_name('model')}"
        )
    shared = _shared(config)
    keep_alive = _keep_alive(config.keep_alive)
    available = None if settings.skip_memory_check() else available_memory()
    budget, budget_reason = memory_budget(config.memory_budget, available)
    plans: list[Plan] = []
    too_big: dict[str, str] = {}
    failed: dict[str, str] = {}
    for reference in references:
        # Several models share the budget: each is sized within its share, or within the whole
        # budget when its share cannot hold it (it then needs the others unloaded).
        share = None if budget is None else budget // len(references)
        try:
            planned = _plan_model(config, reference, store, share, shared, log)
        except NotEnoughSpace:
            try:
                planned = _plan_model(config, reference, store, budget, shared, log)
            except NotEnoughSpace as exc:
                if len(references) == 1:
                    raise
                planned = _plan_model(config, reference, store, None, shared, log)
                too_big[planned.name] = str(exc)
        except UnknownModel as exc:
            # A file that cannot be read fails alone, with its reason, when others are served.
            if len(references) == 1 or not Path(reference).suffix == ".gguf":
                raise
            planned = Plan(Path(reference).stem, Path(reference), 1, 0, None)
            failed[planned.name] = str(exc)
        if any(p.name == planned.name for p in plans):
            raise LlmkitError(f"{planned.name} is served twice (--model {reference})")
        plans.append(planned)
    if len(too_big) + len(failed) == len(plans):
        reason = next(iter({**too_big, **failed}.values()))
        raise NotEnoughSpace(f"no model can be served: {reason}")
    names = {p.name for p in plans}
    preload = tuple(config.preload or [plans[0].name])
    for name in preload:
        if name not in names:
            raise LlmkitError(f"--preload {name}: not a served model ({', '.join(sorted(names))})")
        if name in too_big or name in failed:
            raise NotEnoughSpace(f"--preload {name}: {too_big.get(name) or failed[name]}")
    return Fleet(plans, budget, budget_reason, too_big, failed, preload, keep_alive)


def memory_budget(text: str | None, available: int | None) -> tuple[int | None, str]:
    """--memory-budget in bytes (a size, or a percentage of the memory available now), and where
    it comes from; None when the memory is not known and no size is given."""
    if text is None or text.strip().endswith("%"):
        percent = settings.DEFAULT_BUDGET_PERCENT if text is None else _percent(text)
        if available is None:
            return None, "not checked (memory not known)"
        budget = int(available * percent / 100)
        return budget, f"{percent:g}% of the {human_size(available)} available at start"
    return _size(text, "--memory-budget"), "--memory-budget"


def _percent(text: str) -> float:
    try:
        value = float(text.strip()[:-1])
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise LlmkitError(f"--memory-budget: {text!r} is not a percentage between 0 and 100")
    return value


def _keep_alive(text: str | None) -> float | None:
    from llmkit.durations import parse_duration

    try:
        return parse_duration(text if text is not None else settings.DEFAULT_KEEP_ALIVE)
    except ValueError as exc:
        raise LlmkitError(f"--keep-alive: {exc}") from None


@dataclass(frozen=True)
class _Shared:
    """What every served model's plan shares, read once (before any download)."""

    api_key: str | None
    max_body: int
    chat_template: str | None


def _shared(config: ServeSettings) -> _Shared:
    # Before any download: a missing key file should not wait for a 4 GB pull to be noticed.
    try:
        max_body = parse_size(config.max_body)
    except ValueError as exc:
        raise LlmkitError(f"--max-body: {exc}") from None
    api_key = config.api_key
    if config.api_key_file is not None:
        api_key = settings.read_api_key_file(config.api_key_file)
    chat_template = None
    if config.chat_template_file is not None:
        if config.chat_format:
            raise LlmkitError("give --chat-format or --chat-template-file, not both")
        try:
            chat_template = config.chat_template_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise LlmkitError(f"cannot read the chat template file: {exc}") from None
    return _Shared(api_key, max_body, chat_template)


def _plan_model(
    config: ServeSettings,
    reference_text: str,
    store: Any,
    available: int | None,
    shared: _Shared,
    log: Callable[[str], None],
) -> Plan:
    """One model's plan, sized within `available` bytes (None: unchecked)."""
    from llmkit.catalog import load_catalog, resolve
    from llmkit.engine import DEFAULT_N_BATCH
    from llmkit.engine.context import logit_rows
    from llmkit.modelinfo import KV_BYTES_PER_VALUE, OVERHEAD_BYTES, read_model_info

    chat_template = shared.chat_template
    reference = resolve(reference_text, load_catalog())
    pulled = store.ensure(reference, log=log, show_progress=sys.stderr.isatty())
    spec = pulled.spec
    info = read_model_info(pulled.path)
    if config.kv_type not in KV_BYTES_PER_VALUE:
        raise LlmkitError(
            f"unknown --kv-type {config.kv_type!r}; known: {', '.join(KV_BYTES_PER_VALUE)}"
        )
    trained = (
        (spec.context_length if spec else None) or info.context_length or settings.DEFAULT_CTX_CAP
    )
    embedding_path, embedding_info, embedding_trained = None, info, trained
    if config.embedding_model:
        embedding = store.ensure(
            resolve(config.embedding_model, load_catalog()),
            log=log,
            show_progress=sys.stderr.isatty(),
        )
        embedding_path, embedding_info = embedding.path, read_model_info(embedding.path)
        embedding_trained = (
            (embedding.spec.context_length if embedding.spec else None)
            or embedding_info.context_length
            or settings.DEFAULT_CTX_CAP
        )
    # The embedding context is made on the first embedding request: room is kept for it (at its
    # longest input) from the start, so that asking for vectors later cannot run out of memory.
    embedding_ctx = min(embedding_trained, config.ctx or settings.DEFAULT_CTX_CAP)
    embedding_bytes = embedding_info.embedding_bytes(
        embedding_ctx, separate=embedding_path is not None
    )
    cache_ram = None if config.cache_ram is None else _size(config.cache_ram, "--cache-ram")
    cache_disk = 0 if config.no_cache_disk else _size(config.cache_disk, "--cache-disk")
    # The logits llama.cpp holds for the most rows one decode asks for, which depends on the slots:
    # those asked for, else the most size_slots may pick.
    rows = logit_rows(config.parallel or settings.DEFAULT_PARALLEL, info.n_vocab, DEFAULT_N_BATCH)
    logits_bytes = info.logits_bytes(rows)
    fixed_bytes = info.size + OVERHEAD_BYTES + logits_bytes + embedding_bytes + (cache_ram or 0)
    sizing = size_slots(
        fixed_bytes=fixed_bytes,
        kv_bytes_per_token=info.kv_cache_bytes(1, config.kv_type),
        available=available,
        trained_ctx=trained,
        parallel=config.parallel,
        ctx=config.ctx,
    )
    chat_format = (
        None if chat_template else config.chat_format or (spec.chat_format if spec else None)
    )
    if chat_format is None and not info.chat_template and not chat_template:
        raise LlmkitError(
            f"{pulled.path.name} has no chat template and the catalog does not know it: "
            "pass --chat-format (e.g. chatml, llama-2, gemma, mistral-instruct)"
        )
    if chat_format is not None:
        _check_chat_format(chat_format)
    if cache_ram is None:  # the prompt cache takes part of what the slots leave
        kv_bytes = kv_cells(sizing.parallel, sizing.n_ctx) * info.kv_cache_bytes(1, config.kv_type)
        cache_ram = cache_ram_for(available, int(fixed_bytes + kv_bytes))
    cache_dir = None
    if cache_disk > 0:
        cache_dir = config.cache_dir or settings.default_cache_dir()
        sha = model_sha256(pulled.path, store.verified_sha(pulled.path), cache_dir)
    return Plan(
        name=spec.name if spec else pulled.path.stem,
        path=pulled.path,
        threads=config.threads or settings.physical_cores(),
        n_ctx=sizing.n_ctx,
        chat_format=chat_format,
        api_key=shared.api_key,
        chat_template=chat_template,
        parallel=sizing.parallel,
        kv_type=config.kv_type,
        sizing=sizing.reason,
        embedding_path=embedding_path,
        embedding_ctx=embedding_ctx if embedding_path else sizing.n_ctx,
        max_body=shared.max_body,
        cache_ram=cache_ram,
        cache_dir=cache_dir,
        cache_disk=cache_disk,
        model_sha256=sha if cache_dir is not None else "",
        memory_bytes=int(
            fixed_bytes
            + (cache_ram if config.cache_ram is None else 0)
            + kv_cells(sizing.parallel, sizing.n_ctx) * info.kv_cache_bytes(1, config.kv_type)
        ),
        aliases=spec.aliases if spec else (),
    )


def _check_chat_format(chat_format: str) -> None:
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    known = LlamaChatCompletionHandlerRegistry()._chat_handlers
    if chat_format not in known:
        raise LlmkitError(f"unknown chat format {chat_format!r}; known: {', '.join(sorted(known))}")
