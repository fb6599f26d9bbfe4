"""From samples to figures: medians, percentiles and ratios. Pure functions, no I/O."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from llmkit.bench.measure import IN_PROCESS, LLMKIT, Measured


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float | None, b: float | None) -> float | None:
    """a ÷ b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def summarize(measured: Measured) -> dict[str, Any]:
    """Medians (and the samples they came from) of one server's figures."""
    figures: dict[str, Any] = {name: median(values) for name, values in measured.samples.items()}
    figures["turn_ratio"] = ratio(figures.get("turn10_ttft_s"), figures.get("turn1_ttft_s"))
    figures["json_vs_text"] = ratio(figures.get("json_tokens_per_s"), figures.get("tokens_per_s"))
    figures["tool_vs_text"] = ratio(figures.get("tool_tokens_per_s"), figures.get("tokens_per_s"))
    if measured.tool_requests:
        figures["tool_calls"] = measured.tool_requests
        figures["valid_calls"] = measured.valid_calls
    levels = {}
    for clients, level in sorted(measured.levels.items()):
        levels[str(clients)] = {
            "tokens_per_s": median(level.tokens_per_s),
            "ttft_p50_s": percentile(level.ttft, 50),
            "ttft_p95_s": percentile(level.ttft, 95),
            "requests": level.requests,
            "complete": level.complete,
            "problems": level.problems,
            "samples": {"tokens_per_s": level.tokens_per_s, "ttft_s": level.ttft},
        }
    return {
        "name": measured.name,
        "kind": measured.kind,
        "url": measured.url,
        "figures": {k: v for k, v in figures.items() if v is not None},
        "concurrency": levels,
        "problems": measured.problems,
        "samples": dict(measured.samples),
    }


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the figures that set one result beside another: ratios, prompt speed.

    Each server against the in-process run (the last result), and at each number of clients,
    llmkit's aggregate tokens/s against each other server's (`llmkit_vs_this`).
    """
    ceiling = results[-1]["figures"]
    llmkit = next((r for r in results if r.get("kind") == LLMKIT), None)
    for result in results:
        if llmkit is not None and result is not llmkit:
            for clients, level in result.get("concurrency", {}).items():
                mine = llmkit["concurrency"].get(clients, {}).get("tokens_per_s")
                value = ratio(mine, level.get("tokens_per_s"))
                if value is not None:
                    level["llmkit_vs_this"] = value
        figures = result["figures"]
        if result is not results[-1]:
            figures["vs_in_process"] = ratio(
                figures.get("tokens_per_s"), ceiling.get("tokens_per_s")
            )
            # Each repeat measures the server and in-process back to back: on a shared machine
            # the ratio within a repeat is steadier than the ratio of the medians.
            ours = result.get("samples", {}).get("tokens_per_s", [])
            theirs = results[-1].get("samples", {}).get("tokens_per_s", [])
            if ours and len(ours) == len(theirs):
                figures["vs_in_process_paired"] = median(
                    [a / b for a, b in zip(ours, theirs, strict=True)]
                )
        # A server that sends no usage read as many tokens as the same model in-process did.
        if "prompt_tokens" not in figures and "prompt_tokens" in ceiling:
            figures["prompt_tokens"] = ceiling["prompt_tokens"]
            figures["prompt_tokens_from"] = IN_PROCESS
        figures["prompt_tokens_per_s"] = ratio(
            figures.get("prompt_tokens"), figures.get("prompt_ttft_s")
        )
        result["figures"] = {k: v for k, v in figures.items() if v is not None}
    return results
