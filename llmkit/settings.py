"""Defaults, LLMKIT_* environment variables and paths, in one place.

`ServeSettings` declares every setting of `llmkit serve` once: its default, its flags, its LLMKIT_*
variable, its help and its bounds. The CLI's options, `llmkit.serve()`'s keywords, the service's
env file and the benchmark are all made from those declarations.
"""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_CTX_CAP = 4096  # the longest context `llmkit serve` picks by itself
DEFAULT_PARALLEL = 4  # --parallel's default, which the benchmark uses too
# Two of `llmkit lb config`'s check intervals (inter 500ms, fall 2) and a margin for the check's
# own round trip: by then every balancer has stopped sending new requests here.
DEFAULT_DRAIN_SECONDS = 2.0
# The prompt cache: --cache-ram's default is at most this (llama-server's --cache-ram is 8 GiB);
# --cache-disk's default.
DEFAULT_CACHE_RAM_MAX = 8 * 10**9
DEFAULT_CACHE_DISK = "4GB"
# Several models: what --memory-budget leaves of the memory available at start (the rest is the
# margin for the process itself and the system), and how long an idle on-demand model stays.
DEFAULT_BUDGET_PERCENT = 90
DEFAULT_KEEP_ALIVE = "5m"


@dataclass(frozen=True)
class Setting:
    """How a serve setting is given: flags, LLMKIT_* variable, help text and bounds."""

    flags: tuple[str, ...]  # () : --field-name; a bool's flags have no --no- form
    env: str | None  # None: a flag only
    help: str
    min: int | None = None
    max: int | None = None
    metavar: str | None = None


def _setting(
    default: Any,
    env: str | None,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    min: int | None = None,
    max: int | None = None,
    metavar: str | None = None,
) -> Any:
    spec = Setting(flags, env, help, min, max, metavar)
    return field(default=default, metadata={"setting": spec})


