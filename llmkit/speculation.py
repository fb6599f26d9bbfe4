"""N-gram speculation (prompt lookup): draft tokens copied from where the current text occurred before.

No draft model: a sequence's own prompt and output are the source. When its last tokens also occur
earlier, and the match is long (`MIN_MATCH` tokens or more), the tokens that followed there are the
draft; the engine decodes them in the same step as the sequence's next token and keeps the
longest prefix the sampler agrees with.

A long match is what makes a draft worth its cost. Each draft row costs the model's output layer
(for Gemma's 262k-token vocabulary, most of a token's compute), so a rejected draft is time lost:
a two- or three-token match, common in ordinary prose, is right too rarely to pay, while copying a
text, a file being edited or a quoted passage matches over dozens of tokens. llama-server's
ngram-mod goes further and drafts only after a 24-token match; llmkit starts at `MIN_MATCH` and
lets `DraftLength` grow the draft while it is accepted, so copying pays from its first words.

With `--draft-from-recent`, a sequence also drafts from the server's recent sequences (`Recall`:
the prompts and outputs of the last requests that asked for speculation), as ngram-mod's one
table for all requests does: a request sent again is copied from its earlier answer. It is off by
default, since a temperature-0 answer would then depend on the requests before it (drafts change
the batch shapes, and so how near ties round).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

KEY = 4  # the tokens an earlier occurrence is looked up by
MIN_MATCH = 6  # a draft only where the current text matches an earlier place this long
CROWDED_MATCH = 12  # and, with every batch row taken by a generating sequence, this long
MAX_MATCH = 64  # a match is measured up to this length
MAX_DRAFT = 32  # tokens a sequence drafts at most in one step
# Fewer draft tokens than this are not worth their rows. Measured on Gemma 3 270M, 2 threads: one
# sequence's step takes 13 ms with 1 row, 26 ms with 2 (the second logits row switches llama.cpp to
# its batched kernels), 55 ms with 5, 68 ms with 9, 107 ms with 17 and 179 ms with 33: a short
# draft saves nothing even when accepted, a long accepted one is 2.4 times as fast per token.
MIN_DRAFT = 3
RECALL_TOKENS = 65536  # the recent sequences' tokens Recall keeps, at most
RECALL_SEQUENCES = 64  # and how many sequences: each draft looks in every one of them


class Drafter:
    """One sequence's tokens, indexed by their last `KEY` tokens: where each last occurred."""

    def __init__(self, tokens: list[int] | None = None):
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # KEY tokens -> the index of what followed
        self.extend(tokens or [])

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        seq = self.tokens
        i = len(seq)
        if i >= KEY:  # the KEY tokens before this one are followed by it
            self._after[tuple(seq[i - KEY : i])] = i
        seq.append(token)

    def match(self) -> tuple[int, int]:
        """(start, length): what followed the latest earlier occurrence of the text's end, and how
        many tokens that occurrence shares with it (0: none); lengths are measured up to MAX_MATCH."""
        return self.match_in(self)

    def match_in(self, source: Drafter) -> tuple[int, int]:
        """(start, length) as `match`, of the text's end in `source`'s tokens (this one's own or
        another sequence's)."""
        seq, before = self.tokens, source.tokens
        end = len(seq)
        if end < KEY:
            return 0, 0
        start = source._after.get(tuple(seq[end - KEY :]))
        if start is None:
            return 0, 0
        n = KEY
        while n < MAX_MATCH and start - n > 0 and before[start - n - 1] == seq[end - n - 1]:
            n += 1
        return start, n

    def draft(self, k: int, min_match: int = MIN_MATCH, recall: Recall | None = None) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the text's end, in this
        sequence or, where a recent one matches longer, in that one, where the match is at least
        `min_match` tokens; a match close to the end (a repeating pattern) is continued past what
        is known. A match longer than 2k tokens drafts half its length (up to MAX_DRAFT): copying
        that far back is likely to go on."""
        if k <= 0:
            return []
        source = self
        start, n = self.match()
        for other in recall.recent() if recall is not None else ():
            s, m = self.match_in(other)
            if m > n:
                source, start, n = other, s, m
        if n < min_match:
            return []
        k = max(k, min(MAX_DRAFT, n // 2))
        before, end = source.tokens, len(source.tokens)
        if source is not self:
            return before[start : start + k]
        out: list[int] = []
        for j in range(k):
            p = start + j
            out.append(before[p] if p < end else out[p - end])
        return out


class Recall:
    """The recent sequences (prompt and output) of the server, newest first, for drafts across
    requests; at most `capacity` tokens and `count` sequences of them."""

    def __init__(self, capacity: int = RECALL_TOKENS, count: int = RECALL_SEQUENCES):
        self.capacity = capacity
        self.count = count
        self._kept: deque[Drafter] = deque()
        self._tokens = 0

    def remember(self, sequence: Drafter) -> None:
        if len(sequence.tokens) > self.capacity or len(sequence.tokens) <= KEY:
            return
        self._kept.appendleft(sequence)
        self._tokens += len(sequence.tokens)
        while self._tokens > self.capacity or len(self._kept) > self.count:
            self._tokens -= len(self._kept.pop().tokens)

    def recent(self) -> deque[Drafter]:
        return self._kept

    @property
    def tokens(self) -> int:
        return self._tokens


@dataclass
class DraftLength:
    """How many tokens a sequence drafts: doubles while drafts are accepted, pauses where they fail.

    A draft starts at `START` tokens; a rejected one restarts from what was accepted. After `MISSES` drafts in a row with nothing
    accepted, drafting pauses for a number of steps that doubles each time (up to `MAX_PAUSE`)."""

    k: int = 8
    rate: float = 0.5  # accepted / drafted, a running average
    misses: int = 0
    pause: int = 0
    backoffs: int = 0

    START = 8
    MISSES = 2
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
            self.k = min(MAX_DRAFT, self.k * 2)
            self.misses = self.backoffs = 0
            return
        self.k = max(self.START, accepted + 1)
        if accepted > 0:
            self.misses = 0
            return
        self.misses += 1
        if self.misses >= self.MISSES:
            self.pause = min(self.MAX_PAUSE, 8 << self.backoffs)
            self.backoffs += 1
            self.misses = 0
