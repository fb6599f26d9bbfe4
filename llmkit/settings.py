"""Defaults, LLMKIT_* environment variables and paths, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_CTX_CAP = 4096
DEFAULT_MAX_QUEUE = 16
DEFAULT_PARALLEL = 4
DEFAULT_GRACE_SECONDS = 5.0


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


@dataclass
class StoreSettings:
    models_dir: Path = field(default_factory=default_models_dir)
    offline: bool = field(default_factory=hub_offline)


def read_api_key_file(path: Path) -> str:
    """The API key kept in a file (surrounding whitespace dropped); a clear error if there is none."""
    from llmkit.errors import LlmkitError

    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise LlmkitError(f"cannot read the API key file: {exc}") from None
    if not key:
        raise LlmkitError(f"the API key file {path} is empty")
    return key
