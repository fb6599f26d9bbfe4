"""`llmkit chat`: talk to a running server, once or interactively."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli.options import ApiKey, Url


def chat(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="Ask this once and print the answer; "
            "without it (and with no piped stdin) chat interactively.",
            show_default=False,
        ),
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
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
        from llmkit.server.webui import check_page

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
