"""`llmkit lb ...`: stock HAProxy in front of llmkit serve replicas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from llmkit.cli.console import out, ran_or_print
from llmkit.cli.options import BalancerOptions, Json, LbSocket, balancer_options

lb_app = typer.Typer(
    help="Stock HAProxy in front of llmkit serve replicas: config, run, status, drain.",
    no_args_is_help=True,
)
lb_service_app = typer.Typer(help="The balancer as a systemd service.", no_args_is_help=True)
lb_app.add_typer(lb_service_app, name="service")


def _balancer(options: BalancerOptions, socket: Path | None):  # type: ignore[no-untyped-def]
    from llmkit import balancer

    return balancer.Balancer(
        tuple(balancer.parse_replica(r) for r in options.replica),
        host=options.host,
        port=options.port,
        slots=options.slots,
        affinity=options.affinity,
        tls_cert=options.tls_cert.resolve() if options.tls_cert else None,
        socket=socket,
    )


@lb_app.command("config")
@balancer_options
def lb_config(socket: LbSocket = None, **options: Any) -> None:
    """Print a haproxy.cfg for these replicas, once `haproxy -c` accepts it.

    The Authorization header goes through untouched: each replica checks its own --api-key.
    """
    from llmkit import balancer

    config = _balancer(BalancerOptions(**options), socket)
    print(balancer.checked(config), end="")


@lb_app.command("run")
@balancer_options
def lb_run(socket: LbSocket = None, **options: Any) -> None:
    """Run HAProxy in the foreground with that config (SIGTERM stops it)."""
    from llmkit import balancer

    balancer.run(_balancer(BalancerOptions(**options), socket))


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


@lb_service_app.command("install")
@balancer_options
def lb_service_install(**options: Any) -> None:
    """Write /etc/llmkit/lb.cfg and a hardened llmkit-lb.service running HAProxy on it; start it."""
    from llmkit import lb_service

    lb = _balancer(BalancerOptions(**options), None)
    done = lb_service.install(lb)
    out.print(f"config    {done.config}\nunit      {done.unit}", highlight=False, soft_wrap=True)
    ran_or_print(done.not_run, done.commands, "llmkit-lb is running; `llmkit lb status` shows it")


@lb_service_app.command("uninstall")
def lb_service_uninstall() -> None:
    """Stop and disable llmkit-lb and delete its unit and /etc/llmkit/lb.cfg."""
    from llmkit import lb_service

    done = lb_service.uninstall()
    for path in done.removed:
        out.print(f"removed {path}", highlight=False, soft_wrap=True)
    ran_or_print(done.not_run, done.commands, "llmkit-lb uninstalled")
