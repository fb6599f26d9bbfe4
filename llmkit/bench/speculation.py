"""The speculation workload: llmkit with n-gram drafts against llmkit without, on copy-heavy and ordinary text.

Two `llmkit serve` processes (one with `--no-speculation`) answer the same prompts at temperature 0,
1 client and then N together, interleaved request by request so that a noisy machine slows both
alike; each figure is the median over the repeats. The copy-heavy set (repeat a text, edit one line
of a file, list quoted passages) comes from a JSON file (scripts/copy_prompts.json in a checkout):
{"copy": [{"task": ..., "prompt": ...}], "ordinary": [prompt, ...]}.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from llmkit import launcher
from llmkit.bench.measure import Log, nop
from llmkit.errors import LlmkitError

SERVERS = ("speculation", "no speculation")


def load_prompts(path: Path) -> dict[str, list[str]]:
    """The prompt sets of the file: "copy" and "ordinary", each a list of prompts."""
    try:
        data = json.loads(path.read_text())
        return {
            "copy": [p["prompt"] if isinstance(p, dict) else p for p in data["copy"]],
            "ordinary": list(data["ordinary"]),
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LlmkitError(f"cannot read the prompt set {path}: {exc}") from None


def _tokens_per_s(client: Any, prompts: list[str], max_tokens: int) -> tuple[float, list[str]]:
    """All prompts sent together (one client each): completion tokens over the wall time."""
    results: list[Any] = [None] * len(prompts)

    def one(i: int) -> None:
        results[i] = client.completions.create(
            model="m", prompt=prompts[i], max_tokens=max_tokens, temperature=0
        )

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if any(r is None for r in results):
        raise LlmkitError("a request failed")
    tokens = sum(r.usage.completion_tokens for r in results)
    return tokens / wall, [r.choices[0].text for r in results]


def run(
    model: str,
    prompts_file: Path,
    *,
    threads: int = 2,
    clients: int = 4,
    repeats: int = 3,
    max_tokens: int = 128,
    models_dir: Path | None = None,
    log: Log = nop,
) -> dict[str, Any]:
    """Median tokens/s of each server for each (set, clients), the ratios, and the texts that differ."""
    import openai

    sets = load_prompts(prompts_file)
    options = {"threads": threads, "parallel": clients, "offline": True, "models_dir": models_dir}
    servers: dict[str, launcher.Launched] = {}
    samples: dict[tuple[str, str, int], list[float]] = {}
    texts: dict[str, dict[int, str]] = {name: {} for name in SERVERS}
    try:
        for name in SERVERS:
            extra = {"no_speculation": name == "no speculation"}
            servers[name] = launcher.start(model, options={**options, **extra})
        for launched in servers.values():
            launcher._wait_ready(launched.process, launched.health, launched.log, 300.0)
        api = {
            name: openai.OpenAI(base_url=s.url, api_key="none", timeout=600.0, max_retries=0)
            for name, s in servers.items()
        }
        for name in SERVERS:  # warm up: the first request pays for one-time setup
            _tokens_per_s(api[name], ["Hello"], 4)
        for r in range(repeats):
            for kind, prompts in sets.items():
                for width in (1, clients):
                    for name in SERVERS if r % 2 == 0 else SERVERS[::-1]:
                        if width == 1:
                            rates = []
                            for i, prompt in enumerate(prompts):
                                rate, out = _tokens_per_s(api[name], [prompt], max_tokens)
                                rates.append(rate)
                                if kind == "copy":
                                    texts[name][i] = out[0]
                            rate = statistics.mean(rates)
                        else:
                            batch = [prompts[i % len(prompts)] for i in range(width)]
                            rate, _ = _tokens_per_s(api[name], batch, max_tokens)
                        samples.setdefault((kind, name, width), []).append(rate)
                        log(f"  repeat {r + 1} {kind} {width} client(s) {name}: {rate:.1f} tok/s")
    finally:
        for launched in servers.values():
            launcher.stop(launched.process)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    ratios = {
        f"{kind}, {width} client{'s' * (width > 1)}": medians[(kind, SERVERS[0], width)]
        / medians[(kind, SERVERS[1], width)]
        for kind in sets
        for width in (1, clients)
    }
    same = [i for i in texts[SERVERS[0]] if texts[SERVERS[0]][i] == texts[SERVERS[1]].get(i)]
    return {
        "tokens_per_s": {
            f"{kind}, {width} client(s), {name}": value
            for (kind, name, width), value in medians.items()
        },
        "ratios": ratios,
        "copy_texts_equal": f"{len(same)} of {len(sets['copy'])}",
    }
