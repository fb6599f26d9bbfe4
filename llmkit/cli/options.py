"""Options more than one command takes, declared once; each command module reads them here."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import settings
from llmkit.settings import SERVE_TYPES, ServeSettings

Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ModelsDir = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        help="Model store (default: $LLMKIT_MODELS_DIR, else ~/.local/share/llmkit/models).",
        show_default=False,
    ),
]
UserMode = Annotated[bool, typer.Option("--user", help="A user service (systemctl --user).")]
# Reaching a running server: `llmkit chat`, `ps`, `load`, `unload`.
Url = Annotated[
    str | None,
    typer.Option(
        help="The server's API URL (else LLMKIT_URL, OPENAI_BASE_URL, http://127.0.0.1:8000/v1).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(help="API key (else LLMKIT_API_KEY, OPENAI_API_KEY).", show_default=False),
]


def option(name: str, **changes: Any) -> Any:
    """The typer option of a ServeSettings field: its flags, LLMKIT_* variable, help, bounds."""
    s = ServeSettings.setting(name)
    declared = {"envvar": s.env, "help": s.help, "min": s.min, "max": s.max, **changes}
    if s.metavar:
        declared["metavar"] = s.metavar
    return typer.Option(*s.flags, **declared)


def _with_options(command: Callable[..., None], options: list[inspect.Parameter]) -> None:
    """Make a command taking **options show these options first, then its own parameters."""
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    command.__signature__ = inspect.Signature([*options, *own])  # type: ignore[attr-defined]


def _keyword(field: dataclasses.Field[Any], annotation: Any) -> inspect.Parameter:
    """A command's parameter for a dataclass field: its name, its default (if any), an option."""
    default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command taking **options one typer option per ServeSettings field."""
    _with_options(
        command,
        [
            _keyword(field, Annotated[SERVE_TYPES[field.name], option(field.name)])
            for field in dataclasses.fields(ServeSettings)
        ],
    )
    return command


# `llmkit lb ...`: where HAProxy answers, and what a balancer is made from.
LbSocket = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="LLMKIT_LB_SOCKET",
        show_default=False,
        help="HAProxy's stats socket (default: /run/llmkit-lb/admin.sock as root).",
    ),
]


@dataclasses.dataclass(frozen=True)
class BalancerOptions:
    """What `llmkit lb config`, `lb run` and `lb service install` make a balancer from."""

    replica: Annotated[
        list[str],
        typer.Option(
            "--replica", "-r", metavar="HOST:PORT", help="An llmkit serve replica (repeat it)."
        ),
    ]
    host: Annotated[str, typer.Option("--host", help="Address the balancer listens on.")] = (
        "0.0.0.0"
    )
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Its port.")] = 8080
    slots: Annotated[
        int,
        typer.Option(
            "--slots",
            min=1,
            help="Requests sent to one replica at once (its --parallel); more wait.",
        ),
    ] = settings.DEFAULT_PARALLEL
    affinity: Annotated[
        bool,
        typer.Option(
            "--affinity/--leastconn",
            help="One conversation to one replica (its prompt cache), bounded load; or least loaded.",
        ),
    ] = True
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", help="Serve HTTPS with this PEM (certificate and key).", exists=True
        ),
    ] = None


def balancer_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command taking **options one typer option per BalancerOptions field."""
    types = typing.get_type_hints(BalancerOptions, include_extras=True)
    _with_options(
        command,
        [_keyword(field, types[field.name]) for field in dataclasses.fields(BalancerOptions)],
    )
    return command
