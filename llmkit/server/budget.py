"""The memory budget's policy: which loaded models to unload so that another fits.

Pure: it reads plain data (each loaded model's bytes, whether it is idle, when it was last used)
and returns the models to unload, least recently used first; the registry carries it out. Only
idle models are unloaded (none with a request in flight or waiting for it): when the idle ones
are not enough, the answer is to wait until more are idle, never to cut a request short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """What the policy reads of a loaded (or loading) model."""

    name: str
    nbytes: int
    idle: bool  # no request in flight or waiting for it, and not loading
    last_active: float  # when its last request ended (monotonic seconds)


@dataclass(frozen=True)
class Room:
    """The policy's answer: unload these, then load; or wait (`wait`) for models to go idle."""

    unload: tuple[str, ...] = ()
    wait: bool = False


def make_room(resident: Sequence[Resident], needed: int, budget: int | None) -> Room:
    """What to unload so that `needed` more bytes fit in `budget` with the `resident` models.

    The least recently used idle models go first, and no more of them than needed. When even
    unloading every idle model leaves too little room, nothing is unloaded now: wait for busy
    ones to finish (unloading some idle ones early would only lose their caches for nothing)."""
    if budget is None:
        return Room()
    used = sum(r.nbytes for r in resident)
    if used + needed <= budget:
        return Room()
    chosen: list[str] = []
    for r in sorted((r for r in resident if r.idle), key=lambda r: r.last_active):
        chosen.append(r.name)
        used -= r.nbytes
        if used + needed <= budget:
            return Room(tuple(chosen))
    return Room(wait=True)
