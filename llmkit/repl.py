"""`llmkit chat`: one answer for a prompt or piped stdin, else the interactive loop."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
from rich.console import Console

from llmkit.client import Answer, ChatSession, format_stats
from llmkit.errors import LlmkitError

PROMPT = ">>> "
MORE = "... "
FENCE = '"""'

HELP = f"""\
Type a message and press Enter. For several lines, start with {FENCE} and end with a line that
ends with {FENCE}. Up/down arrows recall earlier lines. Ctrl-C stops an answer (what it said so far
stays in the conversation); Ctrl-C or Ctrl-D at the prompt leaves.

  /help              this help
  /system TEXT       set the system prompt (/system alone removes it)
  /clear             start a new conversation (the system prompt stays)
  /save FILE         save the conversation as JSON
  /load FILE         continue a conversation saved with /save
  /model             the server's models (loaded or not); * marks the one asked
  /model NAME        ask NAME from now on (the conversation goes on)
  /set NAME VALUE    temperature, max_tokens, seed, model or json (on/off); VALUE default unsets
  /stats             the settings, the last answer's numbers and this session's totals
  /bye, /exit        leave"""

err = Console(stderr=True, highlight=False, soft_wrap=True)  # never break a message in two


def run(
    prompt: str | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    json_mode: bool = False,
    quiet: bool = False,
) -> None:
    """`llmkit chat`: answer PROMPT and/or piped stdin once, else chat interactively."""
    session = ChatSession(
        url,
        api_key,
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
        json_mode=json_mode,
    )
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read().strip()
    if prompt is None and piped is None:
        Repl(session).loop()
        return
    # `cat notes.txt | llmkit chat "summarize this"` asks the prompt with the text below it.
    question = "\n\n".join(part for part in (prompt, piped) if part and part.strip())
    if not question:
        raise LlmkitError("nothing to ask: pass a PROMPT or pipe a question into llmkit chat")
    one_shot(session, question, quiet=quiet)


def one_shot(session: ChatSession, question: str, quiet: bool = False) -> None:
    """Print only the answer on stdout (so it composes in pipelines) and its stats on stderr."""
    out = Writer()
    try:
        try:
            answer = session.ask(question, on_text=out.write)
        finally:
            out.end_line()  # also under an error line or "interrupted"
    except BrokenPipeError:
        # `llmkit chat ... | head -1`: the reader has gone; say nothing more, and keep Python's
        # final flush of stdout from complaining about it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if not quiet:
        err.print(format_stats(answer), style="dim")


# What a model writes must not drive the terminal: escape sequences can recolour, move the
# cursor, set the window title or rewrite what was shown (carriage returns, backspaces). Only
# newlines and tabs of the C0 controls are kept; DEL and the C1 controls go too.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Model text without the control characters a terminal would act on."""
    return _CONTROLS.sub("", text)


class Writer:
    """Streams model text to stdout, without control characters, remembering whether the last
    line was finished."""

    def __init__(self) -> None:
        self.at_line_start = True

    def write(self, text: str) -> None:
        text = printable(text)
        if not text:
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")


def history_file() -> Path:
    """Where the prompt's line history lives between sessions."""
    return Path(platformdirs.user_state_dir("llmkit")) / "chat_history"


