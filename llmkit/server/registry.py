"""The models a server serves: found by a request's `model`, loaded on demand within the memory
budget, unloaded when idle past their keep-alive; and whether the server is draining.

Every decision runs on the event loop (no locks): a request takes a lease on its model
(`acquire`), which loads it first if needed (one load, however many requests wait for it), making
room by unloading least-recently-used idle models (`budget.make_room`). The lease is given back
when the response is fully sent (`Leases`, an ASGI middleware), so a model is never unloaded under
a stream. Loading and unloading run on worker threads. With one model served, any name reaches it:
programs written for the OpenAI API send their own model names (`gpt-3.5-turbo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from llmkit.durations import parse_duration
from llmkit.errors import BadRequest
from llmkit.plan import Fleet, Plan
from llmkit.server.budget import Resident, make_room
from llmkit.server.load import Served
from llmkit.sizes import human_size

log = logging.getLogger("llmkit")

UNLOADED, LOADING, LOADED, UNLOADING, FAILED = (
    "unloaded",
    "loading",
    "loaded",
    "unloading",
    "failed",
)
# How often idle models are checked against their keep-alive.
REAP_SECONDS = 1.0
_UNSET: Any = object()


class ModelNotFound(Exception):
    """A request names a model this server does not serve (404, `model_not_found`)."""


class ModelUnavailable(Exception):
    """A served model that cannot take this request now or ever (503 with this code)."""

    def __init__(self, message: str, code: str, retry: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry  # worth retrying later: a Retry-After goes with it


@dataclass(eq=False)
class Model:
    """One served model and its state."""

    plan: Plan
    keep_alive: float | None  # seconds it stays loaded once idle; None: forever
    too_big: str | None = None  # why it cannot load even alone (then it never does)
    state: str = UNLOADED
    served: Served | None = None
    error: str | None = None  # why it failed to load
    leases: int = 0  # requests using it (until their response is sent)
    waiting: int = 0  # requests waiting for it to load
    last_active: float = field(default_factory=time.monotonic)
    load_seconds: float | None = None  # how long its last load took
    loads: int = 0

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def nbytes(self) -> int:
        return self.plan.memory_bytes

    @property
    def resident(self) -> bool:
        return self.state in (LOADING, LOADED, UNLOADING)

    @property
    def idle(self) -> bool:
        return (
            self.state == LOADED
            and self.leases == 0
            and self.waiting == 0
            and (self.served is None or not self.served.engine.busy)
        )

    def check_fits(self) -> None:
        """Refuse at once a model that cannot load even alone."""
        if self.too_big is not None:
            raise ModelUnavailable(f"{self.name} cannot be loaded: {self.too_big}", "model_too_big")

    def stay(self, keep_alive: Any) -> None:
        """Keep it `keep_alive` (seconds, or "forever": a request's `_keep_alive`) once idle."""
        self.keep_alive = None if keep_alive == "forever" else keep_alive

    def expires_at(self) -> float | None:
        """When it will be unloaded (wall clock), if it stays idle; None: not loaded, in use, or
        kept forever."""
        if not self.idle or self.keep_alive is None:
            return None
        return time.time() + max(0.0, self.last_active + self.keep_alive - time.monotonic())

    def card(self) -> dict[str, Any]:
        """Its state, as /v1/models and `llmkit ps` show it."""
        expires = self.expires_at()
        engine = self.served.engine if self.served is not None and self.state == LOADED else None
        return {
            "state": self.state,
            "size_bytes": self.nbytes,
            "resident_bytes": self.nbytes if self.resident else 0,
            "expires_at": None if expires is None else int(expires),
            "keep_alive": self.keep_alive,
            "slots": None
            if engine is None
            else {"total": engine.parallel, "active": engine.active},
            "context_length": self.plan.n_ctx,
            "load_seconds": self.load_seconds,  # how long its last load took
            "error": self.too_big or self.error,
        }


class Registry:
    """What the routes share: the served models, and the server's draining state."""

    def __init__(
        self,
        fleet: Fleet,
        loader: Callable[[Plan], Served],
        max_waiting: int = 64,
        on_change: Callable[[Model], None] | None = None,
    ) -> None:
        self.budget = fleet.budget
        self.budget_reason = fleet.budget_reason
        self.models = [
            Model(
                p,
                None if p.name in fleet.preload else fleet.keep_alive,
                too_big=fleet.too_big.get(p.name),
                state=FAILED if p.name in fleet.failed else UNLOADED,
                error=fleet.failed.get(p.name),
            )
            for p in fleet.plans
        ]
        self.preload = fleet.preload
        self._loader = loader
        self.max_waiting = max_waiting  # requests waiting for loads, in all (as --max-queue)
        self._on_change = on_change
        self._changed = asyncio.Event()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self.draining = False  # set on SIGTERM: /ready answers 503 from then on
        self._reaper: asyncio.Task[None] | None = None

    # Finding ----------------------------------------------------------------------------------

    @property
    def default(self) -> Model:
        return self.models[0]

    @property
    def served(self) -> list[Served]:
        """The loaded models."""
        return [m.served for m in self.models if m.served is not None and m.state == LOADED]

    def lookup(self, name: str | None) -> Model:
        """The model a request names: by its name or an alias (any name, with one model)."""
        if len(self.models) == 1:
            return self.models[0]
        if name:
            key = name.lower()
            for m in self.models:
                if key == m.name.lower() or key in (a.lower() for a in m.plan.aliases):
                    return m
        names = ", ".join(m.name for m in self.models)
        if not name:
            raise ModelNotFound(f"name a model: this server serves {names}")
        raise ModelNotFound(f"the model {name!r} does not exist here; this server serves {names}")

    def reply_name(self, asked: str | None, served: Served) -> str:
        """The `model` a response names: the one asked for when one model is served (a program
        that sent `gpt-3.5-turbo` gets it back), else the model that answered."""
        if len(self.models) == 1 and asked:
            return asked
        return served.name

    # Leases -----------------------------------------------------------------------------------

    async def acquire(self, request: Request, name: str | None, keep_alive: Any = None) -> Served:
        """The model a request names, loaded, with a lease on it until the response is sent;
        loads it first (making room) when needed. `keep_alive` is the request's own."""
        model = self.lookup(name)
        stay = _keep_alive(keep_alive)
        model.check_fits()
        if model.state != LOADED and sum(m.waiting for m in self.models) >= self.max_waiting:
            raise ModelUnavailable(
                f"server busy: {self.max_waiting} requests already wait for models to load; "
                "retry shortly",
                "queue_full",
                retry=True,
            )
        await self._loaded(model)
        assert model.served is not None
        model.leases += 1
        leases: list[tuple[Model, Any]] = request.scope.setdefault("llmkit_leases", [])
        leases.append((model, stay))
        return model.served

    def release(self, model: Model, keep_alive: Any = _UNSET) -> None:
        """A request's response is sent: it no longer holds its model."""
        model.leases -= 1
        model.last_active = time.monotonic()
        if keep_alive is not _UNSET and keep_alive is not None:
            model.stay(keep_alive)
        self._notify(model)

    # Loading and unloading ----------------------------------------------------------------------

    def _start_loading(self, model: Model) -> None:
        if model.state == UNLOADED and model.name not in self._loading:
            self._loading[model.name] = asyncio.ensure_future(self._bring_in(model))

    async def _bring_in(self, model: Model) -> None:
        """Make room for the model, waiting for others to go idle if needed, then load it."""
        try:
            while True:
                resident = [
                    Resident(m.name, m.nbytes, m.idle, m.last_active)
                    for m in self.models
                    if m.resident and m is not model
                ]
                room = make_room(resident, model.nbytes, self.budget)
                if not room.wait:
                    break
                await self._wait_change()
            for name in room.unload:
                victim = next(m for m in self.models if m.name == name)
                await self.unload(victim, reason="to make room for " + model.name)
            await self._load(model)
        finally:
            del self._loading[model.name]
            self._notify(model)

    async def _load(self, model: Model) -> None:
        model.state, model.error = LOADING, None
        self._notify(model)
        started = time.perf_counter()
        try:
            served = await asyncio.to_thread(self._loader, model.plan)
        except Exception as exc:  # noqa: BLE001 - a bad model fails alone; the others serve on
            model.state, model.error = FAILED, _one_line(exc)
            log.error("could not load %s: %s", model.name, model.error)
            return
        model.served, model.state = served, LOADED
        model.load_seconds = time.perf_counter() - started
        model.loads += 1
        model.last_active = time.monotonic()
        print(
            f"loaded {model.name} in {model.load_seconds:.2f} s ({human_size(model.nbytes)})",
            flush=True,
        )

    async def load(self, model: Model, keep_alive: Any = None) -> None:
        """Load a model now (an operator's request), as a request would; a failed one is tried
        again. `keep_alive` (a duration) is how long it then stays once idle."""
        stay = _keep_alive(keep_alive)
        if stay is not None:
            model.stay(stay)
            model.last_active = time.monotonic()
        model.check_fits()
        if model.state == FAILED:
            model.state = UNLOADED
        await self._loaded(model)

    async def _loaded(self, model: Model) -> None:
        """Wait until the model is loaded, loading it (once) if no one has; counted as waiting."""
        model.waiting += 1
        try:
            while model.state != LOADED:
                if model.state == FAILED:
                    raise ModelUnavailable(
                        f"{model.name} failed to load: {model.error}", "model_failed"
                    )
                self._start_loading(model)
                await self._wait_change()
        finally:
            model.waiting -= 1

    async def unload(self, model: Model, reason: str = "") -> None:
        """Unload a model once it is idle (waits for its requests to finish)."""
        while model.state in (LOADING, UNLOADING) or (model.state == LOADED and not model.idle):
            await self._wait_change()
        if model.state != LOADED or model.served is None:
            return
        served = model.served
        model.state = UNLOADING
        self._notify(model)
        try:
            await asyncio.to_thread(served.close)
        finally:
            model.served, model.state = None, UNLOADED
            print(f"unloaded {model.name}{' ' + reason if reason else ''}", flush=True)
            self._notify(model)

    def preload_now(self) -> None:
        """Load the preloaded models, before the server listens (on the caller's thread)."""
        for model in self.models:
            if model.name in self.preload:
                started = time.perf_counter()
                model.served = self._loader(model.plan)
                model.state = LOADED
                model.load_seconds = time.perf_counter() - started
                model.loads += 1

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """The app's lifespan: the reaper runs while the server serves."""
        self._changed = asyncio.Event()  # of the server's event loop
        self._reaper = asyncio.ensure_future(self._reap())
        try:
            yield
        finally:
            self._reaper.cancel()

    async def _reap(self) -> None:
        """Unload idle models whose keep-alive has passed."""
        while True:
            await asyncio.sleep(REAP_SECONDS)
            now = time.monotonic()
            for model in self.models:
                if (
                    model.idle
                    and model.keep_alive is not None
                    and now >= model.last_active + model.keep_alive
                    and model.name not in self._loading
                ):
                    await self.unload(model, reason=f"(idle for {model.keep_alive:g} s)")

    # Waiting --------------------------------------------------------------------------------

    def _notify(self, model: Model) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(model)

    async def _wait_change(self) -> None:
        # A model's engine finishing (idle) is not an event of the loop: look again each second.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=REAP_SECONDS)

    # Stopping -------------------------------------------------------------------------------

    def stop_generating(self) -> None:
        """Stop every engine and embedder: what still runs ends with an error (the grace period
        is over)."""
        for served in self.served:
            served.engine.close()
            served.embedder.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop and free every model (once the server no longer serves)."""
        for model in self.models:
            if model.served is not None:
                model.served.close(timeout)
                model.served, model.state = None, UNLOADED


class Leases:
    """ASGI middleware: the leases a request took on models are given back once its response is
    sent (a stream's last byte, or the client gone)."""

    def __init__(self, app: Any, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            for model, keep_alive in scope.get("llmkit_leases", ()):
                self.registry.release(model, keep_alive)


def _keep_alive(value: Any) -> Any:
    """A request's keep_alive: None (not given), seconds, or "forever"; a bad one is a 400."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"keep_alive: {exc}", param="keep_alive") from None
    return "forever" if seconds is None else seconds


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry
