"""The prompt-cache benchmark (issue 29): conversations over long documents, more than the slots.

N conversations, each with its own document of about D tokens, take turns one request at a time
(conversation 1's turn, then 2's, ... then turn 2 of each), so that with 4 slots each turn of a
conversation finds its slot taken by others. Time to first token is measured for each turn on:
llmkit with the prompt cache, llmkit with it off, and llama-server (-np 4, its default
--cache-ram), one after the other on the same prompts. Then both cached servers restart (llmkit
after SIGTERM, which writes its slots to disk) and every conversation takes one more turn. The
figures are reported, not judged.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from llmkit import launcher

QUESTIONS = [
    "Summarize the document in one sentence.",
    "Which number appears in the document?",
    "Name one thing the document says about the weather.",
    "What is the last word of the document?",
]


def document(i: int, words: int) -> str:
    """Conversation i's own document: about `words` words, no two alike."""
    things = ["river", "mountain", "harbor", "orchard", "bridge", "market", "forest", "tower"]
    sentences = []
    for j in range(words // 12):
        thing = things[(i * 7 + j) % len(things)]
        sentences.append(
            f"In report {i}-{j}, the {thing} near village {i * 31 + j} was seen at dawn, "
            f"and the weather was {['clear', 'rainy', 'windy'][(i + j) % 3]}."
        )
    return " ".join(sentences)


@dataclass
class Run:
    """One server's times to first token by turn (1-based), and its answers."""

    name: str
    ttft: dict[int, list[float]] = field(default_factory=dict)
    answers: dict[int, list[str]] = field(default_factory=dict)

    def summary(self, turns: list[int]) -> dict[str, float]:
        times = sorted(t for turn in turns for t in self.ttft.get(turn, []))
        if not times:
            return {}
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        return {"median": statistics.median(times), "p95": p95, "n": len(times)}


def ask(
    client: openai.OpenAI, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str]:
    """Stream one chat turn at temperature 0: (seconds to the first token, the answer)."""
    start = time.perf_counter()
    first = None
    text = ""
    stream: Any = client.chat.completions.create(
        model="any",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - start
            text += chunk.choices[0].delta.content
    return (first if first is not None else time.perf_counter() - start), text


def turns(
    client: openai.OpenAI,
    histories: list[list[dict[str, str]]],
    numbers: list[int],
    run: Run,
    max_tokens: int,
    log: Any,
) -> None:
    """Each conversation takes these turns, one request at a time, rotating over conversations."""
    for turn in numbers:
        for i, history in enumerate(histories):
            history.append({"role": "user", "content": QUESTIONS[(turn - 1) % len(QUESTIONS)]})
            seconds, text = ask(client, history, max_tokens)
            history.append({"role": "assistant", "content": text})
            run.ttft.setdefault(turn, []).append(seconds)
            run.answers.setdefault(turn, []).append(text)
            log(f"  {run.name}: turn {turn}, conversation {i + 1}: {seconds:.2f} s")


class LlamaServer:
    """llama-server -np N with its defaults (its --cache-ram among them)."""

    def __init__(
        self, binary: str, model: Path, threads: int, parallel: int, ctx: int, template: str | None
    ) -> None:
        self.port = launcher.free_port()
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [binary, "-m", str(model), "--port", str(self.port), "-t", str(threads)]
                + ["-np", str(parallel), "-c", str(ctx * parallel), "--no-webui"]
                # A built-in template's name: with Jinja on (llama-server's default) the name
                # itself would be read as a Jinja template, and the prompt would be only "gemma".
                + (["--no-jinja", "--chat-template", template] if template else []),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}/v1"
        health = f"http://127.0.0.1:{self.port}/health"
        launcher.wait_ready(self.process, health, self.log, 300, name="llama-server")  # type: ignore[arg-type]

    def stop(self) -> None:
        launcher.stop(self.process)  # type: ignore[arg-type]


def run_benchmark(
    model: Path,
    llama_server: str | None,
    *,
    conversations: int = 16,
    words: int = 1100,
    threads: int = 2,
    parallel: int = 4,
    ctx: int = 4096,
    max_tokens: int = 16,
    chat_format: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the measurement on every server; returns the figures (and prints progress to `log`)."""
    docs = [document(i, words) for i in range(conversations)]

    def fresh() -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": f"Read this document.\n\n{d}"}] for d in docs]

    cache_dir = Path(tempfile.mkdtemp(prefix="llmkit-bench-cache-"))
    base: dict[str, Any] = {
        "threads": threads,
        "parallel": parallel,
        "ctx": ctx,
        "drain_seconds": 0,
    }
    if chat_format:
        base["chat_format"] = chat_format
    variants = {
        "llmkit (prompt cache)": {**base, "cache_dir": str(cache_dir)},
        "llmkit (cache off)": {**base, "cache_ram": "0", "no_cache_disk": True},
    }
    runs: dict[str, Run] = {}
    for name, options in variants.items():
        run = runs[name] = Run(name)
        histories = fresh()
        server = launcher.start(str(model), options=options)
        try:
            launcher.wait_ready(server.process, server.health, server.log, 300)
            client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=600)
            turns(client, histories, [1, 2, 3], run, max_tokens, log)
        finally:
            launcher.stop(server.process)  # SIGTERM: the cached one writes its slots to disk
        server = launcher.start(str(model), options=options)
        try:
            launcher.wait_ready(server.process, server.health, server.log, 300)
            client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=600)
            turns(client, histories, [4], run, max_tokens, log)
        finally:
            launcher.stop(server.process)
    if llama_server:
        run = runs["llama-server"] = Run("llama-server")
        histories = fresh()
        peer = LlamaServer(llama_server, model, threads, parallel, ctx, chat_format)
        try:
            client = openai.OpenAI(base_url=peer.url, api_key="x", max_retries=0, timeout=600)
            turns(client, histories, [1, 2, 3], run, max_tokens, log)
        finally:
            peer.stop()
        peer = LlamaServer(llama_server, model, threads, parallel, ctx, chat_format)
        try:
            client = openai.OpenAI(base_url=peer.url, api_key="x", max_retries=0, timeout=600)
            turns(client, histories, [4], run, max_tokens, log)
        finally:
            peer.stop()
    cached, plain = runs["llmkit (prompt cache)"], runs["llmkit (cache off)"]
    same = sum(
        a == b
        for t in (1, 2, 3, 4)
        for a, b in zip(cached.answers[t], plain.answers[t], strict=True)
    )
    disk = sum(p.stat().st_size for p in cache_dir.rglob("*.llkv"))
    return {
        "conversations": conversations,
        "document_words": words,
        "servers": {
            name: {
                "turn 1": r.summary([1]),
                "turns 2-3": r.summary([2, 3]),
                "turn 4 after a restart": r.summary([4]),
            }
            for name, r in runs.items()
        },
        "identical answers, cache on and off": f"{same} of {4 * conversations}",
        "disk bytes after the run": disk,
    }


def report(figures: dict[str, Any]) -> str:
    """The figures as a table (seconds to first token, median / p95)."""
    lines = [
        f"{figures['conversations']} conversations, documents of ~{figures['document_words']} "
        "words, one request at a time; time to first token, median / p95 (s)",
        f"{'server':<24}{'turn 1':>16}{'turns 2-3':>16}{'turn 4 (restart)':>20}",
    ]
    for name, s in figures["servers"].items():
        cells = [
            f"{s[k]['median']:.2f} / {s[k]['p95']:.2f}" if s[k] else "-"
            for k in ("turn 1", "turns 2-3", "turn 4 after a restart")
        ]
        lines.append(f"{name:<24}{cells[0]:>16}{cells[1]:>16}{cells[2]:>20}")
    servers = figures["servers"]
    on, off = servers["llmkit (prompt cache)"], servers["llmkit (cache off)"]
    ratios = [("turns 2-3", "cache off / cache on", off, on)]
    if "llama-server" in servers:
        ratios.append(("turns 2-3", "llama-server / llmkit", servers["llama-server"], on))
        ratios.append(
            ("turn 4 after a restart", "llama-server / llmkit", servers["llama-server"], on)
        )
    for key, label, a, b in ratios:
        if a[key] and b[key]:
            lines.append(f"{key}, {label}: {a[key]['median'] / b[key]['median']:.1f}x (median)")
    lines.append(
        f"identical answers, cache on and off: {figures['identical answers, cache on and off']}"
    )
    lines.append(
        f"prompt cache on disk after the run: {figures['disk bytes after the run'] / 1e6:.0f} MB"
    )
    return "\n".join(lines)


def save(figures: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2))
