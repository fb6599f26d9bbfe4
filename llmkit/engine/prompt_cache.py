"""The prompt cache's policy: which saved sequence states to keep, and which one serves a prompt.

Pure, as mlx-lm's LRUPromptCache: an entry is a token sequence (under a salt) with its size in bytes
and an opaque payload (a state in memory, or a file); the cache keeps entries within a byte
budget, least recently used first out, and finds the entry sharing the longest prefix with a prompt.
A state holds every cell of its sequence, so a restored entry that goes on past the prompt is cut
back to the shared prefix: an entry serves any prompt that shares a prefix with it, not only those
it is a prefix of, except the prefixes shorter than its `min_reuse`: a model's sliding-window
layers keep, and a state saves, only the cells in the window of the sequence's last tokens, which a
much shorter prefix's next tokens do not attend to, and those it does are missing. An entry that
another extends (a conversation's earlier turn) serves nothing the longer one does not, so it is
dropped, unless it serves shorter prefixes: a conversation is stored once, at its longest.
`RestoreCosts` decides whether a restore beats computing the tokens it saves, from measured rates.
The RAM tier (`states`) and the disk tier's index (`disk_cache`) are both a PromptCache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmkit.engine.slots import common_prefix


@dataclass(eq=False)
class Entry:
    """One saved sequence: the tokens its state covers, under a salt, and what holds it."""

    tokens: tuple[int, ...]
    nbytes: int
    payload: Any = None  # the state's bytes (RAM tier) or its file (disk tier)
    salt: bytes = b""  # entries serve only prompts of the same salt (per-client isolation)
    min_reuse: int = 0  # the shortest prefix its state serves (its cells hold that one's window)

    @property
    def key(self) -> tuple[bytes, tuple[int, ...]]:
        return self.salt, self.tokens


@dataclass(frozen=True)
class Match:
    """An entry, and how many leading tokens of the prompt it covers."""

    entry: Entry
    reuse: int


@dataclass
class TierStats:
    """A tier's counters, as /metrics shows them."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    capacity: int = 0


def extends(entry: Entry, old: Entry) -> bool:
    """The entry serves every prefix the old one does: it goes on from it, as far back."""
    n = len(old.tokens)
    return (
        old.salt == entry.salt
        and n <= len(entry.tokens)
        and entry.min_reuse <= old.min_reuse
        and common_prefix(old.tokens, entry.tokens) == n
    )


class PromptCache:
    """Entries within `capacity` bytes, least recently used out first; longest-prefix lookup."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[bytes, tuple[int, ...]], Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """The entries, least recently used first."""
        return list(self._entries.values())

    def stats(self) -> TierStats:
        return TierStats(
            self.hits, self.misses, self.evictions, len(self), self.bytes, self.capacity
        )

    def covers(self, tokens: Sequence[int], salt: bytes = b"", min_reuse: int = 0) -> bool:
        """Some entry holds these tokens already (the same, or a sequence they begin), and serves
        every prefix of them that a state of them down to `min_reuse` tokens would."""
        n = len(tokens)
        return any(
            e.salt == salt
            and len(e.tokens) >= n
            and e.min_reuse <= min_reuse
            and common_prefix(e.tokens, tokens) == n
            for e in self._entries.values()
        )

    def put(self, entry: Entry) -> list[Entry]:
        """Keep an entry (unless one holds its tokens already); returns the entries evicted for
        its room, least recently used first (the caller may move them to a lower tier). An entry
        bigger than the whole budget is returned as evicted itself."""
        if self.covers(entry.tokens, entry.salt, entry.min_reuse):
            return []
        for old in list(self._entries.values()):  # entries it extends hold nothing more
            if extends(entry, old):
                self.remove(old)
        if entry.nbytes > self.capacity:
            self.evictions += 1
            return [entry]
        evicted = []
        while self.bytes + entry.nbytes > self.capacity:
            oldest = next(iter(self._entries.values()))
            self.remove(oldest)
            self.evictions += 1
            evicted.append(oldest)
        self._entries[entry.key] = entry
        self.bytes += entry.nbytes
        return evicted

    def remove(self, entry: Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self.bytes -= entry.nbytes

    def clear(self) -> list[Entry]:
        """Drop every entry; returns them, least recently used first."""
        entries = self.entries()
        self._entries.clear()
        self.bytes = 0
        return entries

    def best(self, prompt: Sequence[int], limit: int, salt: bytes = b"") -> Match | None:
        """The entry sharing the longest prefix with the prompt (at most `limit` tokens of it;
        of equal ones the smallest, which is the cheapest to restore); None if none shares any."""
        found: Match | None = None
        for e in self._entries.values():
            if e.salt != salt or not e.tokens or not prompt or e.tokens[0] != prompt[0]:
                continue
            reuse = min(common_prefix(e.tokens, prompt), limit)
            if reuse <= 0 or reuse < e.min_reuse:  # its cells lack the window of that prefix
                continue
            if (
                found is None
                or reuse > found.reuse
                or (reuse == found.reuse and e.nbytes < found.entry.nbytes)
            ):
                found = Match(e, reuse)
        return found

    def miss(self) -> None:
        """Count a lookup that found nothing worth restoring."""
        self.misses += 1

    def use(self, entry: Entry) -> None:
        """Count a hit on an entry and make it the most recently used."""
        self.hits += 1
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)


@dataclass
class RestoreCosts:
    """What restoring a state and computing prompt tokens cost, measured as the engine runs.

    Each rate starts from a guess and follows the measurements (an exponential moving average).
    A restore is worth it when it takes less time than computing the tokens it saves: a short
    prefix is often cheaper to compute than to restore, a long one never is."""

    compute_per_token: float = 2e-3  # seconds a prompt token takes to compute
    ram_per_byte: float = 1 / 2e9  # seconds a byte of state takes to restore from memory
    disk_per_byte: float = 1 / 4e8  # ... from a file (read, checksum, restore)
    fixed: float = 1e-3  # seconds any restore takes besides its bytes
    weight: float = 0.2  # of each new measurement
    measured: dict[str, int] = field(default_factory=lambda: {"compute": 0, "ram": 0, "disk": 0})

    def computed(self, tokens: int, seconds: float) -> None:
        """A decode of `tokens` prompt tokens took `seconds` (short ones say little: ignored)."""
        if tokens >= 32 and seconds > 0:
            self.compute_per_token = self._average(
                "compute", self.compute_per_token, seconds / tokens
            )

    def restored(self, nbytes: int, seconds: float, disk: bool = False) -> None:
        """A restore of `nbytes` took `seconds`."""
        if nbytes <= 0:
            return
        rate = max(seconds - self.fixed, 0.0) / nbytes
        if disk:
            self.disk_per_byte = self._average("disk", self.disk_per_byte, rate)
        else:
            self.ram_per_byte = self._average("ram", self.ram_per_byte, rate)

    def _average(self, name: str, old: float, new: float) -> float:
        first = self.measured[name] == 0
        self.measured[name] += 1
        return new if first else (1 - self.weight) * old + self.weight * new

    def restore_seconds(self, nbytes: int, disk: bool = False) -> float:
        return self.fixed + nbytes * (self.disk_per_byte if disk else self.ram_per_byte)

    def worth(self, saved_tokens: int, nbytes: int, disk: bool = False) -> bool:
        """Restoring `nbytes` beats computing `saved_tokens`."""
        return saved_tokens > 0 and (
            self.restore_seconds(nbytes, disk) < saved_tokens * self.compute_per_token
        )
