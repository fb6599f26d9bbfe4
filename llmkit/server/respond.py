"""One request's life, the same for every wire API: its choices go to the engine, its events come
back through the event loop, and a shaper turns them into that API's JSON body or event stream.

The first event is awaited before the status line goes out (through the queue and the prompt), so
that a request that fails before its first token gets a proper status code, not a broken stream;
a client that hangs up meanwhile, or later, frees its slots within a step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmkit.engine import Choice, Delta, Job, PromptTooLong, Usage, opened
from llmkit.errors import BadRequest
from llmkit.server.errors import Unfinished, event_code
from llmkit.server.load import Served

SHUT_DOWN = "the server shut down before this response finished"


class Shaper(Protocol):
    """What differs between wire APIs: how one request's engine events are answered."""

    # The parameter a prompt too long for the context is blamed on (messages, prompt, input).
    prompt_param: str

    def add(self, delta: Delta) -> None:
        """Collect a delta, for the body."""

    @property
    def finished(self) -> bool:
        """Whether every choice has its finish reason (else the server stopped it)."""

    def body(self, usage: Usage) -> dict[str, Any]:
        """The whole answer, as one JSON body."""

    def opening(self) -> bytes:
        """The stream's events before the first delta."""

    def sse(self, delta: Delta) -> bytes:
        """The stream's events for one delta."""

    def usage(self, usage: Usage) -> bytes:
        """The stream's events when the usage arrives (after the last delta)."""

    def closing(self, usage: Usage) -> bytes:
        """The stream's last events, when every choice finished."""

    def failed(self, message: str, code: str | None, usage: Usage) -> bytes:
        """The stream's last event when it cannot finish (an error, or the server stopping)."""


class LoopChannel:
    """The engine's channel into an asyncio event loop: one call_soon_threadsafe a step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def inbox(self) -> asyncio.Queue[Any]:
        return asyncio.Queue()

    def deliver(self, items: list[tuple[Job, Any]]) -> None:
        self.loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.inbox.put_nowait(item)


async def events(job: Job) -> AsyncIterator[Delta | Usage]:
    """A LoopChannel job's deltas as they come, then its usage; raises what failed the job."""
    while True:
        event = opened(await job.inbox.get())
        if event is None:
            return
        yield event


async def respond(
    request: Request, served: Served, choices: list[Choice], shaper: Shaper, stream: bool
) -> Any:
    """Run one request's choices on the served model's engine and answer through its shaper.

    Raises what the engine refuses with (QueueFull, ShuttingDown, CacheFull before the first
    event, Unfinished): the app's error table answers them."""
    engine = served.engine
    if len(choices) > engine.capacity:
        raise BadRequest(
            f"this request has {len(choices)} choices (prompts × n); this server takes at most "
            f"{engine.capacity} in one request",
            param="n",
        )
    # Grammars are built on a worker thread: a large schema takes seconds, which the scheduler
    # thread (and so every stream) would otherwise wait on.
    await served.work(engine.prepare, choices)
    try:
        job = engine.submit(choices, LoopChannel(asyncio.get_running_loop()))
    except PromptTooLong as exc:
        raise BadRequest(str(exc), param=shaper.prompt_param) from None
    received = events(job)
    try:
        if not stream:
            return JSONResponse(await until_disconnect(request, _collect(job, shaper, received)))
        first = await until_disconnect(request, anext(received))
    except StopAsyncIteration:
        raise Unfinished() from None
    except BaseException:
        job.cancel()
        raise
    return StreamingResponse(
        _stream(job, shaper, first, received),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(job: Job, shaper: Shaper, received: AsyncIterator[Any]) -> dict[str, Any]:
    usage = job.usage
    async for item in received:
        if isinstance(item, Delta):
            shaper.add(item)
        else:
            usage = item
    if not shaper.finished:
        raise Unfinished()
    return shaper.body(usage)


async def _stream(
    job: Job, shaper: Shaper, first: Any, received: AsyncIterator[Any]
) -> AsyncIterator[bytes]:
    usage = job.usage
    try:
        if opening := shaper.opening():
            yield opening
        item = first
        while True:
            if isinstance(item, Delta):
                out = shaper.sse(item)
            else:
                usage = item
                out = shaper.usage(usage)
            if out:
                yield out
            try:
                item = await anext(received)
            except StopAsyncIteration:
                break
        if not shaper.finished:  # cut by shutdown after the grace period
            yield shaper.failed(SHUT_DOWN, "shutting_down", usage)
            return
        yield shaper.closing(usage)
    except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band
        yield shaper.failed(str(exc), event_code(exc), usage)
    finally:
        job.cancel()  # a client that went away frees its slot within a step


async def until_disconnect(request: Request, awaitable: Any) -> Any:
    """Await the first event, but give up (and cancel the job) if the client hangs up first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
