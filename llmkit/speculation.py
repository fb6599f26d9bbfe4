"""N-gram speculation (prompt lookup): draft tokens copied from where the last tokens occurred before.

No draft model: a sequence's own prompt and output are the source. When its last n tokens (3, else
2) occurred earlier, the tokens that followed them there are the draft; the engine decodes them in
the same step as the sequence's next token and keeps the longest prefix the sampler agrees with.
Copy-heavy work (repeat a text, edit a file, quote a passage) accepts long drafts; ordinary text
rarely matches, and `DraftLength` backs off where drafts keep failing, so it is not slowed.
"""

from __future__ import annotations

from dataclasses import dataclass

NGRAM_SIZES = (3, 2)  # longest first: a longer match is a better guess
MAX_DRAFT = 8  # tokens a sequence drafts at most in one step


class Drafter:
    """One sequence's tokens, indexed by n-gram: where each last occurred, and what followed."""

    def __init__(self, tokens: list[int] | None = None, sizes: tuple[int, ...] = NGRAM_SIZES):
        self.tokens: list[int] = []
        self.sizes = sizes
        # n-gram -> the index of the token that followed its latest occurrence
        self._next: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in sizes}
        self.extend(tokens or [])

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        i = len(self.tokens)
        seq = self.tokens
        for n in self.sizes:
            if i >= n:  # the n-gram ending before this token is followed by it
                self._next[n][tuple(seq[i - n : i])] = i
        seq.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the current suffix."""
        seq = self.tokens
        if k <= 0:
            return []
        for n in self.sizes:
            if len(seq) <= n:
                continue
            start = self._next[n].get(tuple(seq[-n:]))
            if start is None:
                continue
            # A match close to the end is a repeating pattern: the draft continues it.
            out: list[int] = []
            end = len(seq)
            for j in range(k):
                p = start + j
                out.append(seq[p] if p < end else out[p - end])
            return out
        return []


@dataclass
class DraftLength:
    """How many tokens a sequence drafts: grows while drafts are accepted, pauses where they fail.

    After `MISSES` drafts in a row with nothing accepted, drafting pauses for a number of steps that
    doubles each time (up to `MAX_PAUSE`), so text without repetition costs almost nothing."""

    k: int = 4
    rate: float = 0.5  # accepted / drafted, a running average
    misses: int = 0
    pause: int = 0
    backoffs: int = 0

    MISSES = 3
    MAX_PAUSE = 128

    def length(self, crowded: bool) -> int:
        """The draft length for this step; `crowded`: the batch is full of generating sequences."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        if crowded:  # batch rows are worth more than doubtful drafts then
            return self.k // 2 if self.rate >= 0.5 else 0
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self.rate = 0.7 * self.rate + 0.3 * (accepted / drafted)
        if accepted == drafted:
            self.k = min(MAX_DRAFT, self.k + 2)
            self.misses = self.backoffs = 0
            return
        self.k = max(1, min(self.k, accepted + 1))
        if accepted > 0:
            self.misses = 0
            return
        self.misses += 1
        if self.misses >= self.MISSES:
            self.pause = min(self.MAX_PAUSE, 8 << self.backoffs)
            self.backoffs += 1
            self.misses = 0
