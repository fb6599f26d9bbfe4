"""/metrics: Prometheus text format, from prometheus-client.

Requests by endpoint and status come from a small ASGI middleware; queue depth, slots and token
counters (and the prompt cache's, per tier) are read from each loaded model's engine when scraped,
labelled by `model` (a model's counters restart when it is loaded again, as Prometheus expects of
a restarted process); time to first token and per-token latency are histograms each engine's
scheduler observes as it samples. The memory budget and each model's state are gauges too.
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
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.token_latency = Histogram(
            "llmkit_time_per_output_token_seconds",
            "Between consecutive generated tokens of one choice",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )

    def observer(self, model: str) -> ModelObserver:
        """The engine's Observer for one model's scheduler (its samples labelled by model)."""
        return ModelObserver(self.ttft.labels(model), self.token_latency.labels(model))

    def watch(self, registry: Any) -> None:
        """Read the registry's models (a `llmkit.server.registry.Registry`) at each scrape."""
        self.registry.register(_ModelsCollector(registry))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ModelObserver:
    """The engine's Observer interface for one model (called from its scheduler thread)."""

    def __init__(self, ttft: Any, token_latency: Any) -> None:
        self._ttft = ttft
        self._token_latency = token_latency

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self._token_latency.observe(seconds)


_STATES = ("unloaded", "loading", "loaded", "unloading", "failed")


class _ModelsCollector(Collector):
    def __init__(self, registry: Any) -> None:
        self.models = registry

    def collect(self) -> Iterator[Metric]:
        registry = self.models
        state = GaugeMetricFamily(
            "llmkit_model_state", "1 for each model's current state", labels=["model", "state"]
        )
        resident = GaugeMetricFamily(
            "llmkit_model_resident_bytes",
            "What each loaded model counts against the memory budget",
            labels=["model"],
        )
        loads = CounterMetricFamily(
            "llmkit_model_loads", "Times each model was loaded", labels=["model"]
        )
        for m in registry.models:
            for name in _STATES:
                state.add_metric([m.name, name], 1 if m.state == name else 0)
            resident.add_metric([m.name], m.nbytes if m.resident else 0)
            loads.add_metric([m.name], m.loads)
        yield state
        yield resident
        yield loads
        if registry.budget is not None:
            yield GaugeMetricFamily(
                "llmkit_memory_budget_bytes",
                "--memory-budget: what loaded models may use",
                registry.budget,
            )
        engines = [(s.name, s.engine, s.embedder) for s in registry.served]
        yield from _engines(engines)


def _engines(engines: list[tuple[str, Engine, Any]]) -> Iterator[Metric]:
    """Each loaded model's scheduler counters, one labelled sample per model."""

    def family(kind: Any, name: str, doc: str, value: Any) -> Metric:
        metric = kind(name, doc, labels=["model"])
        for model, e, embedder in engines:
            metric.add_metric([model], value(e, embedder))
        return metric

    gauges = [
        ("llmkit_queue_depth", "Choices (prompts × n) waiting for a slot", lambda e, _: e.waiting),
        ("llmkit_slots_active", "Sequence slots generating", lambda e, _: e.active),
        ("llmkit_slots_total", "Sequence slots (--parallel)", lambda e, _: e.parallel),
    ]
    counters = [
        (
            "llmkit_prompt_tokens",
            "Prompt tokens computed by the model (not counting reused ones)",
            lambda e, _: e.prompt_tokens_computed,
        ),
        (
            "llmkit_prompt_tokens_cached",
            "Prompt tokens reused from a slot's cache instead of being computed",
            lambda e, _: e.prompt_tokens_cached,
        ),
        ("llmkit_generated_tokens", "Tokens generated", lambda e, _: e.tokens_generated),
        ("llmkit_decode_calls", "llama_decode calls (one per step)", lambda e, _: e.decode_calls),
        # As llama-server's spec_decode counters: drafts decoded, and those the sampler agreed with.
        (
            "llmkit_spec_decode_draft_tokens",
            "N-gram draft tokens decoded",
            lambda e, _: e.tokens_drafted,
        ),
        (
            "llmkit_spec_decode_accepted_tokens",
            "Draft tokens accepted (equal to what the sampler picked)",
            lambda e, _: e.tokens_draft_accepted,
        ),
        (
            "llmkit_forced_tokens",
            "Tokens a grammar allowed only one way, decoded as drafts without sampling",
            lambda e, _: e.tokens_forced,
        ),
        ("llmkit_embedding_tokens", "Input tokens embedded", lambda _, b: b.tokens),
    ]
    for name, doc, value in gauges:
        yield family(GaugeMetricFamily, name, doc, value)
    for name, doc, value in counters:
        yield family(CounterMetricFamily, name, doc, value)
    yield from _prompt_cache(engines)


def _prompt_cache(engines: list[tuple[str, Engine, Any]]) -> Iterator[Metric]:
    """The prompt cache's tiers (ram, disk) of each model, one labelled sample each."""
    families = [
        (CounterMetricFamily, "hits", "Prompts served by a state restored from this tier"),
        (CounterMetricFamily, "misses", "Prompts this tier had no state worth restoring for"),
        (CounterMetricFamily, "evictions", "States this tier dropped (or passed on) for room"),
        (GaugeMetricFamily, "entries", "States this tier holds"),
        (GaugeMetricFamily, "bytes", "Bytes of state this tier holds"),
        (GaugeMetricFamily, "capacity_bytes", "This tier's budget (--cache-ram, --cache-disk)"),
    ]
    tiers = [(model, e.states.stats()) for model, e, _ in engines]
    for kind, name, doc in families:
        family = kind(f"llmkit_prompt_cache_{name}", doc, labels=["model", "tier"])
        field = "capacity" if name == "capacity_bytes" else name
        for model, stats in tiers:
            for tier, tier_stats in stats.items():
                family.add_metric([model, tier], getattr(tier_stats, field))
        yield family
    restored = CounterMetricFamily(
        "llmkit_prompt_cache_restored_tokens",
        "Prompt tokens restored from the prompt cache instead of being computed",
        labels=["model"],
    )
    for model, e, _ in engines:
        restored.add_metric([model], e.states.restored_tokens)
    yield restored


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
