"""Measuring a server from the client side: starting llmkit serve, and every workload through the openai SDK."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmkit import launcher
from llmkit.bench.config import BenchConfig
from llmkit.bench.workloads import (
    GENERATION_PROMPT,
    JSON_PROMPT,
    TOOL_PROMPT,
    TOOL_REQUEST,
    TURNS,
    Nonces,
    call_problem,
    long_prompt,
    new_seed,
    turn_question,
)
from llmkit.client import Answer, ChatSession, resolve_api_key
from llmkit.errors import LlmkitError

Log = Callable[[str], None]

LLMKIT = "llmkit"
IN_PROCESS = "in-process"


def nop(_: str) -> None:
    pass


@dataclass
class Level:
    """Every request at one number of concurrent clients, over all repeats."""

    tokens_per_s: list[float] = field(default_factory=list)  # aggregate, one per repeat
    ttft: list[float] = field(default_factory=list)  # per request
    requests: int = 0
    complete: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Measured:
    """The samples of every figure for one server (or the in-process ceiling)."""

    name: str
    kind: str  # "llmkit", "peer" or "in-process"
    url: str | None = None
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    levels: dict[int, Level] = field(default_factory=lambda: defaultdict(Level))
    problems: list[str] = field(default_factory=list)
    tool_requests: int = 0  # the tool-call workload's requests, answered or not
    valid_calls: int = 0  # the answers to them that were a valid call

    def add(self, figure: str, value: float | None) -> None:
        if value is not None:
            self.samples[figure].append(value)

    def add_call(self, answer: Answer) -> None:
        """The figures of an answer to the tool request, and whether it is a valid call.

        An answer without a call (a server that ignored the tools) has no call's speed to add.
        """
        if answer.tool_calls:
            self.add("tool_tokens_per_s", answer.tokens_per_second)
            self.add("tool_tokens", answer.completion_tokens)
        problem = call_problem(answer.tool_calls)
        if problem is None:
            self.valid_calls += 1
        else:
            self.problems.append(
                f"tool call: {problem} (finish_reason {answer.finish_reason!r}, "
                f"{answer.completion_tokens} tokens)"
            )


def complete(answer: Answer | None, max_tokens: int) -> bool:
    """A response that ended as the API says it should: a finish_reason, and all of it if `length`.

    When the server sent no usage the tokens are counted chunks, which may merge a few tokens, so
    only the finish_reason can be checked.
    """
    if answer is None or answer.interrupted or answer.finish_reason not in ("stop", "length"):
        return False
    if answer.finish_reason == "stop" or answer.tokens_counted:
        return True
    return answer.completion_tokens == max_tokens


def _why_incomplete(answer: Answer | None, max_tokens: int) -> str:
    if answer is None:
        return "no answer"
    if answer.finish_reason is None:
        return f"stream ended after {answer.completion_tokens} tokens without a finish_reason"
    return (
        f"finish_reason {answer.finish_reason!r} after {answer.completion_tokens} of "
        f"{max_tokens} tokens"
    )


def start_llmkit(
    config: BenchConfig, n_ctx: int, timeout: float = 300.0
) -> tuple[launcher.Launched, float]:
    """Start `llmkit serve` and time it from process start to the first /health 200, in seconds.

    Polled every 20 ms, not with `llmkit.serve()`'s 0.1 s: too coarse for a figure of about a second.
    """
    options = {
        "threads": config.threads,
        "parallel": config.parallel,
        "ctx": n_ctx,
        "offline": True,
        "models_dir": config.models_dir,
    }
    started = time.perf_counter()
    server = launcher.start(config.model, options=options)
    while True:
        if _answers(server.health):
            return server, time.perf_counter() - started
        if server.process.poll() is not None:
            tail = " | ".join(server.log.read_text(errors="replace").strip().splitlines()[-5:])
            raise LlmkitError(f"llmkit serve exited ({server.process.returncode}): {tail}")
        if time.perf_counter() - started > timeout:
            launcher.stop(server.process)
            raise LlmkitError(f"llmkit serve was not ready after {timeout:g} s (log: {server.log})")
        time.sleep(0.02)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, reset, timed out, or an HTTP error status
        return False


def pick_model(listed: list[str], wanted: str) -> str:
    """The model to ask a server for: --model's when it lists it (a server serving several), else
    its first (a peer names its one model its own way), else "default"."""
    return wanted if wanted in listed else next(iter(listed), "default")


class Remote:
    """The client-side measurements, through the openai SDK, of one OpenAI-compatible server."""

    def __init__(self, url: str, config: BenchConfig) -> None:
        import openai

        self.config = config
        self.nonce = Nonces(config.seed or new_seed())
        self.client = openai.OpenAI(
            base_url=url, api_key=resolve_api_key(), timeout=600.0, max_retries=0
        )
        try:
            self.model = pick_model([m.id for m in self.client.models.list().data], config.model)
        except openai.APIConnectionError:
            raise LlmkitError(f"no server answers at {url}") from None
        except openai.APIError:
            self.model = "default"  # a server without /v1/models may still chat

    def session(self, max_tokens: int, **options: Any) -> ChatSession:
        """A fresh conversation at temperature 0; `options` are ChatSession's (json_mode, tools)."""
        return ChatSession(
            client=self.client, model=self.model, temperature=0, max_tokens=max_tokens, **options
        )

    def ask(self, prompt: str, max_tokens: int, **options: Any) -> tuple[Answer, int]:
        """One streamed answer and the number of content chunks it came in."""
        chunks = 0

        def count(_: str) -> None:
            nonlocal chunks
            chunks += 1

        answer = self.session(max_tokens, **options).ask(prompt, on_text=count)
        return answer, chunks

    def warm_up(self) -> None:
        self.ask(f"{self.nonce('warm-up')} Say hello.", 8)

    def measure(self, into: Measured, log: Log) -> None:
        """One repeat of every client-side figure; a part the server fails is noted, not fatal."""
        steps: list[tuple[str, Callable[[Measured], None]]] = [
            (f"generation ({self.config.max_tokens} tokens)", self.generation),
            ("prompt", self.prompt),
            (f"a conversation of {TURNS} turns", self.conversation),
            ("JSON mode", self.json_mode),
            ("tool call", self.tool_call),
            *(
                (
                    f"{n} concurrent client{'s' * (n > 1)}",
                    lambda m, n=n: self.concurrent(n, m.levels[n]),
                )
                for n in self.config.concurrency
            ),
        ]
        for title, step in steps:
            log(f"  {into.name}: {title}")
            try:
                step(into)
            except LlmkitError as exc:
                into.problems.append(f"{title}: {exc}")
                log(f"  {into.name}: {title} failed: {exc}")

    def generation(self, into: Measured) -> None:
        answer, chunks = self.ask(
            f"{self.nonce('generation')} {GENERATION_PROMPT}", self.config.max_tokens
        )
        into.add("ttft_s", answer.seconds_to_first_token)
        into.add("tokens_per_s", answer.tokens_per_second)
        into.add("tokens", answer.completion_tokens)
        into.add("chunks", chunks)

    def prompt(self, into: Measured) -> None:
        # One token is enough: the time to it is the time to read the prompt.
        answer, _ = self.ask(f"{self.nonce('prompt')} {long_prompt(self.config.prompt_lines)}", 1)
        into.add("prompt_ttft_s", answer.seconds_to_first_token)
        into.add("prompt_tokens", answer.prompt_tokens)  # None from a server that sends no usage

    def conversation(self, into: Measured) -> None:
        """A conversation growing by a question and an answer a turn: is its history recomputed?"""
        chat = self.session(self.config.turn_tokens)
        start = self.nonce("conversation")
        for turn in range(TURNS):
            chat.ask(turn_question(turn, start))
        into.add("turn1_ttft_s", chat.answers[0].seconds_to_first_token)
        into.add("turn10_ttft_s", chat.answers[-1].seconds_to_first_token)
        into.add("turn10_prompt_tokens", chat.answers[-1].prompt_tokens)

    def json_mode(self, into: Measured) -> None:
        answer, _ = self.ask(
            f"{self.nonce('JSON mode')} {JSON_PROMPT}", self.config.json_max_tokens, json_mode=True
        )
        into.add("json_tokens_per_s", answer.tokens_per_second)
        into.add("json_tokens", answer.completion_tokens)

    def tool_call(self, into: Measured) -> None:
        """One forced call (as JSON mode is measured); a server that refuses tools is a problem."""
        into.tool_requests += 1
        answer, _ = self.ask(
            f"{self.nonce('tool call')} {TOOL_PROMPT}", self.config.tool_max_tokens, **TOOL_REQUEST
        )
        into.add_call(answer)

    def concurrent(self, clients: int, level: Level) -> None:
        """`clients` streams started together; aggregate tokens/s over the wall time of them all."""
        max_tokens = self.config.max_tokens
        barrier = threading.Barrier(clients)
        # (began, ended, answer, problem) for each client
        results: list[tuple[float, float, Answer | None, str | None]] = [(0, 0, None, None)]
        results *= clients

        starts = [self.nonce(f"{clients} clients") for _ in range(clients)]

        def one(i: int) -> None:
            start = starts[i]
            barrier.wait()
            began = time.perf_counter()
            answer, problem = None, None
            try:
                answer, _ = self.ask(f"{start} {GENERATION_PROMPT}", max_tokens)
            except Exception as exc:  # noqa: BLE001 - a broken stream is a result here, not an end
                problem = str(exc) or type(exc).__name__
            results[i] = (began, time.perf_counter(), answer, problem)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tokens = 0
        for _, _, answer, problem in results:
            level.requests += 1
            if complete(answer, max_tokens):
                level.complete += 1
            elif len(level.problems) < 5:
                level.problems.append(problem or _why_incomplete(answer, max_tokens))
            if answer is not None:
                tokens += answer.completion_tokens
                if answer.seconds_to_first_token is not None:
                    level.ttft.append(answer.seconds_to_first_token)
        wall = max(r[1] for r in results) - min(r[0] for r in results if r[0])
        if tokens and wall > 0:
            level.tokens_per_s.append(tokens / wall)