@dataclass(frozen=True)
class ServeSettings:
    """What `llmkit serve` runs with; each field is one flag and (mostly) one LLMKIT_* variable.

    The CLI reads them with the precedence flag > LLMKIT_* variable > default (typer does the
    reading, from these declarations); a program builds one directly.
    """

    model: list[str] | None = _setting(
        None,
        "LLMKIT_MODEL",
        "Catalog name, OWNER/REPO/FILE.gguf, OWNER/REPO:QUANT or a .gguf path; repeat it to "
        "serve several (each request's `model` picks one; the first loads at start).",
        flags=("--model", "-m"),
    )
    all_models: bool = _setting(
        False,
        "LLMKIT_ALL_MODELS",
        "Serve every model in the store (besides any --model).",
        flags=("--all-models",),
    )
    preload: list[str] | None = _setting(
        None,
        "LLMKIT_PRELOAD",
        "A served model to load at start and keep loaded (repeat it; default: the first --model).",
        metavar="NAME",
    )
    memory_budget: str | None = _setting(
        None,
        "LLMKIT_MEMORY_BUDGET",
        "Memory all loaded models may use together (a size: 4GiB, 900MB; or a percentage of the "
        f"memory available at start: 80%; default: {DEFAULT_BUDGET_PERCENT}% of it). Idle models "
        "are unloaded, least recently used first, to load another.",
        metavar="SIZE",
    )
    keep_alive: str | None = _setting(
        None,
        "LLMKIT_KEEP_ALIVE",
        f"How long a model loaded on demand stays loaded once idle (e.g. 30s, 10m, 1h; 0: unload "
        f"when done; -1: forever; default {DEFAULT_KEEP_ALIVE}). Preloaded models stay.",
        metavar="DURATION",
    )
    embedding_model: str | None = _setting(
        None,
        "LLMKIT_EMBEDDING_MODEL",
        "The GGUF /v1/embeddings uses, named as --model is (default: the served model).",
        metavar="REF",
    )
    host: str = _setting("127.0.0.1", "LLMKIT_HOST", "Address to listen on.")
    port: int = _setting(8000, "LLMKIT_PORT", "Port to listen on.", min=0, max=65535)
    threads: int | None = _setting(
        None, "LLMKIT_THREADS", "CPU threads (default: the physical cores).", min=1
    )
    ctx: int | None = _setting(
        None,
        "LLMKIT_CTX",
        f"Context length per slot (default: the model's, at most {DEFAULT_CTX_CAP}, "
        "or the longest that fits in memory).",
        min=16,
    )
    chat_format: str | None = _setting(
        None,
        "LLMKIT_CHAT_FORMAT",
        "llama-cpp-python chat format (default: the catalog's, else the GGUF's template).",
    )
    chat_template_file: Path | None = _setting(
        None,
        "LLMKIT_CHAT_TEMPLATE_FILE",
        "A Jinja chat template to use instead of the model's (tools render through it).",
    )
    api_key: str | None = _setting(
        None, "LLMKIT_API_KEY", "Require Authorization: Bearer KEY on /v1."
    )
    api_key_file: Path | None = _setting(
        None, "LLMKIT_API_KEY_FILE", "Read the API key from a file."
    )
    parallel: int | None = _setting(
        None,
        "LLMKIT_PARALLEL",
        f"Requests decoded together (sequence slots, each with the full context; default: "
        f"the most, up to {DEFAULT_PARALLEL}, that fit in memory).",
        flags=("--parallel", "-np"),
        min=1,
        max=64,
    )
    kv_type: str = _setting(
        "f16",
        "LLMKIT_KV_TYPE",
        "KV cache type: f16, or q8_0 (about half the memory; turns on flash attention).",
    )
    no_speculation: bool = _setting(
        False,
        "LLMKIT_NO_SPECULATION",
        "No n-gram speculative decoding (drafts copied from the prompt and output).",
        flags=("--no-speculation",),
    )
    draft_from_recent: bool = _setting(
        False,
        "LLMKIT_DRAFT_FROM_RECENT",
        "Also draft from recent requests' prompts and outputs (as llama-server's ngram-mod): a "
        "repeated request is faster, but a temperature-0 answer then depends on what was asked "
        "before, and a client can time whether the server recently wrote a text.",
        flags=("--draft-from-recent",),
    )
    max_queue: int = _setting(
        64,
        "LLMKIT_MAX_QUEUE",
        "Choices (prompts × n) that may wait for a slot; beyond that 503 + Retry-After.",
        min=0,
    )
    grace: float = _setting(
        5.0, "LLMKIT_GRACE", "Seconds in-flight requests get to finish on shutdown.", min=0
    )
    drain_seconds: float = _setting(
        DEFAULT_DRAIN_SECONDS,
        "LLMKIT_DRAIN_SECONDS",
        "On SIGTERM, seconds /ready answers 503 while requests are still accepted (for a "
        "balancer's health checks to notice), before the listener closes and --grace begins.",
        min=0,
    )
    max_body: str = _setting(
        "4MiB",
        "LLMKIT_MAX_BODY",
        "The largest request body accepted (a size: 4MiB, 512KB); larger is a 413.",
        metavar="SIZE",
    )
    request_timeout: float = _setting(
        30.0,
        "LLMKIT_REQUEST_TIMEOUT",
        "Seconds a client has to send a whole request (its head and body) once it starts or "
        "connects; a connection that sends nothing, or too slowly, is closed.",
        min=1,
    )
    max_connections: int = _setting(
        4096,
        "LLMKIT_MAX_CONNECTIONS",
        "Open connections (and requests in flight) at most; beyond that a request is a 503.",
        min=16,
    )
    grammar_seconds: float = _setting(
        5.0,
        "LLMKIT_GRAMMAR_SECONDS",
        "Seconds of the scheduler's time one choice's grammar (a schema, tools, GBNF) may take in "
        "all; past that its request fails alone (every stream waits while a mask is computed).",
    )
    allow_origin: list[str] | None = _setting(
        None,
        "LLMKIT_ALLOW_ORIGINS",
        "A web page origin allowed to call the API, besides localhost's (repeat it; * for any).",
        metavar="ORIGIN",
    )
    allow_host: list[str] | None = _setting(
        None,
        "LLMKIT_ALLOW_HOSTS",
        "A Host name accepted besides loopback's, when listening on loopback (repeat it).",
        metavar="HOST",
    )
    offline: bool = _setting(
        False,
        "LLMKIT_OFFLINE",
        "Never download; the model must be in the store.",
        flags=("--offline",),
    )
    no_ui: bool = _setting(
        False,
        "LLMKIT_NO_UI",
        "Serve no web chat at / (the API only).",
        flags=("--no-ui",),
    )
    cache_ram: str | None = _setting(
        None,
        "LLMKIT_CACHE_RAM",
        "Memory for the prompt cache: slots' states kept after their slot is reused (e.g. 2GB; "
        f"0: off; default: half the memory left after the model and slots, at most "
        f"{DEFAULT_CACHE_RAM_MAX // 10**9} GB).",
        metavar="SIZE",
    )
    cache_dir: Path | None = _setting(
        None,
        "LLMKIT_CACHE_DIR",
        "Where the prompt cache keeps states past a restart (default: ~/.cache/llmkit/prompts).",
    )
    cache_disk: str = _setting(
        DEFAULT_CACHE_DISK,
        "LLMKIT_CACHE_DISK",
        "Disk the prompt cache may use in --cache-dir (least recently used out first).",
        metavar="SIZE",
    )
    no_cache_disk: bool = _setting(
        False,
        "LLMKIT_NO_CACHE_DISK",
        "Keep no prompt cache on disk (nothing survives a restart).",
        flags=("--no-cache-disk",),
    )
    verbose: bool = _setting(False, None, "llama.cpp's own logs.", flags=("--verbose",))
    models_dir: Path | None = _setting(
        None,
        "LLMKIT_MODELS_DIR",
        "Model store (default: ~/.local/share/llmkit/models).",
    )

    def __post_init__(self) -> None:
        # Repeatable flags: typer hands over () when none is given, a program may pass a tuple.
        for name in ("model", "preload", "allow_origin", "allow_host"):
            value = getattr(self, name)
            if isinstance(value, str):  # one model, as a program names it: serve(model="x")
                value = [value]
            object.__setattr__(self, name, list(value) if value else None)

    @staticmethod
    def setting(name: str) -> Setting:
        """The declaration of one field: its flags, variable, help and bounds."""
        spec: Setting = _FIELDS[name].metadata["setting"]
        return spec

    @staticmethod
    def flag(name: str) -> str:
        """The field's long flag: --chat-format for chat_format."""
        return next(
            (f for f in ServeSettings.setting(name).flags if f.startswith("--")),
            "--" + name.replace("_", "-"),
        )

    @staticmethod
    def env_name(name: str) -> str:
        env = ServeSettings.setting(name).env
        if env is None:
            raise KeyError(f"{name} has no LLMKIT_* variable")
        return env


