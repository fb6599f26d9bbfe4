"""The batched engine in-process: cache limits, chunked prompts and prefix reuse, on the real model."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from llmkit.engine import CacheFull, Delta, Engine, Job, Sequence, Usage
from llmkit.sampling import SamplingParams
from tests.test_batching import REPEAT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(gemma_gguf: Path) -> Iterator[llama_cpp.Llama]:
    """The model loaded once; engines take its `model` pointer, tests its tokenizer."""
    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False, logits_all=False)
    yield llama
    llama.close()


def tokens(llama: llama_cpp.Llama, text: str) -> list[int]:
    return llama.tokenize(text.encode(), add_bos=True, special=True)


def greedy(max_tokens: int, **kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kwargs)


async def collect(job: Job) -> tuple[str, str | None, Usage]:
    """One single-choice job's text, finish reason and usage."""
    text, finish, usage = "", None, None
    async for item in job:
        if isinstance(item, Delta):
            text += item.text
            finish = item.finish_reason or finish
        else:
            usage = item
    assert usage is not None
    return text, finish, usage


async def generate(e: Engine, sequences: list[Sequence]) -> tuple[str, str | None, Usage]:
    """Submit from inside the event loop (as the server's routes do) and collect the answer."""
    return await collect(e.submit(sequences))


def engine(gemma: llama_cpp.Llama, **options: Any) -> Engine:
    settings = {"parallel": 2, "slot_ctx": 512, "threads": 2, "max_queue": 8, **options}
    return Engine(gemma.model, **settings)


# Two prompts of about 200 tokens each: a 256-cell cache holds one of them, not both.
RIVER = "The history of the river: " + "water flows down the valley, " * 30
ANIMALS = "A list of animals: " + "cat dog bird fish horse cow, " * 30


def test_a_full_kv_cache_fails_one_request_and_the_engine_keeps_serving(
    gemma: llama_cpp.Llama,
) -> None:
    prompts = [tokens(gemma, RIVER), tokens(gemma, ANIMALS)]
    assert all(150 < len(p) < 256 for p in prompts) and sum(map(len, prompts)) > 256
    # n_batch below the cache size: each decode fits the cache (see the next test for why).
    e = engine(gemma, kv_size=256, n_batch=128)

    async def main() -> tuple[list[Any], Any]:
        jobs = [e.submit([Sequence(p, greedy(8))]) for p in prompts]
        results = await asyncio.gather(*(collect(j) for j in jobs), return_exceptions=True)
        small = await generate(e, [Sequence(tokens(gemma, "Hello"), greedy(4))])
        return results, small

    try:
        assert e.kv_size == 256
        results, small = asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        e.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], CacheFull)
    assert "KV cache is full" in str(failed[0])
    assert len(done) == 1 and done[0][1] == "length" and done[0][2].completion_tokens == 8
    assert small[1] == "length" and small[2].completion_tokens == 4


