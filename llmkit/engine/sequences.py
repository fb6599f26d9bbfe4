"""The scheduler's records: a slot of the llama.cpp context, and the choice running in it."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.engine.jobs import Choice, Job
from llmkit.logprobs import TokenLogprob
from llmkit.sampling import Sampler
from llmkit.speculation import Drafter, DraftLength
from llmkit.textstream import TextStream


@dataclass(eq=False)
class Running:
    """A choice in a slot: its prompt still to decode, its sampler, its text so far."""

    job: Job
    choice: Choice
    sampler: Sampler
    text: TextStream
    todo: list[int]  # prompt tokens not yet decoded; empty once generating
    next_token: int = -1  # the sampled token to decode next
    generated: int = 0
    last_time: float = 0.0
    row: int = -1  # this step's logits row, or -1
    logprobs: list[TokenLogprob] | None = None  # not yet sent, when the request asks for them
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_rows: int = -1  # with prompt logprobs: the first row of this step's prompt chunk
    drafter: Drafter | None = None  # its prompt and output, for n-gram drafts; None: no speculation
    draft_length: DraftLength = field(default_factory=DraftLength)
    forced: int = 0  # of this step's drafts, how many its grammar forces (accepted unsampled)


@dataclass(eq=False)
class Slot:
    """One sequence of the context: the tokens its cache holds, and what runs in it, if anything."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens it holds in the KV cache
    running: Running | None = None
    last_used: float = 0.0
    salt: bytes = b""  # the cache salt of the choice that filled its cache
    # The shortest prefix of its cache its cells serve: a sliding-window layer keeps only the
    # window of its last tokens (kept up to date by `SequenceStates.track`).
    min_reuse: int = 0