@contextlib.contextmanager
def line_editing(path: Path) -> Iterator[None]:
    """Readline editing and history for input(), saved to `path` on the way out."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input() still works
        yield
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
            path.chmod(0o600)  # what people type to a model can be private, as in a shell history


def parse_setting(name: str, value: str) -> tuple[str, object]:
    """`/set NAME VALUE` as (attribute, value); "default" (or "none") unsets."""
    name = name.lower().replace("-", "_")
    unset = value.lower() in ("default", "none", "")
    kinds: dict[str, Callable[[str], object]] = {
        "temperature": float,
        "max_tokens": int,
        "seed": int,
        "model": str,
    }
    if name == "json":
        if value.lower() not in ("on", "off", "true", "false", "yes", "no", "1", "0"):
            raise LlmkitError("json takes on or off")
        return "json_mode", value.lower() in ("on", "true", "yes", "1")
    if name not in kinds:
        raise LlmkitError(f"cannot set {name!r}; try temperature, max_tokens, seed, model or json")
    if unset:
        return name, None
    try:
        return name, kinds[name](value)
    except ValueError:
        raise LlmkitError(
            f"{name} takes {'a number' if name == 'temperature' else 'an integer'}, not {value!r}"
        ) from None


class Repl:
    """The interactive loop: read a message or a slash command, stream the answer, show stats."""

    def __init__(self, session: ChatSession, history: Path | None = None) -> None:
        self.session = session
        self.history = history or history_file()

    def loop(self) -> None:
        # Before the first prompt, so that no server or a wrong key is one line and exit 1.
        self.session.server_models()
        err.print(
            f"llmkit chat: {self.session.model} at {self.session.url} · /help for commands, "
            "/bye to leave",
            style="dim",
            markup=False,
        )
        with line_editing(self.history):
            while True:
                try:
                    text = self.read()
                except (EOFError, KeyboardInterrupt):
                    print()
                    return
                if text.startswith("/"):
                    if not self.command(text):
                        return
                elif text.strip():
                    self.turn(text)

    def read(self) -> str:
        """One message: a line, or the lines of a \"\"\" block."""
        line = input(PROMPT)
        if not line.lstrip().startswith(FENCE):
            return line.strip()
        rest = line.lstrip()[len(FENCE) :]
        lines = []
        while not rest.rstrip().endswith(FENCE):
            lines.append(rest)
            rest = input(MORE)
        lines.append(rest.rstrip()[: -len(FENCE)])
        return "\n".join(lines).strip("\n")

    def turn(self, text: str) -> None:
        out = Writer()
        before = self.session.last
        try:
            answer: Answer | None = self.session.ask(text, on_text=out.write)
        except KeyboardInterrupt:
            answer = self.session.last if self.session.last is not before else None
        except LlmkitError as exc:
            out.end_line()
            err.print(f"error: {exc}", style="red", markup=False)
            return
        out.end_line()
        if answer is None or (answer.interrupted and not answer.text):
            err.print("interrupted", style="dim")
        else:
            err.print(format_stats(answer), style="dim")

    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        session = self.session
        try:
            if name in ("/bye", "/exit", "/quit"):
                return False
            if name in ("/help", "/?"):
                err.print(HELP, markup=False)
            elif name == "/system":
                session.system = arg or None
                err.print("system prompt set" if arg else "system prompt removed", style="dim")
            elif name == "/clear":
                session.clear()
                err.print("new conversation", style="dim")
            elif name in ("/save", "/load"):
                if not arg:
                    raise LlmkitError(f"{name} needs a FILE")
                if name == "/save":
                    session.save(arg)
                    done = f"saved {len(session.messages)} messages to {arg}"
                else:
                    session.load(arg)
                    done = f"loaded {len(session.messages)} messages from {arg}"
                err.print(done, style="dim", markup=False)
            elif name == "/model":
                if arg:
                    err.print(f"model = {self.switch(arg)}", style="dim", markup=False)
                else:
                    err.print(self.models(), markup=False)
            elif name == "/set":
                setting, _, value = arg.partition(" ")
                attribute, parsed = parse_setting(setting, value.strip())
                setattr(session, attribute, parsed)
                if attribute == "model":
                    parsed = session.model  # unset: the server's first model again
                elif attribute == "json_mode":
                    parsed = "on" if parsed else "off"
                err.print(
                    f"{setting} = {'default' if parsed is None else parsed}",
                    style="dim",
                    markup=False,
                )
            elif name == "/stats":
                err.print(self.stats(), markup=False)
            else:
                raise LlmkitError(f"unknown command {name}; /help lists them")
        except LlmkitError as exc:
            err.print(f"error: {exc}", style="red", markup=False)
        return True

    def models(self) -> str:
        """The server's models, one line each, the one asked marked with *."""
        from llmkit.models_client import ServerModels, describe

        cards = ServerModels(client=self.session.client).list()
        if not cards:
            return f"the server at {self.session.url} lists no models"
        current = self.session.model
        return "\n".join(f"{'*' if c.id == current else ' '} {describe(c)}" for c in cards)

    def switch(self, name: str) -> str:
        """Ask `name` from now on; refused when the server lists its models and not this one."""
        listed = self.session.server_models()  # [] when the server does not list them
        if listed and name not in listed:
            raise LlmkitError(
                f"the server at {self.session.url} serves no model {name!r}; /model lists them"
            )
        self.session.model = name
        return name

    def stats(self) -> str:
        s = self.session

        def shown(value: object) -> str:
            return "server default" if value is None else str(value)

        answers = s.answers
        tokens = sum(a.completion_tokens for a in answers)
        seconds = sum(a.total_seconds for a in answers)
        lines = [
            f"url          {s.url}",
            f"model        {s.model}",
            f"temperature  {shown(s.temperature)}",
            f"max_tokens   {shown(s.max_tokens)}",
            f"seed         {'random' if s.seed is None else s.seed}",
            f"json         {'on' if s.json_mode else 'off'}",
            f"messages     {len(s.messages)}{' (with a system prompt)' if s.system else ''}",
            f"last answer  {format_stats(s.last) if s.last else 'none yet'}",
            f"session      {len(answers)} answers · {tokens} tokens · {seconds:.2f} s",
        ]
        return "\n".join(lines)
