"""The speculation workload: llmkit with n-gram drafts against llmkit without, on copy-heavy and ordinary text.

Two `llmkit serve` processes (one with `--no-speculation`), and any peers given (llama-server
plain and with `--spec-type ngram-mod`, say), answer the same prompts at temperature 0, 1 client
and then N together, interleaved request by request so that a noisy machine slows all alike; each
figure is the median over the repeats. The copy-heavy set (repeat a text, edit one line of a file,
list quoted passages) is instructions, sent as a user's chat message so that each server applies
the model's chat template (an instruct model then does the task: it copies); the ordinary set is
completion prompts. Both come from a JSON file (scripts/copy_prompts.json in a checkout):
{"copy": [{"task": ..., "prompt": ...}], "ordinary": [prompt, ...]}.

A third set is structured output: a JSON schema with long key names, whose keys, quotes and
punctuation the grammar forces, against free text of the same length from the same messages
(llmkit servers only: peers differ in how they take a schema).

After the timed runs, an untimed pass asks both llmkit servers for each copy-heavy text again with
token logprobs and, where the texts differ, reports the first differing token and the gap between
the two best logits there (a near tie that a different batch shape rounds the other way).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmkit import launcher
from llmkit.bench.config import Peer
from llmkit.bench.measure import Log, nop
from llmkit.errors import LlmkitError

SERVERS = ("speculation", "no speculation")
# A third llmkit, which also drafts from recent requests (`--draft-from-recent`): the same memory
# across requests as llama-server's ngram-mod, which the repeats of the same prompts reward.
RECENT = "speculation + recent"
OPTIONS = {
    "speculation": {},
    "no speculation": {"no_speculation": True},
    RECENT: {"draft_from_recent": True},
}

# Structured output whose keys are long: most of its tokens are forced by the grammar.
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_full_legal_name": {"type": "string", "maxLength": 40},
        "customer_home_city_of_residence": {"type": "string", "maxLength": 30},
        "customer_preferred_contact_method": {"enum": ["email", "telephone", "letter"]},
        "number_of_previous_orders_placed": {"type": "integer", "minimum": 0, "maximum": 999},
        "customer_account_is_currently_active": {"type": "boolean"},
        "free_text_notes_from_the_support_team": {"type": "string", "maxLength": 60},
    },
    "required": [
        "customer_full_legal_name",
        "customer_home_city_of_residence",
        "customer_preferred_contact_method",
        "number_of_previous_orders_placed",
        "customer_account_is_currently_active",
        "free_text_notes_from_the_support_team",
    ],
    "additionalProperties": False,
}
RECORD_PROMPT = "Write the record of one fictional customer of a bookshop."
RECORD_MAX_TOKENS = 400  # room for the whole record: it must complete


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


def _together(calls: list[Callable[[], Any]]) -> tuple[float, list[Any]]:
    """Run the calls at once (one thread each): their results and the wall time."""
    results: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(calls))]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if any(r is None for r in results):
        raise LlmkitError("a request failed")
    return wall, results


def _tokens_per_s(client: Any, prompts: list[str], max_tokens: int, chat: bool = False) -> float:
    """All prompts sent together (one client each; `chat`: as a user's message): completion tokens
    over the wall time."""

    def call(prompt: str) -> Callable[[], Any]:
        return lambda: _complete(client, prompt, max_tokens, chat)

    wall, results = _together([call(p) for p in prompts])
    return sum(r.usage.completion_tokens for r in results) / wall


def _complete(client: Any, prompt: str, max_tokens: int, chat: bool, **extra: Any) -> Any:
    """The prompt's completion at temperature 0, or its chat answer with `chat`."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        return client.chat.completions.create(
            model="m", messages=messages, max_tokens=max_tokens, temperature=0, **extra
        )
    return client.completions.create(
        model="m", prompt=prompt, max_tokens=max_tokens, temperature=0, **extra
    )


def _token_logprobs(answer: Any) -> Any:
    """A chat answer's token logprobs in the legacy shape first_difference reads."""
    content = answer.choices[0].logprobs.content or []
    return SimpleNamespace(
        tokens=[entry.token for entry in content],
        top_logprobs=[{top.token: top.logprob for top in entry.top_logprobs} for entry in content],
    )


def _chat_tokens_per_s(client: Any, structured: bool, max_tokens: int) -> tuple[float, int]:
    """One chat answer, a complete record or free text to max_tokens: tokens/s and tokens."""
    extra: dict[str, Any] = (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "record", "schema": RECORD_SCHEMA, "strict": True},
            }
        }
        if structured
        else {"extra_body": {"ignore_eos": True}}
    )
    wall, (result,) = _together(
        [
            lambda: client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": RECORD_PROMPT}],
                max_tokens=max_tokens,
                temperature=0,
                **extra,
            )
        ]
    )
    if structured and result.choices[0].finish_reason != "stop":
        raise LlmkitError(f"the JSON record did not complete in {max_tokens} tokens")
    return result.usage.completion_tokens / wall, result.usage.completion_tokens


