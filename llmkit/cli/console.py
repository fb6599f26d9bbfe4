"""Where the commands print: results to stdout, notes and errors to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True)


def note(message: str) -> None:
    """A progress or warning line on stderr, dimmed so results stand out."""
    err.print(message, style="dim", highlight=False)


def ran_or_print(not_run: str, commands: list[list[str]], success: str) -> None:
    """After an install: say it is running, or (no systemd here) the commands to run by hand."""
    import shlex

    if not not_run:
        out.print(success, highlight=False, soft_wrap=True)
        return
    lines = [
        f"{not_run}, so llmkit ran nothing; where systemd runs, run:",
        *(f"  {shlex.join(command)}" for command in commands),
    ]
    out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
