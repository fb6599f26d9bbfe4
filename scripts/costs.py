#!/usr/bin/env python3
"""What two features cost generation, on one `llmkit serve`: logprobs, and a concurrent embedding load.

    scripts/costs.py                       # gemma-3-270m, 2 threads, 3 rounds (about a minute)
    scripts/costs.py --rounds 5 --tokens 96

(a) Aggregate tokens/s of 4 concurrent streams where none asks for logprobs, against the same 4
    where one asks for `logprobs: true, top_logprobs: 20`.
(b) One stream's tokens/s alone, against the same stream while another client keeps requesting
    embeddings.

Each pair is measured interleaved (A, B, A, B, ...) after a warm-up, since a shared machine's
speed drifts; the figures are every round's, with their range. A benchmark reports, it does
not judge.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's llmkit

import openai  # noqa: E402

import llmkit  # noqa: E402
from llmkit.bench.workloads import GENERATION_PROMPT  # noqa: E402

EMBED_TEXTS = ["A sentence to embed while a stream runs, again and again. " * 4] * 4


def stream(client: openai.OpenAI, tokens: int, logprobs: bool) -> tuple[int, float, float]:
    """One stream to exactly `tokens` tokens: (tokens, first token time, last token time)."""
    extra: dict[str, Any] = {"ignore_eos": True}
    if logprobs:
        extra.update(logprobs=True, top_logprobs=20)
    chunks = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": GENERATION_PROMPT}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    first = last = 0.0
    count = 0
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    return count, first, last


def concurrent_streams(client: openai.OpenAI, tokens: int, with_logprobs: bool) -> float:
    """Aggregate tokens/s of 4 concurrent streams; the first asks for logprobs if told."""
    results: list[tuple[int, float, float]] = [(0, 0.0, 0.0)] * 4

    def run(i: int) -> None:
        results[i] = stream(client, tokens, with_logprobs and i == 0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(r[2] for r in results)
    return sum(r[0] for r in results) / (end - begin)


def stream_beside_embeddings(
    client: openai.OpenAI, tokens: int, embedding: bool
) -> tuple[float, int]:
    """One stream's tokens/s (first to last token), alone or while embeddings are requested."""
    stop = threading.Event()
    embedded = [0]

    def load() -> None:
        while not stop.is_set():
            embedded[0] += client.embeddings.create(
                model="any", input=EMBED_TEXTS
            ).usage.prompt_tokens

    worker = threading.Thread(target=load)
    if embedding:
        worker.start()
        time.sleep(0.5)  # the load is running when the stream starts
    try:
        count, first, last = stream(client, tokens, False)
    finally:
        stop.set()
        if embedding:
            worker.join()
    return (count - 1) / (last - first), embedded[0]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:34s} median {statistics.median(values):6.1f}  range "
        f"{min(values):6.1f} – {max(values):6.1f}  ({', '.join(f'{v:.1f}' for v in values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="Tokens each stream generates.")
    args = parser.parse_args()

    with llmkit.serve(args.model, threads=args.threads, ctx=2048) as client:
        print(
            f"llmkit serve {args.model}, {args.threads} threads, {args.rounds} rounds", flush=True
        )
        concurrent_streams(client, 8, True)  # warm-up: the prompt cache, the embedding context
        stream_beside_embeddings(client, 8, True)
        plain, logprobs = [], []
        alone, loaded, embedded = [], [], []
        for _ in range(args.rounds):
            plain.append(concurrent_streams(client, args.tokens, False))
            logprobs.append(concurrent_streams(client, args.tokens, True))
            alone.append(stream_beside_embeddings(client, args.tokens, False)[0])
            speed, tokens = stream_beside_embeddings(client, args.tokens, True)
            loaded.append(speed)
            embedded.append(tokens)
    print("(a) 4 concurrent streams, aggregate tokens/s")
    print(summary("  none asks for logprobs", plain))
    print(summary("  one asks for top_logprobs 20", logprobs))
    ratios = [b / a for a, b in zip(plain, logprobs, strict=True)]
    print(summary("  ratio (logprobs / none), x100", [100 * r for r in ratios]))
    print("(b) one stream, tokens/s")
    print(summary("  alone", alone))
    print(summary("  beside an embedding load", loaded))
    ratios = [b / a for a, b in zip(alone, loaded, strict=True)]
    print(summary("  ratio (loaded / alone), x100", [100 * r for r in ratios]))
    print(f"  tokens embedded meanwhile per round: {embedded}")


if __name__ == "__main__":
    main()
