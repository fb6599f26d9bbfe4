"""One decode's batch: each sequence's chunk of tokens written into llama.cpp's batch, with the
rows whose logits are read marked, and each sequence's row (where its next token is sampled from)
recorded on it. What goes in each chunk is the scheduler's choice (`scheduler.Engine._step`)."""

from __future__ import annotations

from typing import Any

from llmkit.engine.sequences import Running, Slot


def fill(batch: Any, chunks: list[tuple[Running, Slot, list[int]]]) -> int:
    """Write the chunks into `batch` (a llama_batch), by sequence id; returns how many tokens
    it holds. Each slot's cells are a stream of their own (`context.make_context`): llama.cpp
    decodes a part of the batch at once only for consecutive sequence ids, listed in order.

    A generating sequence's chunk is its next token, then its drafts: each row's logits are read
    (to verify the drafts), but for the rows a grammar forced, unless their logprobs are asked
    for. A prompt chunk's last row is read when it ends the prompt, every row when the prompt's
    logprobs are asked for."""
    n = 0
    for r, slot, chunk in sorted(chunks, key=lambda c: c[1].seq_id):
        pos = len(slot.cached)
        every_row = r.prompt_logprobs is not None and bool(r.todo)
        r.prompt_rows = n if every_row else -1
        every_row = every_row or not r.todo
        first = n
        unread = r.forced if r.logprobs is None else 0
        for j, token in enumerate(chunk):
            batch.token[n] = token
            batch.pos[n] = pos + j
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot.seq_id
            batch.logits[n] = every_row and j >= unread
            n += 1
        if not r.todo:
            r.row = first
        elif len(chunk) == len(r.todo):  # its last prompt token
            batch.logits[n - 1] = 1
            r.row = n - 1
    batch.n_tokens = n
    return n