def test_a_prompt_bigger_than_a_cache_smaller_than_n_batch_is_refused_not_fatal(
    gemma_gguf: Path,
) -> None:
    # The default n_batch (512) exceeds this 256-cell cache, and llama.cpp clamps a context's
    # n_batch to its size. Handed a bigger batch, llama.cpp aborts the whole process: so this
    # engine runs in a child, and the test expects the outcome a full cache has otherwise.
    script = f"""
import asyncio, llama_cpp
from llmkit.engine import CacheFull, Engine, Sequence
from llmkit.sampling import SamplingParams
from tests.test_engine import ANIMALS, generate, greedy, tokens

llama = llama_cpp.Llama(model_path={str(gemma_gguf)!r}, n_ctx=256, verbose=False)
engine = Engine(llama.model, parallel=1, slot_ctx=512, threads=2, max_queue=8, kv_size=256)

async def main():
    prompt = tokens(llama, ANIMALS + "cat dog bird fish horse cow, " * 13)
    assert 256 < len(prompt) < 512, len(prompt)
    try:
        await generate(engine, [Sequence(prompt, greedy(4))])
    except CacheFull:
        print("CacheFull")
    print((await generate(engine, [Sequence(tokens(llama, "Hello"), greedy(4))]))[1])

asyncio.run(main())
engine.close()
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    failure = [line for line in result.stderr.splitlines() if "ASSERT" in line or "Error" in line]
    assert result.returncode == 0, "\n".join(failure) or result.stderr[-1500:]
    assert result.stdout.split() == ["CacheFull", "length"]


def test_a_prompt_longer_than_n_batch_is_decoded_in_chunks(gemma: llama_cpp.Llama) -> None:
    prompt = tokens(gemma, ANIMALS + "cat dog bird fish horse cow, " * 13)
    assert 290 < len(prompt) < 320
    e = engine(gemma, parallel=1, n_batch=64)
    try:
        text, finish, usage = asyncio.run(generate(e, [Sequence(prompt, greedy(1))]))
    finally:
        e.close()
    assert finish == "length" and usage.completion_tokens == 1
    assert usage.prompt_tokens == len(prompt) == e.prompt_tokens_computed
    # llama.cpp aborts on a batch above the context's n_batch (64): so every chunk was within it.
    assert e.decode_calls == math.ceil(len(prompt) / 64) >= 5


def test_a_repeated_prompt_recomputes_only_its_last_token(gemma: llama_cpp.Llama) -> None:
    prompt = tokens(gemma, REPEAT.format("violin"))
    e = engine(gemma)

    async def twice() -> list[tuple[str, str | None, Usage]]:
        return [await generate(e, [Sequence(prompt, greedy(8, stop=["\n"]))]) for _ in "ab"]

    try:
        first, second = asyncio.run(twice())
    finally:
        e.close()
    assert first[0] == second[0] == " violin"
    assert first[2].cached_tokens == 0
    assert second[2].cached_tokens == len(prompt) - 1  # the last token is decoded for its logits
    assert e.prompt_tokens_computed == len(prompt) + 1
    assert e.prompt_tokens_cached == len(prompt) - 1


def test_a_prompt_extending_one_being_generated_copies_its_cache(gemma: llama_cpp.Llama) -> None:
    base = tokens(gemma, RIVER)
    longer = base + tokens(gemma, "and then the sea.")[1:]  # without its BOS
    e = engine(gemma)

    async def main() -> tuple[list[Any], tuple[str, str | None, Usage]]:
        running = e.submit([Sequence(base, greedy(40, min_tokens=40))])
        events = aiter(running)
        rest = [await anext(events)]  # the first sequence holds its slot and generates
        follower = await generate(e, [Sequence(longer, greedy(4))])
        assert e.active == 1  # the first one is still going
        rest += [item async for item in events]
        return rest, follower

    try:
        rest, follower = asyncio.run(asyncio.wait_for(main(), 300))
    finally:
        e.close()
    assert isinstance(rest[-1], Usage) and rest[-1].completion_tokens == 40
    assert rest[-2].finish_reason == "length"
    assert follower[1] == "length" and follower[2].completion_tokens == 4
    assert follower[2].cached_tokens == len(base)  # copied from the busy slot, not recomputed
    assert e.prompt_tokens_computed == len(longer)


def test_greedy_with_penalties_picks_what_the_sampler_chain_picks(gemma: llama_cpp.Llama) -> None:
    # A zero logit_bias changes no logit but sends sampling through llama.cpp's chain; without it,
    # greedy sampling is llmkit's argmax with the penalties applied to the recent tokens.
    prompt = tokens(gemma, "Count from one to a hundred: 1, 2, 3,")
    penalties = {"repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.3}
    e = engine(gemma, parallel=1)

    async def run() -> tuple[str, str]:
        await generate(e, [Sequence(prompt, greedy(2))])  # both below find the prompt cached
        fast = await generate(e, [Sequence(prompt, greedy(48, **penalties))])
        chain = await generate(e, [Sequence(prompt, greedy(48, logit_bias={0: 0.0}, **penalties))])
        return fast[0], chain[0]

    try:
        fast, chain = asyncio.run(run())
    finally:
        e.close()
    assert len(fast) > 20
    assert fast == chain
