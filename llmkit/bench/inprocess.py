"""The in-process figure: llmkit's own engine driven directly, without the server.

The model is loaded as `llmkit serve` loads it (a small `llama_cpp.Llama` that tokenizes and renders
chat templates, and an `Engine` with its own context for generation), and each question goes
through the request path a request to the server takes (`ChatRequest`, then `choices_for`: the same
validation, chat template, sampling defaults and JSON-mode or tool-call grammar) into
`Engine.submit`, whose `job.events()` are read from this thread; a tool call's text is parsed into
calls as the server parses it. What is left out is HTTP, the event loop and the openai SDK: the gap
between this figure and llmkit's is what the server adds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmkit.bench.config import BenchConfig
from llmkit.bench.measure import IN_PROCESS, Log, Measured
from llmkit.bench.workloads import (
    GENERATION_PROMPT,
    JSON_PROMPT,
    TOOL_PROMPT,
    TOOL_REQUEST,
    Nonces,
    long_prompt,
    new_seed,
)
from llmkit.client import Answer, ToolCall
from llmkit.engine import Delta, Usage
from llmkit.plan import Plan
from llmkit.server.bodies import ChatRequest
from llmkit.server.choices import choices_for, tools_of
from llmkit.server.load import load
from llmkit.settings import ServeSettings
from llmkit.tools.parse import parse

# How long to wait for each event of an answer: the benchmark's client timeout for a server.
_EVENT_TIMEOUT = 600.0


class InProcess:
    """llmkit's engine in this process, one slot: what a server adds its overhead to."""

    def __init__(
        self,
        path: Path,
        threads: int,
        n_ctx: int,
        chat_format: str | None,
        chat_template_text: str | None = None,  # --chat-template-file's
        seed: str | None = None,  # the prompts' starts, as the servers' of the run (Nonces)
    ) -> None:
        self.nonce = Nonces(seed or new_seed())
        # Loaded as `llmkit serve` loads it, with one slot.
        plan = Plan(
            path.stem,
            path,
            threads,
            n_ctx,
            chat_format,
            chat_template=chat_template_text,
            parallel=1,
        )
        self.served = load(plan, max_queue=ServeSettings.max_queue)
        self.llama, self.template, self.engine = (
            self.served.llama,
            self.served.template,
            self.served.engine,
        )

    def close(self) -> None:
        """Stop the engine and free its context, then the model."""
        self.served.close()

    def ask(self, prompt: str, max_tokens: int, json_mode: bool = False, **fields: Any) -> Answer:
        """One answer as `llmkit serve` would generate it, timed and counted as the clients count.

        `fields` go into the request's body as they are (tools, tool_choice, parallel_tool_calls).
        """
        started = time.perf_counter()  # the request path is part of what a client waits for
        # The body the benchmark's client sends, validated as the server validates a JSON body.
        request: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if json_mode:
            request["response_format"] = {"type": "json_object"}
        body = ChatRequest.model_validate({**request, **fields})
        tools = tools_of(body)
        choices, _ = choices_for(body, self.served, tools)
        job = self.engine.submit(choices)
        first: float | None = None
        pieces: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        try:
            for item in job.events(timeout=_EVENT_TIMEOUT):
                if isinstance(item, Delta):
                    finish = item.finish_reason or finish
                    if item.text:
                        if first is None:
                            first = time.perf_counter() - started
                        pieces.append(item.text)
                else:
                    usage = item
        finally:
            job.cancel()  # frees its slot if the wait failed; nothing to do once it has ended
        total = time.perf_counter() - started
        assert usage is not None, "the engine ended the job without its usage"
        text, calls = "".join(pieces), []
        if tools is not None:
            parsed = parse(self.served.family, text)
            text = parsed.content
            calls = [ToolCall(c.name, c.arguments) for c in parsed.calls if c.complete]
        return Answer(
            text=text,
            seconds_to_first_token=first,
            completion_tokens=usage.completion_tokens,
            total_seconds=total,
            # The tokens read in the time to first token: those the slot's cache did not hold.
            prompt_tokens=usage.prompt_tokens - usage.cached_tokens,
            finish_reason=finish,
            tool_calls=calls,
        )

    def warm_up(self) -> None:
        self.ask(f"{self.nonce('warm-up')} Say hello.", 8)

    def measure(self, into: Measured, config: BenchConfig, log: Log) -> None:
        log(f"  {IN_PROCESS}: generation ({config.max_tokens} tokens)")
        answer = self.ask(f"{self.nonce('generation')} {GENERATION_PROMPT}", config.max_tokens)
        into.add("ttft_s", answer.seconds_to_first_token)
        into.add("tokens_per_s", answer.tokens_per_second)
        into.add("tokens", answer.completion_tokens)
        log(f"  {IN_PROCESS}: prompt")
        answer = self.ask(f"{self.nonce('prompt')} {long_prompt(config.prompt_lines)}", 1)
        into.add("prompt_ttft_s", answer.seconds_to_first_token)
        into.add("prompt_tokens", answer.prompt_tokens)
        log(f"  {IN_PROCESS}: JSON mode")
        answer = self.ask(
            f"{self.nonce('JSON mode')} {JSON_PROMPT}", config.json_max_tokens, json_mode=True
        )
        into.add("json_tokens_per_s", answer.tokens_per_second)
        into.add("json_tokens", answer.completion_tokens)
        log(f"  {IN_PROCESS}: tool call")
        into.tool_requests += 1
        answer = self.ask(
            f"{self.nonce('tool call')} {TOOL_PROMPT}", config.tool_max_tokens, **TOOL_REQUEST
        )
        into.add_call(answer)
