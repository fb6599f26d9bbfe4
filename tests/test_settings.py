"""ServeSettings: each setting of `llmkit serve` declared once, and every form made from it agrees.

The CLI's options read flags, then LLMKIT_* variables, then the defaults; `llmkit.serve()`'s
keywords become flags that parse back to the same settings; the service's env file parses back to
its settings; README's option table names the declared flags, variables and defaults.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

import llmkit
from llmkit.cli import app
from llmkit.launcher import serve_args
from llmkit.service import Service, render_env
from llmkit.settings import ServeSettings
from tests.helpers import env_file_values

README = Path(__file__).parent.parent / "README.md"


def parsed(*args: str) -> ServeSettings:
    """The settings `llmkit serve ARGS` would run with, in this environment (nothing is started)."""
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    with command.make_context("serve", list(args)) as ctx:
        return ServeSettings(**ctx.params)


@pytest.fixture(autouse=True)
def no_llmkit_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LLMKIT_"):
            monkeypatch.delenv(name)


def test_without_flags_or_variables_serve_runs_with_the_declared_defaults() -> None:
    assert parsed() == ServeSettings()
    assert (ServeSettings().host, ServeSettings().port, ServeSettings().parallel) == (
        "127.0.0.1",
        8000,
        None,  # sized to the memory by the plan
    )


def test_a_flag_beats_its_variable_which_beats_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMKIT_THREADS", "3")
    monkeypatch.setenv("LLMKIT_OFFLINE", "1")
    monkeypatch.setenv("LLMKIT_MODELS_DIR", "/srv/models")

    settings = parsed("--threads", "5", "-np", "2")

    assert (settings.threads, settings.parallel) == (5, 2)  # flags
    assert (settings.offline, settings.models_dir) == (True, Path("/srv/models"))  # variables
    assert (settings.port, settings.grace) == (8000, 5.0)  # defaults


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_PORT", "")
    monkeypatch.setenv("LLMKIT_MODEL", "")
    assert (parsed().port, parsed().model) == (8000, None)


def test_the_python_api_keywords_become_flags_that_parse_back_to_the_same_settings() -> None:
    options = {
        "threads": 2,
        "ctx": 2048,
        "chat_format": "gemma",
        "chat_template_file": Path("/etc/llmkit/template.jinja"),
        "embedding_model": "nomic-embed.gguf",
        "api_key": "k3y",
        "api_key_file": Path("/etc/key"),
        "parallel": 3,
        "kv_type": "q8_0",
        "no_speculation": True,
        "draft_from_recent": True,
        "max_queue": 0,
        "grace": 1.5,
        "drain_seconds": 0.5,
        "max_body": "512KiB",
        "request_timeout": 10.0,
        "max_connections": 256,
        "grammar_seconds": 2.5,
        "allow_origin": ["https://a.example", "https://b.example"],
        "allow_host": ["llm.internal"],
        "offline": True,
        "no_ui": True,
        "cache_ram": "2GB",
        "cache_dir": Path("/var/cache/llmkit"),
        "cache_disk": "1GiB",
        "no_cache_disk": True,
        "verbose": True,
        "models_dir": Path("/srv/models"),
        "all_models": True,
        "preload": ["gemma-3-270m", "smollm2"],
        "memory_budget": "80%",
        "keep_alive": "10m",
    }
    assert set(options) | {"model", "host", "port"} == {
        f.name for f in dataclasses.fields(ServeSettings)
    }

    args = serve_args("gemma-3-270m", "::1", 8123, options)

    assert args[0] == "serve"
    assert parsed(*args[1:]) == ServeSettings(
        model="gemma-3-270m",
        host="::1",
        port=8123,
        **options,  # type: ignore[arg-type]
    )


def test_an_unknown_keyword_is_a_type_error_that_lists_the_options() -> None:
    with pytest.raises(TypeError, match=r"no option 'thread'.*\bthreads\b"):
        serve_args("gemma-3-270m", "127.0.0.1", 8000, {"thread": 2})
    # llmkit.serve() refuses it before it starts anything.
    with pytest.raises(TypeError, match="'ctx_size'"), llmkit.serve("gemma-3-270m", ctx_size=512):
        pytest.fail("a server started")


def test_the_service_env_file_parses_back_to_the_services_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServeSettings(
        model="gemma-3-270m",
        host="0.0.0.0",
        port=8443,
        api_key='se"cret $key',
        parallel=2,
        allow_origin=["https://a.example", "http://b.example:8080"],
    )

    values = env_file_values(render_env(Service(("llmkit",), settings)))

    # The models are the unit's ExecStart arguments (--model, each), not the env file's.
    assert set(values) == {
        "LLMKIT_HOST",
        "LLMKIT_PORT",
        "LLMKIT_API_KEY",
        "LLMKIT_PARALLEL",
        "LLMKIT_ALLOW_ORIGINS",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert parsed("--model", "gemma-3-270m") == settings


def readme_options() -> list[tuple[list[str], list[str], str]]:
    """(flags, variables, default) of each row of README's option table."""
    text = README.read_text()
    table = text[text.index("| option | environment | default |") :].split("\n\n")[0]
    rows = []
    for line in table.splitlines()[2:]:
        option, environment, default = (cell.strip() for cell in line.strip("|").split("|"))
        flags = [w.split()[0] for w in re.findall(r"`([^`]+)`", option)]
        rows.append((flags, re.findall(r"LLMKIT_\w+", environment), default))
    return rows


def test_readme_option_table_names_the_declared_flags_variables_and_defaults() -> None:
    by_flag = {
        flag: f
        for f in dataclasses.fields(ServeSettings)
        for flag in (*ServeSettings.setting(f.name).flags, ServeSettings.flag(f.name))
    }
    rows = readme_options()
    assert len(rows) >= 10
    for flags, variables, default in rows:
        # A KeyError here: a documented flag is gone.
        fields = list({by_flag[flag].name: by_flag[flag] for flag in flags}.values())
        assert variables == [ServeSettings.env_name(f.name) for f in fields], flags
        for f in fields:
            if isinstance(f.default, bool) or f.default is None:
                continue
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            assert re.search(rf"(^|\D){re.escape(shown)}(\D|$)", default), (f.name, default)
