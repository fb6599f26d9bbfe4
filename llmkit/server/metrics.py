"""/metrics: Prometheus text format, from prometheus-client.

Requests by endpoint and status come from a small ASGI middleware; queue depth, slots and token
counters (and the prompt cache's, per tier) are read from the engine when scraped; time to first token and per-token latency are
histograms the engine's scheduler observes as it samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmkit.embeddings import Embedder
from llmkit.engine import Engine

_ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
}
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)


class Metrics:
    """The server's metrics, in a registry of its own (several servers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmkit_requests",
            "HTTP requests to the OpenAI routes, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmkit_time_to_first_token_seconds",
            "From a request's arrival to its first generated token (per choice)",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.token_latency = Histogram(
            "llmkit_time_per_output_token_seconds",
            "Between consecutive generated tokens of one choice",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )

    # The engine's Observer interface (called from its scheduler thread).
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self.token_latency.observe(seconds)

    def watch(self, engine: Engine, embedder: Embedder | None = None) -> None:
        self.registry.register(_EngineCollector(engine, embedder))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, embedder: Embedder | None) -> None:
        self.engine = engine
        self.embedder = embedder

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        yield GaugeMetricFamily(
            "llmkit_queue_depth", "Choices (prompts × n) waiting for a slot", e.waiting
        )
        yield GaugeMetricFamily("llmkit_slots_active", "Sequence slots generating", e.active)
        yield GaugeMetricFamily("llmkit_slots_total", "Sequence slots (--parallel)", e.parallel)
        yield CounterMetricFamily(
            "llmkit_prompt_tokens",
            "Prompt tokens computed by the model (not counting reused ones)",
            e.prompt_tokens_computed,
        )
        yield CounterMetricFamily(
            "llmkit_prompt_tokens_cached",
            "Prompt tokens reused from a slot's cache instead of being computed",
            e.prompt_tokens_cached,
        )
        yield CounterMetricFamily("llmkit_generated_tokens", "Tokens generated", e.tokens_generated)
        yield CounterMetricFamily(
            "llmkit_decode_calls", "llama_decode calls (one per step)", e.decode_calls
        )
        # As llama-server's spec_decode counters: drafts decoded, and those the sampler agreed with.
        yield CounterMetricFamily(
            "llmkit_spec_decode_draft_tokens", "N-gram draft tokens decoded", e.tokens_drafted
        )
        yield CounterMetricFamily(
            "llmkit_spec_decode_accepted_tokens",
            "Draft tokens accepted (equal to what the sampler picked)",
            e.tokens_draft_accepted,
        )
        yield CounterMetricFamily(
            "llmkit_forced_tokens",
            "Tokens a grammar allowed only one way, decoded as drafts without sampling",
            e.tokens_forced,
        )
        yield from _prompt_cache(e)
        if self.embedder is not None:
            yield CounterMetricFamily(
                "llmkit_embedding_tokens", "Input tokens embedded", self.embedder.tokens
            )


def _prompt_cache(e: Engine) -> Iterator[Metric]:
    """The prompt cache's tiers (ram, disk), one labelled sample each."""
    tiers = e.states.stats()
    families = [
        (CounterMetricFamily, "hits", "Prompts served by a state restored from this tier"),
        (CounterMetricFamily, "misses", "Prompts this tier had no state worth restoring for"),
        (CounterMetricFamily, "evictions", "States this tier dropped (or passed on) for room"),
        (GaugeMetricFamily, "entries", "States this tier holds"),
        (GaugeMetricFamily, "bytes", "Bytes of state this tier holds"),
        (GaugeMetricFamily, "capacity_bytes", "This tier's budget (--cache-ram, --cache-disk)"),
    ]
    for kind, name, doc in families:
        family = kind(f"llmkit_prompt_cache_{name}", doc, labels=["tier"])
        for tier, stats in tiers.items():
            field = "capacity" if name == "capacity_bytes" else name
            family.add_metric([tier], getattr(stats, field))
        yield family
    yield CounterMetricFamily(
        "llmkit_prompt_cache_restored_tokens",
        "Prompt tokens restored from the prompt cache instead of being computed",
        e.states.restored_tokens,
    )


class RequestCounter:
    """ASGI middleware counting responses of the OpenAI routes by status (streams are not wrapped)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        endpoint = path if path in _ENDPOINTS else "/v1/models" if "/models" in path else "other"

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
