"""Options more than one command takes, declared once; each command module reads them here."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

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


def option(name: str, **changes: Any) -> Any:
    """The typer option of a ServeSettings field: its flags, LLMKIT_* variable, help, bounds."""
    s = ServeSettings.setting(name)
    declared = {"envvar": s.env, "help": s.help, "min": s.min, "max": s.max, **changes}
    if s.metavar:
        declared["metavar"] = s.metavar
    return typer.Option(*s.flags, **declared)


def serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command taking **options one typer option per ServeSettings field."""
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=Annotated[SERVE_TYPES[field.name], option(field.name)],
            )
            for field in dataclasses.fields(ServeSettings)
        ]
    )
    return command


# The balancer's options (llmkit lb ...).
Replicas = Annotated[
    list[str],
    typer.Option(
        "--replica", "-r", metavar="HOST:PORT", help="An llmkit serve replica (repeat it)."
    ),
]
LbHost = Annotated[str, typer.Option("--host", help="Address the balancer listens on.")]
LbPort = Annotated[int, typer.Option("--port", min=1, max=65535, help="Its port.")]
Slots = Annotated[
    int,
    typer.Option(
        "--slots", min=1, help="Requests sent to one replica at once (its --parallel); more wait."
    ),
]
Affinity = Annotated[
    bool,
    typer.Option(
        "--affinity/--leastconn",
        help="One conversation to one replica (its prompt cache), bounded load; or least loaded.",
    ),
]
TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert", help="Serve HTTPS with this PEM (certificate and key).", exists=True
    ),
]
LbSocket = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="LLMKIT_LB_SOCKET",
        show_default=False,
        help="HAProxy's stats socket (default: /run/llmkit-lb/admin.sock as root).",
    ),
]
