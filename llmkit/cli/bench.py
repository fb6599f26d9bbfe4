"""`llmkit bench`: measure llmkit serve against its engine in-process and other servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit import settings
from llmkit.cli.console import note, out
from llmkit.cli.options import ModelsDir


def bench(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="What to serve and measure; asked of a --peer-url too when it lists it "
            "(else the peer's first model).",
        ),
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
    benchmark.main(config, json_file, plot_file, console=out, log=note)