def first_difference(a: Any, b: Any) -> dict[str, Any] | None:
    """Where two completions' logprobs (legacy shape) first pick different tokens, and the gap
    between the two best logprobs of the one without drafts there (a logit gap: the softmax's
    normaliser cancels); None when the tokens are the same."""
    for i, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)):
        if x != y:
            top = sorted(b.top_logprobs[i].values(), reverse=True)
            gap = top[0] - top[1] if len(top) > 1 else None
            return {"token": i, "with drafts": x, "without": y, "logit gap": gap}
    if len(a.tokens) != len(b.tokens):
        return {
            "token": min(len(a.tokens), len(b.tokens)),
            "lengths": [len(a.tokens), len(b.tokens)],
        }
    return None


def run(
    model: str,
    prompts_file: Path,
    *,
    threads: int = 2,
    clients: int = 4,
    repeats: int = 3,
    max_tokens: int = 128,
    peers: list[Peer] | None = None,
    models_dir: Path | None = None,
    log: Log = nop,
) -> dict[str, Any]:
    """Median tokens/s of each server for each (set, clients), the ratios, and the texts that differ."""
    import openai

    sets = load_prompts(prompts_file)
    options = {"threads": threads, "parallel": clients, "offline": True, "models_dir": models_dir}
    servers: dict[str, launcher.Launched] = {}
    samples: dict[tuple[str, str, int], list[float]] = {}
    urls = {peer.name: peer.url for peer in peers or []}
    names = [*OPTIONS, *urls]
    try:
        for name, extra in OPTIONS.items():
            servers[name] = launcher.start(model, options={**options, **extra})
        for name, launched in servers.items():
            launcher.wait_ready(launched.process, launched.health, launched.log, 300.0)
            urls[name] = launched.url
        api = {
            name: openai.OpenAI(base_url=url, api_key="none", timeout=600.0, max_retries=0)
            for name, url in urls.items()
        }
        for name in names:  # warm up: the first request pays for one-time setup
            _tokens_per_s(api[name], ["Hello"], 4)
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]
            for kind, prompts in sets.items():
                chat = kind == "copy"
                for width in (1, clients):
                    for name in order:
                        if width == 1:
                            rates = []
                            for prompt in prompts:
                                rate = _tokens_per_s(api[name], [prompt], max_tokens, chat)
                                rates.append(rate)
                            rate = statistics.mean(rates)
                        else:
                            batch = [prompts[i % len(prompts)] for i in range(width)]
                            rate = _tokens_per_s(api[name], batch, max_tokens, chat)
                        samples.setdefault((kind, name, width), []).append(rate)
                        log(f"  repeat {r + 1} {kind} {width} client(s) {name}: {rate:.1f} tok/s")
            for name in SERVERS if r % 2 == 0 else SERVERS[::-1]:
                # The record, then free text of as many tokens from the same messages.
                n = RECORD_MAX_TOKENS
                for kind, structured in (("JSON schema", True), ("free text", False)):
                    rate, n = _chat_tokens_per_s(api[name], structured, n)
                    samples.setdefault((kind, name, 1), []).append(rate)
                    log(f"  repeat {r + 1} {kind} {name}: {rate:.1f} tok/s ({n} tokens)")
        differences = {}
        for i, prompt in enumerate(sets["copy"]):
            a, b = (
                _token_logprobs(
                    _complete(api[name], prompt, max_tokens, True, logprobs=True, top_logprobs=2)
                )
                for name in SERVERS
            )
            differences[i] = first_difference(a, b)
    finally:
        for launched in servers.values():
            launcher.stop(launched.process)
    return report(samples, differences, sets, clients)


def report(
    samples: dict[tuple[str, str, int], list[float]],
    differences: dict[int, dict[str, Any] | None],
    sets: dict[str, list[str]],
    clients: int,
) -> dict[str, Any]:
    """The medians, every ratio the targets are stated in, and how the copy set's texts compare."""
    medians = {key: statistics.median(values) for key, values in samples.items()}
    ratios: dict[str, float] = {}
    for kind in sets:
        for width in (1, clients):
            label = f"{kind}, {width} client{'s' * (width > 1)}"
            measured = sorted({n for k, n, w in medians if k == kind and w == width})
            for base in (SERVERS[0], RECENT):
                if base not in measured:
                    continue
                for name in measured:
                    if name not in (SERVERS[0], base):
                        ratios[f"{label}: {base} / {name}"] = (
                            medians[(kind, base, width)] / medians[(kind, name, width)]
                        )
    for name in SERVERS:
        ratios[f"JSON schema / free text, {name}"] = (
            medians[("JSON schema", name, 1)] / medians[("free text", name, 1)]
        )
    # Free text decoded plainly, token by token: the speed a model writes at when nothing repeats
    # (with drafts, the base model's looping free text is copied from itself).
    ratios["JSON schema with speculation / free text without"] = (
        medians[("JSON schema", SERVERS[0], 1)] / medians[("free text", SERVERS[1], 1)]
    )
    same = sum(1 for d in differences.values() if d is None)
    return {
        "tokens_per_s": {
            f"{kind}, {width} client(s), {name}": value
            for (kind, name, width), value in medians.items()
        },
        # Every repeat's figure, in order: a server that learns from earlier requests (llama-server's
        # ngram-mod keeps one n-gram table for all of them) is faster on the repeats than the first.
        "each_repeat": {
            f"{kind}, {width} client(s), {name}": values
            for (kind, name, width), values in samples.items()
        },
        "ratios": ratios,
        "copy_texts_equal": f"{same} of {len(differences)}",
        "first_differences": {str(i): d for i, d in differences.items() if d is not None},
    }
