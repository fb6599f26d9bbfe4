"""The models a running server serves, as `llmkit ps`, `load`, `unload` and the chat's /model see
them: their cards from GET /v1/models, and loading or unloading one, through the openai SDK.

A server that serves several models says of each whether it is loaded, what it costs in memory and
until when it stays; an older or other server sends only the id. What a card leaves out is read
as an older llmkit's single model: loaded, kept for as long as the server runs.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import openai

from llmkit.client import explain, resolve_api_key, resolve_url
from llmkit.errors import LlmkitError
from llmkit.sizes import human_size

STATES = ("unloaded", "loading", "loaded", "unloading", "failed")
# The states in which a model holds its memory (resident_bytes is then its size).
RESIDENT = ("loading", "loaded", "unloading")


@dataclass(frozen=True)
class ModelCard:
    """One served model as GET /v1/models describes it; None where the server does not say."""

    id: str
    state: str = "loaded"
    size_bytes: int | None = None  # its memory cost when loaded (estimated)
    resident_bytes: int | None = None  # what it holds now
    expires_at: int | None = None  # unix seconds it unloads at; None: not loaded, busy or forever
    keep_alive: float | None = None  # seconds it stays once idle; None: forever
    slots_total: int | None = None
    slots_active: int | None = None
    context_length: int | None = None
    error: str | None = None  # why it failed

    @classmethod
    def of(cls, data: dict[str, Any]) -> ModelCard:
        """The card of one entry of /v1/models' data, whatever a server put in it."""

        def number(name: str, kind: type = int) -> Any:
            value = data.get(name)
            # bool is an int to Python, never a size or a count to a server
            return kind(value) if isinstance(value, int | float) and value is not True else None

        given = data.get("slots")
        slots: dict[str, Any] = given if isinstance(given, dict) else {}
        state = data.get("state")
        error = data.get("error")
        return cls(
            id=str(data.get("id", "")),
            state=state if state in STATES else "loaded",
            size_bytes=number("size_bytes"),
            resident_bytes=number("resident_bytes"),
            expires_at=number("expires_at"),
            keep_alive=number("keep_alive", float),
            slots_total=_count(slots.get("total")),
            slots_active=_count(slots.get("active")),
            context_length=number("context_length"),
            error=error if isinstance(error, str) and error else None,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- how a person reads a card (pure) --------------------------------------------------------


def memory(card: ModelCard) -> str:
    """What it holds in memory: its size when resident, else nothing and its size once loaded."""
    if card.state in RESIDENT:
        size = card.resident_bytes or card.size_bytes
        return human_size(size) if size else "—"
    if card.size_bytes:
        return f"— ({human_size(card.size_bytes)} when loaded)"
    return "—"


def slots(card: ModelCard) -> str:
    """Requests running over sequence slots: "1/4"; "—" when not loaded or not said."""
    if card.slots_total is None:
        return "—"
    return f"{card.slots_active or 0}/{card.slots_total}"


def until(card: ModelCard, now: float | None = None) -> str:
    """Until when it stays loaded: "in 4 minutes", "forever", "while busy", "—" (not loaded)."""
    if card.state not in ("loaded", "loading"):
        return "—"
    if card.expires_at is not None:
        return in_words(card.expires_at - (time.time() if now is None else now))
    if card.keep_alive is None:
        return "forever"  # also an older llmkit's one model: it never unloads
    # Kept for a while once idle, and no deadline yet: it is answering, or still loading.
    return "while busy" if card.state == "loaded" else "—"


def in_words(seconds: float) -> str:
    """A time to come as people say it: "in 4 minutes", "in 30 seconds", "now"."""
    whole = round(seconds)
    if whole < 1:
        return "now"
    unit, size = next(
        (unit, size)
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
        if whole >= size
    )
    count = whole // size
    return f"in {count} {unit}{'s' if count != 1 else ''}"


def describe(card: ModelCard, now: float | None = None) -> str:
    """One line for a card: "gemma-3-270m: loaded · 310.0 MB · 1/4 slots · unloads in 4 minutes"."""
    left = until(card, now)
    parts = [
        card.state,
        card.error if card.state == "failed" else None,
        memory(card),
        f"{slots(card)} slots" if card.slots_total is not None else None,
        {"forever": "kept forever", "while busy": "busy", "—": None}.get(left, f"unloads {left}"),
    ]
    return f"{card.id}: " + " · ".join(p for p in parts if p and p != "—")


# -- the server ------------------------------------------------------------------------------


class ServerModels:
    """The models of the server at a URL: list them, load or unload one."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        client: openai.OpenAI | None = None,
        timeout: float = 600.0,  # a load waits until the model is in memory
    ) -> None:
        if client is None:
            client = openai.OpenAI(
                base_url=resolve_url(url),
                api_key=resolve_api_key(api_key),
                timeout=timeout,
                max_retries=0,
            )
        self.client = client
        self.url = str(client.base_url).rstrip("/")

    def list(self) -> list[ModelCard]:
        """Every model the server serves, in its order."""
        try:
            body = self.client.get("/models", cast_to=object)
        except openai.NotFoundError:
            raise LlmkitError(f"the server at {self.url} does not list its models") from None
        except openai.APIError as exc:
            raise explain(exc, self.url) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise LlmkitError(f"the server at {self.url} sent no list of models")
        return [ModelCard.of(entry) for entry in data if isinstance(entry, dict)]

    def load(self, name: str, keep_alive: str | None = None) -> ModelCard:
        """Load a model (it returns once loaded) and keep it `keep_alive` ("5m") once idle."""
        return self._post(name, "load", {"keep_alive": keep_alive} if keep_alive else None)

    def unload(self, name: str) -> ModelCard:
        """Unload a model, freeing its memory."""
        return self._post(name, "unload", None)

    def _post(self, name: str, action: str, body: dict[str, Any] | None) -> ModelCard:
        path = f"/models/{urllib.parse.quote(name, safe='')}/{action}"
        try:
            answer = self.client.post(path, cast_to=object, body=body)
        except openai.APIStatusError as exc:
            raise refusal(exc, self.url, name, action) from None
        except openai.APIError as exc:
            raise explain(exc, self.url) from None
        if not isinstance(answer, dict):
            raise LlmkitError(f"the server at {self.url} sent no model card")
        return ModelCard.of(answer)


def refusal(exc: openai.APIStatusError, url: str, name: str, action: str) -> LlmkitError:
    """The one line for a server's refusal to load or unload `name`."""
    if exc.code == "model_not_found":
        return LlmkitError(f"the server at {url} serves no model {name!r}; llmkit ps lists them")
    if exc.status_code in (404, 405):  # no such route: one model, loaded for good
        return LlmkitError(
            f"the server at {url} cannot {action} models on request "
            "(an older llmkit, or another server)"
        )
    return explain(exc, url)
