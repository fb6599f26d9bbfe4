"""`llmkit service ...`: run `llmkit serve` as a systemd service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli.console import note, out, ran_or_print
from llmkit.cli.options import UserMode, option
from llmkit.settings import ServeSettings

service_app = typer.Typer(help="Run `llmkit serve` as a systemd service.", no_args_is_help=True)


@service_app.command("install")
def service_install(
    model: Annotated[
        list[str] | None,
        option(
            "model",
            help="What to serve, pulled now into the store the service reads; repeat it to serve "
            "several (the first is loaded at start, the others when first asked).",
        ),
    ] = None,
    host: Annotated[str, option("host", envvar=None)] = ServeSettings.host,
    port: Annotated[int, option("port", envvar=None, min=1)] = ServeSettings.port,
    embedding_model: Annotated[
        str | None,
        option("embedding_model", envvar=None, help="A GGUF for /v1/embeddings (pulled now)."),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            show_default=False, help="Require this key; the env file keeps it, mode 0600."
        ),
    ] = None,
    user: UserMode = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit and env file; change nothing.")
    ] = False,
) -> None:
    """Pull the model, write a hardened unit and its env file, enable and start the service."""
    from llmkit import service

    spec, where = service.plan(model, host, port, api_key_file, user, embedding_model)
    if dry_run:
        for warning in service.warnings(spec, where):
            note(warning)
        print(service.preview(spec, where), end="")
        return
    done = service.install(spec, where, log=note, show_progress=sys.stderr.isatty())
    out.print(
        "\n".join(
            [
                *(f"model     {path}" for path in done.model_paths),
                f"unit      {done.unit}",
                f"settings  {done.env_file}",
            ]
        ),
        highlight=False,
        soft_wrap=True,
    )
    ran_or_print(done.not_run, done.commands, "llmkit is running; `llmkit service logs` follows it")


@service_app.command("uninstall")
def service_uninstall(user: UserMode = False) -> None:
    """Stop and disable the service and delete its unit and env file (the models stay)."""
    from llmkit import service

    done = service.uninstall(service.layout(user))
    lines = [*(f"removed {path}" for path in done.removed), f"models kept in {done.models_dir}"]
    out.print("\n".join(lines), highlight=False, soft_wrap=True)
    ran_or_print(done.not_run, done.commands, "llmkit service uninstalled")


def _service_command(user: bool, *args: str) -> None:
    from llmkit import service

    argv = service.systemctl(user, *args, service.NAME)
    raise typer.Exit(service.control(service.layout(user), argv))


@service_app.command("status")
def service_status(user: UserMode = False) -> None:
    """Show the service's state and latest log lines (systemctl status llmkit)."""
    _service_command(user, "status", "--no-pager")


@service_app.command("start")
def service_start(user: UserMode = False) -> None:
    """Start the service; returns once the server answers."""
    _service_command(user, "start")


@service_app.command("stop")
def service_stop(user: UserMode = False) -> None:
    """Stop the service (accepted requests finish first)."""
    _service_command(user, "stop")


@service_app.command("restart")
def service_restart(user: UserMode = False) -> None:
    """Restart the service, e.g. after editing its env file."""
    _service_command(user, "restart")


@service_app.command("logs")
def service_logs(
    lines: Annotated[int, typer.Option("--lines", "-n", min=0)] = 50,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f/-F")] = True,
    user: UserMode = False,
) -> None:
    """The service's journal, followed (journalctl -u llmkit -f)."""
    from llmkit import service

    raise typer.Exit(service.control(service.layout(user), service.journalctl(user, lines, follow)))
