"""Admission: which waiting choices take the free slots this step. Pure: it reads the queue and
what the slots run, and returns the choices to start, which the scheduler then starts.

Fair across requests: each free slot goes to the queued request that holds the fewest slots (the
first in the queue among equals), so that a request with many choices (n, or many prompts) takes
at most its share of the slots while others wait, instead of all of them for rounds. The n choices
of one prompt share it: the first computes the prompt, the others wait a step to copy its cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmkit.engine.jobs import Choice, Job
from llmkit.engine.sequences import Running

# A choice that repeats another's prompt this long waits a step to copy its cache instead.
SHARE_MIN_TOKENS = 16

Start = tuple[Job, Choice]


def admit(jobs: Sequence[Job], free: int, running: Iterable[Running]) -> list[Start]:
    """Take up to `free` choices from the queued jobs (popped from their `unstarted`), fairly.

    A choice that waits to copy its sibling's prompt does not hold up the jobs behind it."""
    computing = list(running)
    starts: list[Start] = []
    blocked: list[Job] = []  # their next choice waits for a sibling's prompt
    while len(starts) < free:
        job = fairest(jobs, starts, blocked)
        if job is None:
            break
        if waits_for_sibling(job, job.unstarted[0], computing, starts):
            blocked.append(job)
            continue
        starts.append((job, job.unstarted.popleft()))
    return starts


def fairest(jobs: Sequence[Job], starting: Sequence[Start], blocked: Sequence[Job]) -> Job | None:
    """The queued job with a choice to start that holds the fewest slots, the first in the queue
    among equals; None when no job can start one."""
    best, fewest = None, 0
    for job in jobs:
        if not job.unstarted or any(job is b for b in blocked):
            continue
        held = job.running + sum(1 for j, _ in starting if j is job)
        if best is None or held < fewest:
            best, fewest = job, held
    return best


def waits_for_sibling(
    job: Job, choice: Choice, running: Iterable[Running], starting: Sequence[Start]
) -> bool:
    """Whether a choice should wait for a sibling (a choice of its request with the same prompt,
    running or starting) to compute the prompt it will copy."""
    if len(choice.prompt) < SHARE_MIN_TOKENS or choice.params.prompt_logprobs:
        return False
    for r in running:
        if r.job is job and r.todo and r.choice.prompt == choice.prompt:
            return True
    return any(j is job and c.prompt == choice.prompt for j, c in starting)
