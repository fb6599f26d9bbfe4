"""The batched engine in-process: cache limits, chunked prompts and prefix reuse, on the real model."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from llmkit.engine import (
    CacheFull,
    Choice,
    Delta,
    Engine,
    GrammarFailed,
    Job,
    QueueChannel,
    QueueFull,
    Usage,
)
from llmkit.grammar import grammar_for, schema_grammar
from llmkit.sampling import Sampler, SamplingParams
from tests.helpers import REPEAT

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


def collect(job: Job, timeout: float = 120) -> tuple[str, str | None, Usage]:
    """One single-choice job's text, finish reason and usage."""
    text, finish, usage = "", None, None
    for item in job.events(timeout=timeout):
        if isinstance(item, Delta):
            text += item.text
            finish = item.finish_reason or finish
        else:
            usage = item
    assert usage is not None
    return text, finish, usage


def generate(e: Engine, choices: list[Choice]) -> tuple[str, str | None, Usage]:
    """Submit (from this thread: the engine needs no event loop) and collect the answer."""
    return collect(e.submit(choices))


def engine(gemma: llama_cpp.Llama, **options: Any) -> Engine:
    settings = {"parallel": 2, "slot_ctx": 512, "threads": 2, "max_queue": 8, **options}
    return Engine(gemma.model, **settings)


# Prompts of about 200 tokens: a 256-cell stream holds one, and not many tokens more.
RIVER = "The history of the river: " + "water flows down the valley, " * 30
ANIMALS = "A list of animals: " + "cat dog bird fish horse cow, " * 30


def test_the_cells_a_context_has_are_the_ones_the_plan_counts(gemma: llama_cpp.Llama) -> None:
    from llmkit.plan import kv_cells

    for parallel, slot_ctx in ((4, 64), (2, 1000), (1, 512)):
        e = engine(gemma, parallel=parallel, slot_ctx=slot_ctx)
        try:
            assert e.kv_size == kv_cells(parallel, slot_ctx)
        finally:
            e.close()


def test_a_full_kv_cache_fails_one_request_and_the_engine_keeps_serving(
    gemma: llama_cpp.Llama,
) -> None:
    long, short = tokens(gemma, ANIMALS), tokens(gemma, "Hello")
    assert 150 < len(long) < 256 - 32
    # Each slot's stream has 256 cells (kv_size / parallel), fewer than its slot_ctx: the long
    # prompt's answer outgrows it. n_batch below the stream's size: each decode fits (see the
    # next test for why).
    e = engine(gemma, kv_size=512, n_batch=128)

    def outcome(job: Job) -> Any:
        try:
            return collect(job)
        except CacheFull as exc:
            return exc

    try:
        assert e.kv_size == 512
        jobs = [e.submit([Choice(long, greedy(120))]), e.submit([Choice(short, greedy(8))])]
        results = [outcome(job) for job in jobs]  # both run together; read one after the other
        small = generate(e, [Choice(tokens(gemma, "Hello"), greedy(4))])
    finally:
        e.close()
    assert isinstance(results[0], CacheFull) and "KV cache is full" in str(results[0])
    assert results[1][1] == "length" and results[1][2].completion_tokens == 8
    assert small[1] == "length" and small[2].completion_tokens == 4


