"""The in-process ceiling: the same generation without a server, for a server's figures to be set beside.

For now this is `llama_cpp.Llama` in this process (same file, threads and context). It is meant to
become llmkit's own engine driven without the server (`Engine.submit(...)`, then `job.events()`
from a plain thread) once the engine's Job works without asyncio: `__init__` and `ask` change,
and the prompt tokens come from the job's `Usage` instead of `llama.n_tokens`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmkit.bench.config import BenchConfig
from llmkit.bench.measure import IN_PROCESS, Log, Measured
from llmkit.bench.workloads import GENERATION_PROMPT, JSON_PROMPT, long_prompt, nonce
from llmkit.client import Answer


class InProcess:
    """The same generation with `llama_cpp.Llama` in this process: the ceiling for a server."""

    def __init__(self, path: Path, threads: int, n_ctx: int, chat_format: str | None) -> None:
        import llama_cpp

        from llmkit.params import ChatRequest

        self.llama = llama_cpp.Llama(
            model_path=str(path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_gpu_layers=0,
            chat_format=chat_format,
            verbose=False,
        )
        # The sampling a request to llmkit serve gets by default, so that both sample alike.
        fields = ChatRequest.model_fields
        self.sampling = {
            name: fields[name].default for name in ("top_p", "top_k", "min_p", "repeat_penalty")
        }

    def ask(self, prompt: str, max_tokens: int, json_mode: bool = False) -> Answer:
        """Stream an answer as a server would, timed and counted as the clients count."""
        started = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        finish = None
        stream: Any = self.llama.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            response_format={"type": "json_object"} if json_mode else None,
            **self.sampling,
        )
        for chunk in stream:
            for choice in chunk["choices"]:
                finish = choice.get("finish_reason") or finish
                text = choice.get("delta", {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    pieces.append(text)
        return Answer(
            text="".join(pieces),
            seconds_to_first_token=first,
            completion_tokens=len(pieces),
            total_seconds=time.perf_counter() - started,
            tokens_counted=True,
            finish_reason=finish,
        )

    def warm_up(self) -> None:
        self.ask(f"{nonce()} Say hello.", 8)

    def measure(self, into: Measured, config: BenchConfig, log: Log) -> None:
        log(f"  {IN_PROCESS}: generation ({config.max_tokens} tokens)")
        answer = self.ask(f"{nonce()} {GENERATION_PROMPT}", config.max_tokens)
        into.add("ttft_s", answer.seconds_to_first_token)
        into.add("tokens_per_s", answer.tokens_per_second)
        into.add("tokens", answer.completion_tokens)
        log(f"  {IN_PROCESS}: prompt")
        prompt = f"{nonce()} {long_prompt(config.prompt_lines)}"
        answer = self.ask(prompt, 1)
        into.add("prompt_ttft_s", answer.seconds_to_first_token)
        into.add("prompt_tokens", self.llama.n_tokens)  # all it evaluated: the one token is not
        log(f"  {IN_PROCESS}: JSON mode")
        answer = self.ask(f"{nonce()} {JSON_PROMPT}", config.json_max_tokens, json_mode=True)
        into.add("json_tokens_per_s", answer.tokens_per_second)
        into.add("json_tokens", answer.completion_tokens)
