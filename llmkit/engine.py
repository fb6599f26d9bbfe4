"""The generation engine: one long-lived worker thread owns the model; requests queue for it.

Routes never touch the model. They submit a job (a generator function that runs in the worker) and
read its events from an asyncio queue, so the event loop stays free for /health while the model works.
Today the engine runs one job at a time; a batched engine with N slots can take its place behind
the same submit/cancel/close interface.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class ShuttingDown(Exception):
    """The server stopped taking new work."""


_END = object()


@dataclass
class _Failure:
    error: BaseException


@dataclass
class Usage:
    """Tokens seen by the model for one job, counted where llama.cpp generates them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_prompt_tokens: int = 0  # the prompt of the most recent generate() call


@dataclass(eq=False)
class Job:
    """One request's work: produced in the worker thread, consumed on the event loop."""

    work: Callable[[Job], Iterator[Any]]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    usage: Usage = field(default_factory=Usage)

    def cancel(self) -> None:
        self.cancelled.set()

    def _emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self.events.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


class Engine:
    """Runs jobs one at a time on the model, in submission order, from a bounded queue."""

    def __init__(self, llama: llama_cpp.Llama, max_queue: int) -> None:
        self.llama = llama
        self.max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._active: Job | None = None
        self._closing = False
        self._cv = threading.Condition()
        self._instrument(llama)
        self._thread = threading.Thread(target=self._run, name="llmkit-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        return self._active is not None

    def submit(self, work: Callable[[Job], Iterator[Any]]) -> Job:
        """Queue work for the model; raises QueueFull or ShuttingDown instead of waiting."""
        job = Job(work=work, loop=asyncio.get_running_loop())
        with self._cv:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            self._pending.append(job)
            self._cv.notify()
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work, cancel what is queued or running, and wait for the worker to let go."""
        with self._cv:
            self._closing = True
            for job in [*self._pending, *([self._active] if self._active else [])]:
                job.cancel()
            self._cv.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                job = self._active = self._pending.popleft()
            try:
                if not job.cancelled.is_set():
                    for item in job.work(job):
                        if job.cancelled.is_set():
                            break
                        job._emit(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the request that caused it
                job._emit(_Failure(exc))
            finally:
                job._emit(_END)
                with self._cv:
                    self._active = None

    def _instrument(self, llama: llama_cpp.Llama) -> None:
        """Wrap Llama.generate to count tokens exactly and to stop a cancelled job within a token.

        llama_cpp's streaming responses carry no token counts, and its loops cannot be interrupted
        from outside; every completion and chat path goes through generate(), so this sees them all.
        """
        original = llama.generate
        vocab = llama._model.vocab
        engine = self

        def generate(tokens, *args, **kwargs):  # type: ignore[no-untyped-def]
            job = engine._active
            if job is not None:
                job.usage.last_prompt_tokens = len(tokens)
            for token in original(tokens, *args, **kwargs):
                if job is not None:
                    if job.cancelled.is_set():
                        return
                    if not llama_cpp.llama_vocab_is_eog(vocab, token):
                        job.usage.completion_tokens += 1
                yield token

        llama.generate = generate  # type: ignore[method-assign]
