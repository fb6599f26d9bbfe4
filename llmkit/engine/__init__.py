"""The generation engine: N sequence slots in one llama.cpp context, decoded together (continuous batching).

One long-lived scheduler thread owns the context. Each step it admits waiting sequences into free
slots, then makes ONE llama_decode holding the next token of every generating sequence plus prompt
chunks of newly admitted ones, samples each sequence from its own row of logits and hands the text
to each job's channel in one call a step. A finished sequence frees its slot at once; the next step fills it.

Nothing here knows HTTP or asyncio. `submit` queues a Job from any thread; its events (Deltas, then
the Usage) go through a Channel: by default a plain thread-safe queue that `Job.events()` reads
(scripts, tests, the benchmark); the server passes a channel that hands them to its event loop.
So /health answers while the model works. A slot keeps the tokens it last held, and a new sequence
goes to the slot sharing the longest prefix with its prompt: a growing chat recomputes only its
new tokens.

`jobs` holds what goes in and comes out (choices, jobs, events, errors); `slots` the slot-reuse
plan (pure, testable without a model); `scheduler` the Engine, with its records of each slot and
of the choice running in it in `sequences`. The prompt cache keeps slots' states past their slot
and the process: `prompt_cache` its policy (pure), `disk_cache` its files, `states` the saving
and restoring with llama.cpp.
"""

from llmkit.engine.jobs import (
    END,
    CacheFull,
    Channel,
    Choice,
    Delta,
    EngineError,
    GrammarFailed,
    Job,
    Observer,
    PromptTooLong,
    QueueChannel,
    QueueFull,
    ShuttingDown,
    Usage,
    opened,
)
from llmkit.engine.scheduler import DEFAULT_N_BATCH, Engine
from llmkit.engine.states import CacheConfig

__all__ = [
    "DEFAULT_N_BATCH",
    "END",
    "CacheConfig",
    "CacheFull",
    "Channel",
    "Choice",
    "Delta",
    "Engine",
    "EngineError",
    "GrammarFailed",
    "Job",
    "Observer",
    "PromptTooLong",
    "QueueChannel",
    "QueueFull",
    "ShuttingDown",
    "Usage",
    "opened",
]
