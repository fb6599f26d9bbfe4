"""What the engine is given and gives back: choices to generate, jobs, their events, the errors.

A Job is one request's choices; its events (a Delta of new text per choice, then the Usage, then
END) reach its reader through a Channel. These types are plain data and need no model, so a
script, a test or the server can build and read them without a running engine.
"""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmkit.logprobs import TokenLogprob
from llmkit.sampling import SamplingParams


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


class ShuttingDown(Exception):
    """The server stopped taking new work."""


class CacheFull(Exception):
    """llama.cpp found no room in the KV cache for this request's tokens."""


class PromptTooLong(ValueError):
    """A prompt that does not fit one slot's context."""

    @classmethod
    def of(cls, tokens: int, slot_ctx: int) -> PromptTooLong:
        return cls(
            f"the prompt is {tokens} tokens; this server's context holds {slot_ctx} per request"
        )


class EngineError(RuntimeError):
    """The engine could not run this job (a bug or a resource llama.cpp refused)."""


class GrammarFailed(EngineError):
    """A choice's grammar cannot go on: it failed to build, reached an error state, or spent its
    time budget. The request's constraint cannot be honoured: it fails alone."""


@dataclass
class Choice:
    """One choice to generate: a prompt (token ids), how to sample it, where its text goes."""

    prompt: list[int]
    params: SamplingParams
    index: int = 0
    counts_prompt: bool = True  # the first choice of its prompt: its prompt counts toward usage
    # Its grammar's matcher, built off the scheduler thread by Engine.prepare (else by the
    # scheduler when the choice starts).
    matcher: Any = field(default=None, repr=False, compare=False)
    cache_salt: bytes = b""  # saved prompt states serve only choices of the same salt


@dataclass
class Delta:
    """New text for one choice; `finish_reason` set on the last delta of that choice."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None  # the tokens since the last delta, when asked
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first delta, when asked
    stop: str | None = None  # on the last delta: the stop sequence that ended it, if one did


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from a slot or the prompt cache, not recomputed


class Observer(Protocol):
    """Where the engine reports timings (the /metrics module); called from the scheduler thread."""

    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...


END = object()  # the last item in a job's inbox


class Channel(Protocol):
    """How a job's events reach its reader. `deliver` runs on the scheduler thread, once a step,
    with every item of that step for the jobs on this channel (in order)."""

    def inbox(self) -> Any: ...
    def deliver(self, items: list[tuple[Job, Any]]) -> None: ...


class QueueChannel:
    """The default channel: each job's events go into a thread-safe queue that `Job.events` reads."""

    def inbox(self) -> queue.SimpleQueue[Any]:
        return queue.SimpleQueue()

    def deliver(self, items: list[tuple[Job, Any]]) -> None:
        for job, item in items:
            job.inbox.put(item)


class Outbox:
    """What one step sends, grouped by channel, so each channel is called once a step."""

    def __init__(self) -> None:
        self.items: dict[Channel, list[tuple[Job, Any]]] = {}

    def put(self, job: Job, item: Any) -> None:
        self.items.setdefault(job.channel, []).append((job, item))

    def send(self) -> None:
        for channel, items in self.items.items():
            try:
                channel.deliver(items)
            except RuntimeError:  # e.g. its event loop is closed: nobody is listening any more
                for job, _ in items:
                    job.cancel()
        self.items = {}


def opened(item: Any) -> Delta | Usage | None:
    """An item read from a job's inbox: None at its end; raises what failed the job."""
    if item is END:
        return None
    if isinstance(item, BaseException):
        raise item
    return item  # type: ignore[no-any-return]


@dataclass(eq=False)
class Job:
    """One request: its choices, and the events the scheduler sends back through its channel."""

    choices: list[Choice]
    channel: Channel
    inbox: Any = None
    usage: Usage = field(default_factory=Usage)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    # The scheduler's bookkeeping: choices not yet in a slot, how many are in one now, whether
    # the job failed, whether its END was sent.
    unstarted: collections.deque[Choice] = field(default_factory=collections.deque, init=False)
    running: int = field(default=0, init=False)
    failed: bool = field(default=False, init=False)
    ended: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.inbox is None:
            self.inbox = self.channel.inbox()
        self.unstarted.extend(self.choices)

    def cancel(self) -> None:
        """Stop generating; the job's slots are free within a step (safe from any thread)."""
        self.cancelled = True

    def events(self, timeout: float | None = None) -> Iterator[Delta | Usage]:
        """Deltas as they come, then the usage; raises what failed the job (QueueChannel jobs).

        `timeout` bounds the wait for each event (TimeoutError past it)."""
        while True:
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from the engine in {timeout:g} s") from None
            event = opened(item)
            if event is None:
                return
            yield event
