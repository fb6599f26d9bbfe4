"""Log-probabilities of tokens under the model's distribution (the raw logits, before sampling).

One position costs one pass over the vocabulary (a log-sum-exp) and, for the top alternatives, a
partial sort; only the sequences that ask pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_TOP = 20  # the most alternatives a position may list (OpenAI's limit for chat)


@dataclass
class TokenLogprob:
    """One token's log-probability, and the most likely tokens at its position, best first."""

    token: int
    logprob: float | None  # None for a prompt's first token: nothing comes before it
    top: list[tuple[int, float]] = field(default_factory=list)


def at(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under softmax(logits), with the `top` most likely tokens."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(logits[best])[::-1]]
        alternatives = [(int(t), float(logits[t]) - log_total) for t in best]
    return TokenLogprob(int(token), float(logits[token]) - log_total, alternatives)