def test_a_prompt_bigger_than_a_cache_smaller_than_n_batch_is_refused_not_fatal(
    gemma_gguf: Path,
) -> None:
    # The default n_batch (512) exceeds this 256-cell cache, and llama.cpp clamps a context's
    # n_batch to its size. Handed a bigger batch, llama.cpp aborts the whole process: so this
    # engine runs in a child, and the test expects the outcome a full cache has otherwise.
    script = f"""
import llama_cpp
from llmkit.engine import CacheFull, Choice, Engine
from tests.test_engine import ANIMALS, generate, greedy, tokens

llama = llama_cpp.Llama(model_path={str(gemma_gguf)!r}, n_ctx=256, verbose=False)
engine = Engine(llama.model, parallel=1, slot_ctx=512, threads=2, max_queue=8, kv_size=256)
prompt = tokens(llama, ANIMALS + "cat dog bird fish horse cow, " * 13)
assert 256 < len(prompt) < 512, len(prompt)
try:
    generate(engine, [Choice(prompt, greedy(4))])
except CacheFull:
    print("CacheFull")
print(generate(engine, [Choice(tokens(llama, "Hello"), greedy(4))])[1])
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
        text, finish, usage = generate(e, [Choice(prompt, greedy(1))])
    finally:
        e.close()
    assert finish == "length" and usage.completion_tokens == 1
    assert usage.prompt_tokens == len(prompt) == e.prompt_tokens_computed
    # llama.cpp aborts on a batch above the context's n_batch (64): so every chunk was within it.
    assert e.decode_calls == math.ceil(len(prompt) / 64) >= 5


def test_a_repeated_prompt_recomputes_only_its_last_token(gemma: llama_cpp.Llama) -> None:
    prompt = tokens(gemma, REPEAT.format("violin"))
    e = engine(gemma)

    try:
        first, second = (generate(e, [Choice(prompt, greedy(8, stop=["\n"]))]) for _ in "ab")
    finally:
        e.close()
    assert first[0] == second[0] == " violin"
    assert first[2].cached_tokens == 0
    assert second[2].cached_tokens == len(prompt) - 1  # the last token is decoded for its logits
    assert e.prompt_tokens_computed == len(prompt) + 1
    assert e.prompt_tokens_cached == len(prompt) - 1


def test_requests_sharing_a_system_prompt_keep_each_others_caches(gemma: llama_cpp.Llama) -> None:
    system = "You are a helpful assistant. Answer in one short sentence. "
    first, second = (tokens(gemma, system + f"{q}\nAnswer:") for q in (RIVER, ANIMALS))
    e = engine(gemma, slot_ctx=1024)
    try:
        for prompt in (first, second):
            generate(e, [Choice(prompt, greedy(2))])
        again = generate(e, [Choice(first, greedy(2))])  # its slot was kept for it
    finally:
        e.close()
    assert again[2].cached_tokens == len(first) - 1


def test_a_slot_whose_window_cells_went_to_another_sequence_serves_no_prefix_behind_them(
    gemma: llama_cpp.Llama,
) -> None:
    # Gemma 3's sliding-window layers attend to the last 512 positions only: llama.cpp gives a
    # sequence's cells behind that window to other sequences' tokens (even with swa_full). A
    # prefix reaching behind them (here the chat template's first tokens, with BOS) must be
    # computed again: reused, the new tokens attended to no BOS, and the answer was empty.
    chat = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
    question = tokens(gemma, chat.format("What is the capital of France?"))
    long_chat = tokens(gemma, chat.format("A river: " + "water flows down the valley, " * 180))
    note = tokens(gemma, "A short note: " + "cats sleep a lot, " * 20)
    listing = tokens(gemma, "A long list: " + "one two three four five six seven, " * 90)
    assert len(long_chat) > 1024 and 512 < len(listing) < 1024
    e = engine(gemma, slot_ctx=2048)
    try:
        fresh = generate(e, [Choice(question, greedy(5))])
    finally:
        e.close()
    e = engine(gemma, slot_ctx=2048)
    try:
        for prompt in (note, long_chat, listing):  # the listing takes the chat's oldest cells
            generate(e, [Choice(prompt, greedy(2))])
        again = generate(e, [Choice(question, greedy(5))])
    finally:
        e.close()
    assert again[2].completion_tokens == 5
    assert again[0] == fresh[0]


def test_a_prompt_extending_one_being_generated_copies_its_cache(gemma: llama_cpp.Llama) -> None:
    base = tokens(gemma, RIVER)
    longer = base + tokens(gemma, "and then the sea.")[1:]  # without its BOS
    e = engine(gemma)

    try:
        events = e.submit([Choice(base, greedy(40, min_tokens=40))]).events(timeout=120)
        rest: list[Any] = [next(events)]  # the first choice holds its slot and generates
        follower = generate(e, [Choice(longer, greedy(4))])
        assert e.active == 1  # the first one is still going
        rest += list(events)
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

    try:
        generate(e, [Choice(prompt, greedy(2))])  # both below find the prompt cached
        fast = generate(e, [Choice(prompt, greedy(48, **penalties))])[0]
        chain = generate(e, [Choice(prompt, greedy(48, logit_bias={0: 0.0}, **penalties))])[0]
    finally:
        e.close()
    assert len(fast) > 20
    assert fast == chain


def test_a_choice_that_cannot_start_fails_its_request_alone(gemma: llama_cpp.Llama) -> None:
    # A grammar llguidance cannot parse makes the sampler fail to build, after the job has left
    # the queue. Only that request fails, at once and with a clear error (GrammarFailed: a 400
    # from the server); the one running goes on, and the cache it left is still there.
    prompt = tokens(gemma, RIVER)
    e = engine(gemma)
    try:
        running = e.submit([Choice(prompt, greedy(24, min_tokens=24))]).events(timeout=120)
        first = next(running)
        broken = e.submit([Choice(tokens(gemma, "Hi"), greedy(4, grammar="root ::= ("))])
        with pytest.raises(GrammarFailed, match="the grammar cannot be enforced"):
            collect(broken, timeout=30)
        rest = list(running)
        again = generate(e, [Choice(prompt, greedy(2))])
    finally:
        e.close()
    assert isinstance(first, Delta) and isinstance(rest[-1], Usage)
    assert rest[-1].completion_tokens == 24
    assert again[2].cached_tokens == len(prompt) - 1


class Recorder(QueueChannel):
    """A channel that also keeps every event in the order the scheduler sent them."""

    def __init__(self) -> None:
        self.log: list[tuple[Job, Any]] = []

    def deliver(self, items: list[tuple[Job, Any]]) -> None:
        self.log += items
        super().deliver(items)


def test_choices_waiting_for_their_sibling_do_not_hold_up_the_queue(
    gemma: llama_cpp.Llama,
) -> None:
    # Two choices of one long prompt: the second waits for the first to compute the prompt, then
    # copies its cache. A request queued behind them takes a free slot meanwhile.
    long = tokens(gemma, ANIMALS + "cat dog bird fish horse cow, " * 13)
    short = tokens(gemma, "Hello")
    e = engine(gemma, parallel=3, n_batch=32)  # the long prompt takes about ten steps
    channel = Recorder()
    try:
        siblings = e.submit(
            [Choice(long, greedy(2)), Choice(long, greedy(2), index=1, counts_prompt=False)],
            channel,
        )
        behind = e.submit([Choice(short, greedy(3))], channel)
        admitted_early = False
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline and not any(job is siblings for job, _ in channel.log):
            # The first choice and the one behind run; the sibling waits (the queue counts choices).
            if e.active == 2 and e.waiting == 1:
                admitted_early = True
                break
            time.sleep(0.002)
        collect(behind)
        for _ in siblings.events(timeout=120):
            pass
    finally:
        e.close()
    assert admitted_early
    # The second choice copied the first one's prompt: only its last token was computed again.
    assert e.prompt_tokens_computed == len(long) + 1 + len(short)


def test_building_a_big_grammar_does_not_block_submit_or_health(gemma: llama_cpp.Llama) -> None:
    # Slow to build (each alternative is a parse stack), quick to sample: any text is allowed.
    gbnf = "root ::= [^\\x00]* | " + " | ".join(f'"w{i}x"' for i in range(40_000))
    params = greedy(1, grammar=grammar_for(None, gbnf))
    started = time.perf_counter()
    vocab = gemma._model.vocab
    eog = [t for t in range(gemma.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    Sampler(params, vocab, eog).close()
    build = time.perf_counter() - started
    assert build > 0.3  # big enough to see a stall if the scheduler's lock were held
    e = engine(gemma)
    try:
        job = e.submit([Choice(tokens(gemma, "Hi"), params)])
        slowest, deadline = 0.0, time.perf_counter() + 2 * build
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            _ = e.waiting  # what /health and the metrics read, under the scheduler's lock
            slowest = max(slowest, time.perf_counter() - t)
            time.sleep(0.005)
        collect(job)
    finally:
        e.close()
    assert slowest < build / 3, (slowest, build)


def test_greedy_with_penalties_and_a_grammar_remembers_the_token_it_chose(
    gemma: llama_cpp.Llama,
) -> None:
    # Where the grammar rejects the first pick, the penalties must see the token finally chosen:
    # the argmax path and llama.cpp's chain (through a zero logit_bias) then agree token by token.
    prompt = tokens(gemma, "A list of fruits as JSON:")
    fruits = schema_grammar(
        {"type": "object", "properties": {"fruits": {"type": "array", "items": {"type": "string"}}}}
    )
    penalties = {"repeat_penalty": 1.3, "frequency_penalty": 0.5, "grammar": fruits}
    e = engine(gemma, parallel=1)
    try:
        generate(e, [Choice(prompt, greedy(2))])  # both below find the prompt cached
        fast = generate(e, [Choice(prompt, greedy(40, **penalties))])
        chain = generate(e, [Choice(prompt, greedy(40, logit_bias={0: 0.0}, **penalties))])
    finally:
        e.close()
    assert fast[0].startswith('{"fruits"') or fast[0].startswith("{")
    assert fast[0] == chain[0]


def test_with_no_queue_a_free_slot_still_takes_a_request(gemma: llama_cpp.Llama) -> None:
    e = engine(gemma, parallel=1, max_queue=0)
    try:
        prompt = tokens(gemma, "The capital of France is")
        first = e.submit([Choice(prompt, greedy(24))])  # the idle slot takes it
        with pytest.raises(QueueFull):  # the slot is taken and no one may wait
            e.submit([Choice(prompt, greedy(4))])
        assert collect(first)[1] == "length"
        assert generate(e, [Choice(prompt, greedy(4))])[1] == "length"  # free again
    finally:
        e.close()


def test_a_q8_0_kv_cache_generates_with_flash_attention(gemma: llama_cpp.Llama) -> None:
    e = engine(gemma, parallel=1, kv_type="q8_0")
    try:
        text, finish, usage = generate(e, [Choice(tokens(gemma, RIVER), greedy(8))])
        assert e.kv_type == "q8_0" and finish == "length" and usage.completion_tokens == 8
        assert text.strip()
    finally:
        e.close()


def test_prompt_logprobs_and_drafts_never_ask_for_more_rows_of_logits_than_the_context_holds(
    gemma: llama_cpp.Llama,
) -> None:
    echoed = tokens(gemma, RIVER)
    drafting = tokens(gemma, ANIMALS)  # its answer goes on with the list: n-gram drafts
    e = engine(gemma)
    try:
        # Gemma 3's 262,144-token vocabulary: 64 rows fit LOGITS_BYTES_MAX (512 would be 8 times).
        assert e.logit_rows == 64 < len(echoed)
        generating = e.submit([Choice(drafting, greedy(64))])
        echo = e.submit([Choice(echoed, greedy(1, logprobs=0, prompt_logprobs=True))])
        deltas = [item for item in echo.events(timeout=120) if isinstance(item, Delta)]
        collect(generating)
    finally:
        e.close()
    prompt_logprobs = [entry for d in deltas for entry in d.prompt_logprobs or []]
    assert [entry.token for entry in prompt_logprobs] == echoed
    assert all(math.isfinite(entry.logprob or 0.0) for entry in prompt_logprobs)
    assert e.tokens_drafted > 0
    # A decode asking for more would have aborted the process (llama.cpp's n_outputs_max).
    assert e.batch_logit_rows_max == e.logit_rows
