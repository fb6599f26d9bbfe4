"""ChatSession: a conversation with an OpenAI-compatible server through the openai SDK, streamed,
with the numbers a local-model user wants after each answer."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from llmkit.errors import LlmkitError, ServerUnreachable

DEFAULT_URL = "http://127.0.0.1:8000/v1"
# The SDK insists on a key; a server started without --api-key ignores whatever is sent.
DUMMY_API_KEY = "llmkit"
ROLES = ("system", "user", "assistant")


def _first_set(*values: str | None) -> str | None:
    return next((v.strip() for v in values if v and v.strip()), None)


def resolve_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The server's API URL: --url, else LLMKIT_URL, else OPENAI_BASE_URL, else the local default.

    `host:8000` and `http://host:8000` mean the server's /v1, where OpenAI-compatible servers live.
    """
    environ = os.environ if environ is None else environ
    chosen = _first_set(url, environ.get("LLMKIT_URL"), environ.get("OPENAI_BASE_URL"))
    if chosen is None:
        return DEFAULT_URL
    if "://" not in chosen:
        chosen = "http://" + chosen
    chosen = chosen.rstrip("/")
    scheme, _, rest = chosen.partition("://")
    return chosen if "/" in rest else f"{scheme}://{rest}/v1"


def resolve_api_key(api_key: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The API key: --api-key, else LLMKIT_API_KEY, else OPENAI_API_KEY, else a dummy."""
    environ = os.environ if environ is None else environ
    chosen = _first_set(api_key, environ.get("LLMKIT_API_KEY"), environ.get("OPENAI_API_KEY"))
    return chosen or DUMMY_API_KEY


def explain(exc: openai.APIError, url: str) -> LlmkitError:
    """The one line a user needs for an error the SDK raised talking to the server at `url`."""
    if isinstance(exc, openai.APITimeoutError):
        return LlmkitError(f"the server at {url} did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return ServerUnreachable(f"no server at {url} — start one with: llmkit serve --model NAME")
    if isinstance(exc, openai.AuthenticationError):
        return LlmkitError(
            f"the server at {url} refused the API key (401): it is wrong or "
            "missing; pass --api-key or set LLMKIT_API_KEY"
        )
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else body
    message = " ".join(str(message or exc.message).split())[:500]
    if isinstance(exc, openai.APIStatusError):
        return LlmkitError(f"the server answered {exc.status_code}: {message}")
    # No status: an error the server sent inside a stream that had begun.
    return LlmkitError(f"the server broke off the answer: {message}")


RETRIES = 3  # tries after the first, for a request that failed before its first token
MAX_RETRY_WAIT = 10.0  # seconds; a longer Retry-After is not worth waiting for in a chat


class AnswerCut(LlmkitError):
    """The stream broke after part of the answer came; that part stays in the conversation."""


def retry_delay(exc: openai.APIError, attempt: int) -> float | None:
    """Seconds to wait before sending again a request that failed before its first token; None:
    do not (a retry would fail the same way, or `attempt` retries were already made).

    Retried: a connection refused or reset (a server restarting, a replica gone), a 503 with
    Retry-After (busy or draining), and an error the server sent in a stream before any text.
    """
    if attempt >= RETRIES or isinstance(exc, openai.APITimeoutError):
        return None
    backoff = min(0.5 * 2**attempt, 4.0)
    if isinstance(exc, openai.APIStatusError):
        after = exc.response.headers.get("retry-after")
        if exc.status_code != 503 or after is None:
            return None
        try:
            return min(max(float(after), 0.0), MAX_RETRY_WAIT)
        except ValueError:
            return backoff  # an HTTP date: not worth parsing for a few seconds
    return backoff  # a connection error, or an error event before any text


@dataclass
class ToolCall:
    """A function call the model made, as it streamed: its arguments are JSON text, unchecked."""

    name: str
    arguments: str
    id: str | None = None


@dataclass
class Answer:
    """One assistant answer and how it went."""

    text: str
    seconds_to_first_token: float | None  # None: no text arrived
    completion_tokens: int
    total_seconds: float
    prompt_tokens: int | None = None  # as the server counted them (None: it sent no usage)
    tokens_counted: bool = False  # True: the server sent no usage, so these are counted chunks
    finish_reason: str | None = None  # "stop", "length", ...; None when cut short
    interrupted: bool = False
    tool_calls: list[ToolCall] = field(default_factory=list)  # with `tools`: the calls made

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed: tokens after the first, over the time after the first.

        Time to first token is mostly reading the prompt, which is a different speed; mixing the
        two would make long conversations look like slow generation.
        """
        ttft = self.seconds_to_first_token
        if ttft is None or self.completion_tokens < 2 or self.total_seconds <= ttft:
            return None
        return (self.completion_tokens - 1) / (self.total_seconds - ttft)


def format_stats(answer: Answer) -> str:
    """One line of numbers for an answer: time to first token, tokens, tokens/s, total time."""
    parts = []
    if answer.seconds_to_first_token is not None:
        parts.append(f"first token {answer.seconds_to_first_token:.2f} s")
    parts.append(f"{'~' if answer.tokens_counted else ''}{answer.completion_tokens} tokens")
    rate = answer.tokens_per_second
    if rate is not None:
        parts.append(f"{rate:.1f} tokens/s")
    parts.append(f"{answer.total_seconds:.2f} s total")
    if answer.interrupted:
        parts.append("interrupted")
    elif answer.finish_reason == "length":
        parts.append("cut at max_tokens")
    return " · ".join(parts)


def parse_conversation(data: Any) -> list[dict[str, str]]:
    """The messages of a saved conversation: {"messages": [...]} as `save` writes it, or a list."""
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise LlmkitError('not a conversation: expected {"messages": [...]} or a list of messages')
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise LlmkitError(
                f"not a conversation: message {i} needs a role ({', '.join(ROLES)}) "
                "and a text content"
            )
        out.append({"role": role, "content": content})
    return out


@dataclass
class _Streamed:
    """What has come of one streamed answer so far (choice 0's)."""

    started: float  # perf_counter() when it was asked
    pieces: list[str] = field(default_factory=list)  # its text
    calls: dict[int, ToolCall] = field(default_factory=dict)  # by their index in the stream
    first: float | None = None  # seconds to its first text
    opened: float | None = None  # seconds to its first chunk
    chunks: int = 0  # the chunks that brought text or a piece of a call
    usage: Any = None
    finish: str | None = None

    @property
    def began(self) -> bool:
        return bool(self.pieces or self.calls)

    def add(self, chunk: Any) -> str | None:
        """Take in one chunk of the stream; the text it brought, if any."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = None
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            now = time.perf_counter() - self.started
            if self.opened is None:
                self.opened = now
            self.finish = choice.finish_reason or self.finish
            delta = choice.delta
            if delta and delta.tool_calls:
                self.chunks += 1
                for piece in delta.tool_calls:
                    # Merged as the openai SDK's stream helper merges them: the strings joined.
                    call = self.calls.setdefault(piece.index, ToolCall("", ""))
                    call.id = call.id or piece.id
                    if piece.function is not None:
                        call.name += piece.function.name or ""
                        call.arguments += piece.function.arguments or ""
            if delta and delta.content:
                text = delta.content
                self.chunks += 1
                if self.first is None:
                    self.first = now
                self.pieces.append(text)
        return text


class ChatSession:
    """A conversation with an OpenAI-compatible server: the history, streamed answers, their stats.

    Each turn sends the whole history, as the Chat Completions API expects. An answer cut short
    (Ctrl-C, the `stop` event, a broken stream) stays in the history as far as it got, unmarked,
    so that the model sees what it actually said; its Answer has `interrupted=True`. A turn that
    produced no text at all is taken back (its question removed), so it can simply be asked again.
    With `tools`, the calls an answer makes are its Answer's `tool_calls` and stay in the history
    as the API writes them; running them and sending their results is left to the caller.

        with llmkit.serve("gemma-3-270m") as client:
            chat = ChatSession(client=client, max_tokens=64)
            print(chat.ask("Hello!").text)
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        json_mode: bool = False,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        client: openai.OpenAI | None = None,
        timeout: float = 600.0,
    ) -> None:
        if client is None:
            client = openai.OpenAI(
                base_url=resolve_url(url), api_key=resolve_api_key(api_key), timeout=timeout
            )
        self.client = client
        self.url = str(client.base_url).rstrip("/")
        self._model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.json_mode = json_mode
        self.tools = tools
        self.tool_choice = tool_choice
        self.parallel_tool_calls = parallel_tool_calls
        self.messages: list[dict[str, Any]] = []
        self.answers: list[Answer] = []  # every answer of this session, also after clear()
        self.last: Answer | None = None
        self.system = system

    @property
    def model(self) -> str:
        """The model named in requests: as given, else the server's first, else "default"."""
        if self._model is None:
            self._model = next(iter(self.server_models()), "default")
        return self._model

    @model.setter
    def model(self, name: str | None) -> None:
        self._model = name

    def server_models(self) -> list[str]:
        """The model ids the server lists; also how to check that it answers and takes our key."""
        try:
            return [m.id for m in self.client.models.list().data]
        except openai.NotFoundError:
            return []  # a server without /v1/models still chats
        except openai.APIError as exc:
            raise explain(exc, self.url) from None

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None

    @system.setter
    def system(self, text: str | None) -> None:
        if self.system is not None:
            del self.messages[0]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    def clear(self) -> None:
        """Start a new conversation with the same system prompt."""
        system = self.system
        self.messages = []
        self.system = system

    def options(self) -> dict[str, Any]:
        """The request's sampling options; unset ones are left to the server."""
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        if self.seed is not None:
            options["seed"] = self.seed
        if self.json_mode:
            options["response_format"] = {"type": "json_object"}
        if self.tools is not None:
            options["tools"] = self.tools
        if self.tool_choice is not None:
            options["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = self.parallel_tool_calls
        return options

    def ask(
        self,
        prompt: str,
        on_text: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Answer:
        """Ask `prompt`, pass each piece of the answer to `on_text` as it comes, return the Answer.

        Setting `stop` (from another thread) ends the answer after the current piece. A
        KeyboardInterrupt closes the connection, keeps the partial answer and is raised again.
        """
        with closing(self.stream(prompt, stop)) as pieces:
            for text in pieces:
                if on_text is not None:
                    on_text(text)
        assert self.last is not None
        return self.last

    def stream(
        self, prompt: str, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        """Ask `prompt` and yield the answer's text as it arrives; its Answer is then `self.last`.

        Closing the iterator early closes the HTTP response, so the server stops generating.
        """
        model = self.model  # before the question goes in: failing here leaves the history alone
        self.messages.append({"role": "user", "content": prompt})
        came = _Streamed(time.perf_counter())
        completed = failed = False
        response = None
        attempt = 0
        try:
            while True:
                try:
                    response = self.client.with_options(max_retries=0).chat.completions.create(  # type: ignore[call-overload]
                        model=model,
                        messages=list(self.messages),
                        stream=True,
                        stream_options={"include_usage": True},
                        **self.options(),
                    )
                    for chunk in response:
                        text = came.add(chunk)
                        if text:
                            yield text
                        if stop is not None and stop.is_set():
                            break
                    else:
                        completed = True
                    break
                except openai.APIError as exc:
                    # Nothing of the answer has come yet: the request can go again, e.g. to
                    # another replica behind a balancer, or to this server once it has room.
                    delay = None if came.began else retry_delay(exc, attempt)
                    if delay is None:
                        raise
                    if response is not None:
                        response.close()
                        response = None
                    came.opened = None
                    attempt += 1
                    time.sleep(delay)
        except openai.APIError as exc:
            failed = True
            if came.began:
                why = (
                    f"the server at {self.url} went away"
                    if type(exc) is openai.APIConnectionError
                    else str(explain(exc, self.url))
                )
                raise AnswerCut(
                    f"the answer was cut off mid-way: {why}; the part that came is kept in the "
                    "conversation"
                ) from None
            raise explain(exc, self.url) from None
        finally:
            if response is not None:
                response.close()
            self._record(came, completed, failed)

    def _record(self, came: _Streamed, completed: bool, failed: bool) -> None:
        text = "".join(came.pieces)
        calls = [came.calls[i] for i in sorted(came.calls)]
        if text or calls or completed:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": call.id or f"call_{i}",
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for i, call in enumerate(calls)
                ]
            self.messages.append(message)
        else:
            self.messages.pop()  # the question: this turn never happened
        if failed and not came.began:
            return  # nothing was generated, so there is nothing to measure
        usage = came.usage
        self.last = Answer(
            text=text,
            # Servers send a call once they have read its name, some tokens after its first:
            # the first token of an answer that is only calls is the chunk that opened it.
            seconds_to_first_token=came.first if text or not calls else came.opened,
            # llama.cpp streams one token per chunk, so counting chunks is a fair fallback.
            completion_tokens=usage.completion_tokens if usage is not None else came.chunks,
            total_seconds=time.perf_counter() - came.started,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            tokens_counted=usage is None,
            finish_reason=came.finish if completed else None,
            interrupted=not completed,
            tool_calls=calls,
        )
        self.answers.append(self.last)

    def save(self, path: str | Path) -> None:
        """Write the conversation as JSON: {"model": ..., "messages": [...]}."""
        data = {"model": self._model, "messages": self.messages}
        try:
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            Path(path).expanduser().write_text(text)
        except OSError as exc:
            raise LlmkitError(f"cannot save to {path}: {exc.strerror or exc}") from None

    def load(self, path: str | Path) -> None:
        """Replace the conversation (system prompt included) with one `save` wrote."""
        try:
            data = json.loads(Path(path).expanduser().read_text())
        except OSError as exc:
            raise LlmkitError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise LlmkitError(f"{path} is not JSON: {exc}") from None
        try:
            self.messages = parse_conversation(data)
        except LlmkitError as exc:
            raise LlmkitError(f"{path}: {exc}") from None
