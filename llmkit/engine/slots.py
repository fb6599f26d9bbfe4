"""The slot-reuse plan: which slot a new sequence goes to, and how much of its prompt is cached.

A slot keeps the tokens it last held in the KV cache after its sequence ends. A new sequence goes to
the free slot whose cache it continues (a chat's next turn, the same request again), else to the one
whose cache matters least. A longer prefix held by another slot, busy or free (a shared system
prompt, a sibling choice's prompt), is copied from there rather than taking that slot. A cache
serves only prompts of the salt it was computed with (a request's `cache_salt`): a client cannot
learn, from what the server reports as cached, what another client sent. A model with
sliding-window layers keeps in them only the cells in the window of a sequence's last tokens: a
cache then serves only the prefixes that do not reach behind what it keeps (its `min_reuse`), or
nothing. Pure: it reads plain data (each slot's cached tokens, salt, min_reuse, and when it was
last used) and returns the plan, which the scheduler carries out with llama.cpp's memory calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Cached(Protocol):
    """What the plan reads of a slot."""

    @property
    def cached(self) -> Sequence[int]:
        """The tokens the slot holds in the KV cache."""
        ...

    @property
    def last_used(self) -> float:
        """When its last sequence ended (0 if never)."""
        ...

    @property
    def salt(self) -> bytes:
        """The cache salt of the sequence that computed its cache."""
        ...

    @property
    def min_reuse(self) -> int:
        """The shortest prefix of its cache that its cells serve (0: any)."""
        ...


@dataclass(frozen=True)
class SlotPlan:
    """Where a prompt goes and what of it is not computed again."""

    slot: int  # the free slot it goes to (an index into the slots)
    reuse: int  # its first `reuse` tokens are taken from a cache
    donor: int | None = None  # the slot they are copied from; None: `slot`'s own cache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix(slot: Cached, prompt: Sequence[int], salt: bytes, limit: int) -> int:
    """How much of the prompt the slot's cache serves, at most `limit` tokens, for a prompt of this
    salt: 0 if its cells do not hold the window that prefix needs (`min_reuse`)."""
    if slot.salt != salt:
        return 0
    n = min(common_prefix(slot.cached, prompt), limit)
    return n if n >= slot.min_reuse else 0


def slot_for(
    slots: Sequence[Cached], free: Sequence[int], prompt: Sequence[int], salt: bytes = b""
) -> int:
    """The free slot a prompt goes to: the one whose cache holds all of it (the same request again,
    which then computes as it did before) or that it continues (a chat's next turn reuses at least
    half of what the slot holds), else the one whose cache matters least (empty, then the least
    recently used). A prefix it merely shares with a slot (a system prompt) is copied from there
    instead, so that one request's cache is not overwritten by every request that shares a few
    tokens with it."""
    limit = len(prompt) - 1  # the last prompt token is always decoded, for its logits

    def reuse(i: int) -> int:
        return shared_prefix(slots[i], prompt, salt, limit)

    best = max(free, key=lambda i: (reuse(i), -slots[i].last_used))
    if slots[best].cached and (reuse(best) == limit or 2 * reuse(best) >= len(slots[best].cached)):
        return best
    return min(free, key=lambda i: (len(slots[i].cached) > 0, slots[i].last_used))


def plan_slot(
    slots: Sequence[Cached],
    free: Sequence[int],
    prompt: Sequence[int],
    limit: int | None = None,
    salt: bytes = b"",
) -> SlotPlan:
    """The plan for a prompt: its slot (one of `free`, indices into `slots`), and the longest
    cached prefix of it, from that slot's cache or copied from another slot's.

    At most `limit` tokens are reused: by default all but the last, which is always decoded for
    its logits; 0 when the logits of every prompt position are needed (prompt logprobs). The slot is
    chosen the same way whatever the limit, so that a prompt overwrites its own earlier cache
    rather than another's."""
    target = slot_for(slots, free, prompt, salt)
    if limit is None:
        limit = len(prompt) - 1
    reuse = shared_prefix(slots[target], prompt, salt, limit)
    donor = None
    for i, slot in enumerate(slots):
        if i != target:
            k = shared_prefix(slot, prompt, salt, limit)
            if k > reuse:
                donor, reuse = i, k
    return SlotPlan(target, reuse, donor)