_FIELDS = {f.name: f for f in fields(ServeSettings)}
# The fields' types as objects (this module's annotations are strings), for the CLI's options.
SERVE_TYPES: dict[str, Any] = typing.get_type_hints(ServeSettings)


def env(name: str, default: str | None = None) -> str | None:
    """Read LLMKIT_<name>, treating an empty value as unset."""
    value = os.environ.get(f"LLMKIT_{name}", "")
    return value if value != "" else default


def default_models_dir() -> Path:
    configured = env("MODELS_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        return Path(platformdirs.user_data_dir("llmkit")) / "models"
    except RuntimeError:  # no HOME (a systemd DynamicUser, `env -i`)
        from llmkit.errors import LlmkitError

        raise LlmkitError("no home directory to keep models in: set LLMKIT_MODELS_DIR") from None


def default_cache_dir() -> Path:
    """The prompt cache's folder: LLMKIT_CACHE_DIR, else under the XDG cache dir."""
    configured = env("CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        return Path(platformdirs.user_cache_dir("llmkit")) / "prompts"
    except RuntimeError:  # no HOME
        from llmkit.errors import LlmkitError

        raise LlmkitError("no home directory for the prompt cache: set LLMKIT_CACHE_DIR") from None


def user_catalog_dir() -> Path:
    """Where a user may add their own model TOMLs (LLMKIT_CATALOG_DIR overrides)."""
    configured = env("CATALOG_DIR")
    if configured:
        return Path(configured).expanduser()
    try:
        return Path(platformdirs.user_config_dir("llmkit")) / "models"
    except RuntimeError:  # no HOME: no user catalog
        return Path("/nonexistent/llmkit/models")


def physical_cores() -> int:
    """Physical cores, as llama.cpp wants for its threads (hyperthreads don't help decoding)."""
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                physical = value
            elif key == "core id":
                core = value
                cores.add((physical, core))
    except OSError:
        pass
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(cores) or (logical or 1), logical or 1))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def debug() -> bool:
    """LLMKIT_DEBUG: tracebacks instead of one-line errors."""
    return bool(env("DEBUG"))


def skip_memory_check() -> bool:
    """LLMKIT_SKIP_MEMORY_CHECK: serve even when the model and context look too big for memory."""
    return bool(env("SKIP_MEMORY_CHECK"))


def service_root() -> Path | None:
    """LLMKIT_SERVICE_ROOT: system-mode service files below this folder instead of /."""
    configured = env("SERVICE_ROOT")
    return Path(configured) if configured else None


def read_api_key_file(path: Path) -> str:
    """The API key kept in a file (surrounding whitespace dropped); a clear error if there is none."""
    from llmkit.errors import LlmkitError

    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise LlmkitError(f"cannot read the API key file: {exc}") from None
    if not key:
        raise LlmkitError(f"the API key file {path} is empty")
    if path.stat().st_mode & 0o077:
        print(
            f"warning: the API key file {path} can be read by other users of this machine "
            f"(chmod 600 {path})",
            file=sys.stderr,
            flush=True,
        )
    return key
