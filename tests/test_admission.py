"""Admission: which queued choices take the free slots this step (`admission.admit`, no model).

Fair across requests: a request with many choices takes turns with the requests behind it instead
of every slot for rounds; the n choices of one long prompt wait for the first to compute it.
"""

from __future__ import annotations

from dataclasses import replace

from llmkit.engine.admission import SHARE_MIN_TOKENS, admit
from llmkit.engine.jobs import Choice, Job, QueueChannel
from llmkit.engine.sequences import Running
from llmkit.sampling import SamplingParams

LONG = list(range(SHARE_MIN_TOKENS))  # long enough for its siblings to copy its cache


def job(*prompts: list[int], params: SamplingParams | None = None) -> Job:
    """One request: a choice per prompt (a repeated prompt: n choices of it)."""
    choices = [Choice(p, params or SamplingParams(), index=i) for i, p in enumerate(prompts)]
    return Job(choices, QueueChannel())


def distinct(n: int) -> list[list[int]]:
    """n short prompts, each its own (no choice waits for a sibling)."""
    return [[i, i, i] for i in range(n)]


def in_slot(owner: Job, choice: Choice, todo: list[int]) -> Running:
    """A choice of `owner` in a slot, `todo` of its prompt still to compute."""
    return Running(owner, choice, None, None, todo)  # type: ignore[arg-type]


def test_a_request_with_many_choices_takes_turns_with_the_one_behind_it() -> None:
    big, small = job(*distinct(16)), job([7, 7])
    starts = admit([big, small], free=4, running=[])
    assert [j for j, _ in starts] == [big, small, big, big]
    assert len(big.unstarted) == 13 and not small.unstarted
    assert [c.index for j, c in starts if j is big] == [0, 1, 2]  # its own order kept


def test_the_slots_a_request_holds_count_against_its_share() -> None:
    big, small = job(*distinct(16)), job([7, 7])
    big.running = 3
    assert [j for j, _ in admit([big, small], free=2, running=[])] == [small, big]


def test_among_equals_the_first_queued_goes_first_and_no_more_start_than_slots_are_free() -> None:
    a, b, c = job([1]), job([2]), job([3])
    assert admit([a, b, c], free=0, running=[]) == []
    assert [j for j, _ in admit([a, b, c], free=2, running=[])] == [a, b]
    assert [j for j, _ in admit([a, b, c], free=2, running=[])] == [c]  # the next step
    assert admit([a, b, c], free=2, running=[]) == []  # nothing left to start


def test_the_n_choices_of_a_long_prompt_wait_for_the_first_to_compute_it() -> None:
    n3, behind = job(LONG, LONG, LONG), job([9])
    starts = admit([n3, behind], free=4, running=[])
    assert [j for j, _ in starts] == [n3, behind]  # its siblings wait; the request behind does not
    first = starts[0][1]
    n3.running = 1
    computing = in_slot(n3, first, todo=LONG[4:])
    assert admit([n3], free=3, running=[computing]) == []
    computed = in_slot(n3, first, todo=[])  # computed: the next copies its cache
    started = admit([n3], free=3, running=[computed])
    assert started and started[0][1].index == 1


def test_a_short_prompt_or_one_whose_prompt_logprobs_are_asked_is_not_shared() -> None:
    short = LONG[:-1]
    assert len(admit([job(short, short, short)], free=3, running=[])) == 3
    logprobs = replace(SamplingParams(), prompt_logprobs=True)
    assert len(admit([job(LONG, LONG, params=logprobs)], free=2, running=[])) == 2
