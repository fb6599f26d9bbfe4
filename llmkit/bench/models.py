"""The several-models benchmark (issue 28): two tiny models behind one `llmkit serve`.

Against real servers serving SmolLM2 135M and Gemma 3 270M (each with the same shape: slots,
context, prompt cache), it measures:
- under a budget that holds one model but not both, 12 requests alternating A, B, A, B...: which
  model answered each (the response's `model`), the time of each request and the load it caused
  (the switch cost), and the process's peak resident memory (VmHWM) against the budget;
- the same under a budget that holds both: how many loads (one each) and the time per request;
- 8 concurrent requests for an unloaded model: how many loads (one), and all answered;
- a long stream on A while B is asked for under the one-model budget: the stream completes, and
  B is answered after it (B waited for the memory, nothing was cut).
The figures are reported, not judged.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from llmkit import launcher
from llmkit.plan import plan_fleet
from llmkit.settings import ServeSettings

A, B = "smollm2-135m-instruct", "gemma-3-270m"


def _shape(threads: int) -> dict[str, Any]:
    return {
        "threads": threads,
        "ctx": 1024,
        "parallel": 2,
        "cache_ram": "32MB",
        "no_cache_disk": True,
        "offline": True,
    }


def _store(log: Callable[[str], None]) -> Path:
    """A store with both tiny models (from llmkit[tiny], no network)."""
    root = Path(tempfile.mkdtemp(prefix="llmkit-bench-models-"))
    for name in (A, B):
        subprocess.run(
            [sys.executable, "-m", "llmkit", "pull", name, "--models-dir", str(root)],
            check=True,
            capture_output=True,
        )
    log(f"store {root}")
    return root


def _ask(client: openai.OpenAI, model: str, max_tokens: int = 8) -> tuple[str, float]:
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return reply.model, time.perf_counter() - started


def _cards(client: openai.OpenAI) -> dict[str, dict[str, Any]]:
    return {m.id: m.model_dump() for m in client.models.list().data}


def _loads(client: openai.OpenAI) -> dict[str, int]:
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=10) as response:
        raw = response.read().decode()
    counts = {}
    for line in raw.splitlines():
        if line.startswith("llmkit_model_loads_total{"):
            name = line.split('model="', 1)[1].split('"', 1)[0]
            counts[name] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def _peak_rss(client: openai.OpenAI) -> int:
    pid = client.llmkit_process.pid  # type: ignore[attr-defined]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _alternate(client: openai.OpenAI, n: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        model = (A, B)[i % 2]
        before = _loads(client).get(model, 0)
        answered_by, seconds = _ask(client, model)
        loaded = _loads(client).get(model, 0) > before
        card = _cards(client)[model]
        row = {
            "asked": model,
            "answered_by": answered_by,
            "seconds": seconds,
            "loaded": loaded,
            "load_seconds": card["load_seconds"] if loaded else None,
        }
        log(f"  {i + 1:2} {model:<22} {seconds:6.2f} s{'  (loaded it)' if loaded else ''}")
        rows.append(row)
    return rows


def run_benchmark(threads: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    store = _store(log)
    shape = _shape(threads)
    fleet = plan_fleet(ServeSettings(model=[A, B], models_dir=store, **shape), log=lambda _: None)
    sizes = {p.name: p.memory_bytes for p in fleet.plans}
    one = max(sizes.values()) + 10**6  # holds either, not both
    both = sum(sizes.values()) + 10**6
    env = {"LLMKIT_MODELS_DIR": str(store)}
    figures: dict[str, Any] = {"sizes": sizes, "budget_one": one, "budget_both": both}

    log(f"one-model budget ({one / 1e6:.0f} MB): 12 requests alternating")
    with launcher.serve([A, B], memory_budget=str(one), env=env, **shape) as client:
        figures["one"] = {
            "requests": _alternate(client, 12, log),
            "peak_rss": _peak_rss(client),
        }
        # 8 concurrent requests for the model that is not loaded now.
        cold = next(m for m, c in _cards(client).items() if c["state"] != "loaded")
        before = _loads(client).get(cold, 0)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _ask(client, cold)[0], range(8)))
        figures["concurrent"] = {
            "model": cold,
            "answered": sum(a == cold for a in answers),
            "loads": _loads(client).get(cold, 0) - before,
            "seconds": time.perf_counter() - started,
        }
        log(f"8 concurrent for unloaded {cold}: {figures['concurrent']}")
        figures["stream"] = _stream_while_other(client, log)
        figures["one"]["peak_rss"] = _peak_rss(client)

    log(f"two-model budget ({both / 1e6:.0f} MB): 12 requests alternating")
    with launcher.serve([A, B], memory_budget=str(both), env=env, **shape) as client:
        figures["both"] = {
            "requests": _alternate(client, 12, log),
            "loads": _loads(client),
            "peak_rss": _peak_rss(client),
        }
    return figures


def _stream_while_other(client: openai.OpenAI, log: Callable[[str], None]) -> dict[str, Any]:
    """A 200-token stream on the loaded model while the other is asked for."""
    loaded = next(m for m, c in _cards(client).items() if c["state"] == "loaded")
    other = B if loaded == A else A
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=loaded,
        messages=[{"role": "user", "content": "Count from 1 to 300."}],
        max_tokens=200,
        temperature=0,
        stream=True,
        extra_body={"min_tokens": 200},
    )
    chunks = iter(stream)
    next(chunks)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(_ask, client, other)
        rest = list(chunks)
        stream_ended = time.perf_counter() - started
        answered_by, _ = waiting.result()
        other_answered = time.perf_counter() - started
    result = {
        "stream_model": loaded,
        "stream_finish": rest[-1].choices[0].finish_reason if rest else None,
        "stream_seconds": stream_ended,
        "other_model": other,
        "other_answered_by": answered_by,
        "other_answered_at": other_answered,
    }
    log(f"long stream on {loaded} while {other} asked: {result}")
    return result


def report(figures: dict[str, Any]) -> str:
    one, both = figures["one"], figures["both"]

    def right(rows: list[dict[str, Any]]) -> str:
        return f"{sum(r['asked'] == r['answered_by'] for r in rows)}/{len(rows)}"

    switches = [r["seconds"] for r in one["requests"][2:] if r["loaded"]]
    loads = [r["load_seconds"] for r in one["requests"][2:] if r["load_seconds"]]
    steady = [r["seconds"] for r in both["requests"][2:]]
    conc, stream = figures["concurrent"], figures["stream"]
    mb = 1e6
    lines = [
        f"counted: {', '.join(f'{k} {v / mb:.0f} MB' for k, v in figures['sizes'].items())}",
        f"one-model budget {figures['budget_one'] / mb:.0f} MB: right model {right(one['requests'])}, "
        f"{len(switches)} switches after the first two, median request with a switch "
        f"{statistics.median(switches):.2f} s (of which load {statistics.median(loads):.2f} s), "
        f"peak RSS {one['peak_rss'] / mb:.0f} MB",
        f"two-model budget {figures['budget_both'] / mb:.0f} MB: right model "
        f"{right(both['requests'])}, loads {both['loads']}, median request after the first two "
        f"{statistics.median(steady):.2f} s, peak RSS {both['peak_rss'] / mb:.0f} MB",
        f"8 concurrent requests for unloaded {conc['model']}: {conc['answered']}/8 answered, "
        f"{conc['loads']} load, {conc['seconds']:.2f} s in all",
        f"200-token stream on {stream['stream_model']} while {stream['other_model']} asked: "
        f"finish {stream['stream_finish']} at {stream['stream_seconds']:.2f} s; "
        f"{stream['other_model']} answered by {stream['other_answered_by']} at "
        f"{stream['other_answered_at']:.2f} s",
    ]
    return "\n".join(lines)


def save(figures: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2))
