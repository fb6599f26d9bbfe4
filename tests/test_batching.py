"""Continuous batching: many requests share the model's slots, each one a whole and separate answer.

End to end through `llmkit serve` and the openai SDK, and in-process on the Engine itself. The model
is a tiny base model: the tests check counts, finish reasons, timing order and JSON validity. Texts
are compared only where the model answers with a wide margin (a few-shot "repeat the word"): at
temperature 0, llama.cpp's logits still shift a little with the shape of the batch a token is
decoded in, and a long greedy answer can take another path when it shares the batch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llmkit
from tests.helpers import REPEAT, chat, clean_env, exactly, health, scrape, wait_for

pytestmark = pytest.mark.slow

WORDS = ["violin", "tomato", "castle", "pencil"]


def repeat(client: openai.OpenAI, word: str) -> str:
    response = client.completions.create(
        model="x", prompt=REPEAT.format(word), stop=["\n"], max_tokens=8, temperature=0
    )
    return response.choices[0].text


@pytest.fixture(scope="module")
def one_slot_server(server_models_dir: Path) -> Iterator[openai.OpenAI]:
    """`llmkit serve --parallel 1 --ctx 512`: one request at a time, in a small context."""
    with llmkit.serve(
        "gemma-3-270m",
        threads=2,
        parallel=1,
        ctx=512,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(server_models_dir)),
    ) as client:
        yield client


# --- through the server -------------------------------------------------------------------------


def test_eight_concurrent_streams_each_end_with_a_finish_reason_and_their_own_usage(
    llmkit_server: openai.OpenAI,
) -> None:
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def one(i: int) -> None:
        max_tokens = 8 * (i + 1)  # 8, 16, ..., 64
        forced = exactly(max_tokens) if i % 2 else {"max_tokens": max_tokens}
        try:
            start.wait()
            stream = chat(
                llmkit_server,
                f"Write a list of {i + 3} animals.",
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                **forced,
            )
            chunks = list(stream)
            results[i] = {
                "max_tokens": max_tokens,
                "forced": i % 2 == 1,
                "finish": [
                    c.choices[0].finish_reason
                    for c in chunks
                    if c.choices and c.choices[0].finish_reason
                ],
                "pieces": [
                    c.choices[0].delta.content
                    for c in chunks
                    if c.choices and c.choices[0].delta.content
                ],
                "last": chunks[-1],
                "ids": {c.id for c in chunks},
            }
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for r in results.values():
        usage = r["last"].usage
        assert r["last"].choices == [] and usage is not None  # the usage chunk comes last
        assert len(r["finish"]) == 1 and r["finish"][0] in ("stop", "length")
        assert len(r["ids"]) == 1
        assert 0 < usage.completion_tokens <= r["max_tokens"]
        if r["finish"] == ["length"]:
            assert usage.completion_tokens == r["max_tokens"]
        if r["forced"]:
            assert r["finish"] == ["length"]
        # Every streamed piece is at least one token (a piece may hold several: held-back text).
        assert 0 < len(r["pieces"]) <= usage.completion_tokens
        assert usage.prompt_tokens > 10
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_request_arriving_mid_generation_is_answered_before_the_long_one_ends(
    llmkit_server: openai.OpenAI,
) -> None:
    long = llmkit_server.completions.create(
        model="x", prompt="Once upon a time", temperature=0.8, stream=True, **exactly(200)
    )
    arrivals: list[float] = []
    finish: list[str | None] = []

    def read() -> None:
        for chunk in long:
            arrivals.append(time.monotonic())
            finish.append(chunk.choices[0].finish_reason if chunk.choices else None)

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(arrivals) >= 5, 60)
    short = llmkit_server.completions.create(
        model="x", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    answered = time.monotonic()
    reader.join(300)
    assert short.choices[0].finish_reason in ("stop", "length")
    assert 0 < short.usage.completion_tokens <= 4
    assert finish[-1] == "length"  # the long one ran to its 200 tokens...
    still_streaming = [t for t in arrivals if t > answered]
    assert len(still_streaming) > 20  # ...most of them after the short one had its answer


def test_a_client_that_hangs_up_hands_its_slot_to_a_waiting_request(
    one_slot_server: openai.OpenAI,
) -> None:
    client = one_slot_server.with_options(max_retries=0)
    long = client.completions.create(
        model="x", prompt="Once upon a time", temperature=0.8, stream=True, **exactly(450)
    )
    chunks = iter(long)
    for _ in range(3):
        next(chunks)  # the one slot is generating
    waiting: dict[str, Any] = {}

    def queued() -> None:
        waiting["answer"] = repeat(client, "violin")
        waiting["done"] = time.monotonic()

    second = threading.Thread(target=queued)
    second.start()
    wait_for(lambda: health(client)["waiting"] == 1)
    assert health(client)["slots"] == {"total": 1, "active": 1}
    hung_up = time.monotonic()
    long.close()
    second.join(60)
    assert waiting["answer"] == " violin"
    assert waiting["done"] - hung_up < 5  # 440-odd more tokens would take far longer
    wait_for(lambda: health(client)["slots"]["active"] == 0, 5)
    assert health(client)["waiting"] == 0


def test_n_choices_are_each_complete_and_count_the_prompt_once(
    llmkit_server: openai.OpenAI,
) -> None:
    prompt = "Name a colour that you like very much and explain why."
    single = chat(llmkit_server, prompt, temperature=0, **exactly(8))
    three = chat(llmkit_server, prompt, n=3, temperature=0, **exactly(8))
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in three.choices)
    assert three.usage.prompt_tokens == single.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * 8
    # Not asserted: that greedy choices agree. llama.cpp's logits depend slightly on how a batch
    # is shaped (a prompt decoded whole or its last token alone), and this small model's greedy
    # path can flip on that; the siblings decode their last prompt token a step after the first.


def test_a_json_schema_answer_stays_valid_while_free_text_streams_share_the_batch(
    llmkit_server: openai.OpenAI,
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    started = threading.Semaphore(0)
    finishes: list[str | None] = []

    def free_text(i: int) -> None:
        stream = chat(
            llmkit_server, f"Write a poem about the number {i}.", stream=True, **exactly(48)
        )
        for n, chunk in enumerate(stream):
            if n == 1:
                started.release()
            if chunk.choices and chunk.choices[0].finish_reason:
                finishes.append(chunk.choices[0].finish_reason)

    others = [threading.Thread(target=free_text, args=(i,)) for i in range(3)]
    for t in others:
        t.start()
    for _ in others:
        assert started.acquire(timeout=60)  # all three are generating
    response = chat(
        llmkit_server,
        "Invent a person.",
        max_tokens=64,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    for t in others:
        t.join(300)
    assert finishes == ["length"] * 3
    assert response.choices[0].finish_reason == "stop"
    data = json.loads(response.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and len(data["name"]) <= 12
    assert isinstance(data["age"], int)


def assert_own_words(answers: dict[str, str]) -> None:
    for word in WORDS:
        assert word in answers[word], answers
        assert not any(other in answers[word] for other in WORDS if other != word), answers


def test_concurrent_prompts_each_get_their_own_answer(llmkit_server: openai.OpenAI) -> None:
    # Alone, the model repeats each word; at once, each must still get its own word back.
    assert [repeat(llmkit_server, w) for w in WORDS] == [f" {w}" for w in WORDS]
    # Four requests at once...
    answers: dict[str, str] = {}
    start = threading.Barrier(len(WORDS))

    def one(word: str) -> None:
        start.wait()
        answers[word] = repeat(llmkit_server, word)

    threads = [threading.Thread(target=one, args=(w,)) for w in WORDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert_own_words(answers)
    # ...and four prompts in one request, which the engine admits into the same decode step.
    response = llmkit_server.completions.create(
        model="x",
        prompt=[REPEAT.format(w) for w in WORDS],
        stop=["\n"],
        max_tokens=8,
        temperature=0,
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert_own_words({w: c.text for w, c in zip(WORDS, response.choices, strict=True)})


def test_a_prompt_longer_than_a_slots_context_is_a_400_and_the_server_keeps_serving(
    one_slot_server: openai.OpenAI,
) -> None:
    client = one_slot_server.with_options(max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, "word " * 600, max_tokens=4, stream=stream)
        assert "context" in str(info.value).lower()
        assert "512" in str(info.value)
    assert repeat(client, "castle") == " castle"
    assert health(client)["slots"] == {"total": 1, "active": 0}


def test_a_generation_that_fills_its_context_stops_with_length(
    one_slot_server: openai.OpenAI,
) -> None:
    response = one_slot_server.completions.create(
        model="x", prompt="word " * 480, temperature=0, **exactly(200)
    )
    usage = response.usage
    assert response.choices[0].finish_reason == "length"
    assert usage.prompt_tokens > 470
    assert 0 < usage.completion_tokens < 200
    assert usage.prompt_tokens + usage.completion_tokens <= 512


def test_the_tenth_turn_of_a_conversation_recomputes_only_its_new_tokens(
    llmkit_server: openai.OpenAI,
) -> None:
    wait_for(lambda: not health(llmkit_server)["busy"])  # nothing else moves the counters
    messages: list[dict[str, str]] = []
    usages = []
    computed_before = 0.0
    for turn in range(1, 11):
        messages.append({"role": "user", "content": f"Tell me fact number {turn} about the moon."})
        if turn == 10:
            computed_before = scrape(llmkit_server)[
                "llmkit_prompt_tokens_total{model=gemma-3-270m}"
            ]
        response = llmkit_server.chat.completions.create(
            model="x", messages=messages, max_tokens=12, temperature=0
        )
        usages.append(response.usage)
        messages.append({"role": "assistant", "content": response.choices[0].message.content})
    computed = (
        scrape(llmkit_server)["llmkit_prompt_tokens_total{model=gemma-3-270m}"] - computed_before
    )
    ninth, tenth = usages[-2], usages[-1]
    new = tenth.prompt_tokens - ninth.prompt_tokens  # turn 9's answer, turn 10's question, markup
    cached = tenth.prompt_tokens_details.cached_tokens
    assert tenth.prompt_tokens > 200
    assert cached >= tenth.prompt_tokens - new  # at least all of turn 9's prompt was reused
    assert computed == tenth.prompt_tokens - cached  # what /metrics counts is what usage says
    assert computed <= new < tenth.prompt_tokens / 5
    assert all(u.prompt_tokens_details.cached_tokens > 0 for u in usages[1:])


def test_metrics_parse_and_count_requests_tokens_and_latencies(
    llmkit_server: openai.OpenAI,
) -> None:
    wait_for(lambda: not health(llmkit_server)["busy"])  # nothing else moves the counters
    before = scrape(llmkit_server)
    chat(llmkit_server, "Say something.", temperature=0, **exactly(8))
    with pytest.raises(openai.BadRequestError):
        chat(llmkit_server.with_options(max_retries=0), "hi", temperature=5, max_tokens=4)
    after = scrape(llmkit_server)

    model = "{model=gemma-3-270m}"  # each model's series carry its name

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    requests = "llmkit_requests_total{endpoint=/v1/chat/completions,status=%s}"
    assert grew(requests % 200) == 1
    assert grew(requests % 400) == 1
    assert grew("llmkit_generated_tokens_total" + model) == 8
    assert (
        grew("llmkit_time_to_first_token_seconds_count" + model) == 1
    )  # one choice, one first token
    assert grew("llmkit_time_per_output_token_seconds_count" + model) == 7  # and seven after it
    assert grew("llmkit_time_to_first_token_seconds_sum" + model) > 0
    # One decode a token, but for the tokens an accepted draft brought in the same decode.
    drafts = grew("llmkit_spec_decode_accepted_tokens_total" + model)
    assert grew("llmkit_decode_calls_total" + model) + drafts >= 8
    assert (
        grew("llmkit_prompt_tokens_total" + model)
        + grew("llmkit_prompt_tokens_cached_total" + model)
        > 0
    )
    assert (
        after["llmkit_time_to_first_token_seconds_bucket{le=+Inf,model=gemma-3-270m}"]
        == after["llmkit_time_to_first_token_seconds_count" + model]
    )
    assert after["llmkit_slots_total" + model] == health(llmkit_server)["slots"]["total"] == 4
    assert after["llmkit_slots_active" + model] == 0 and after["llmkit_queue_depth" + model] == 0


def test_one_slot_serves_requests_one_after_another(one_slot_server: openai.OpenAI) -> None:
    assert health(one_slot_server)["slots"] == {"total": 1, "active": 0}
    assert scrape(one_slot_server)["llmkit_slots_total{model=gemma-3-270m}"] == 1
    assert repeat(one_slot_server, "pencil") == " pencil"
    answers: dict[str, str] = {}

    def one(word: str) -> None:
        answers[word] = repeat(one_slot_server, word)

    threads = [threading.Thread(target=one, args=(w,)) for w in WORDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == {w: f" {w}" for w in WORDS}


def test_echo_puts_the_prompt_before_each_choice(llmkit_server: openai.OpenAI) -> None:
    prompt = "The sky is"
    response = llmkit_server.completions.create(
        model="x", prompt=prompt, echo=True, n=2, max_tokens=4, extra_body={"min_tokens": 4}
    )
    assert all(c.text.startswith(prompt) and len(c.text) > len(prompt) for c in response.choices)
    stream = llmkit_server.completions.create(
        model="x", prompt=prompt, echo=True, max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices).startswith(prompt)
    plain = llmkit_server.completions.create(model="x", prompt=prompt, max_tokens=4)
    assert not plain.choices[0].text.startswith(prompt)


def test_tokenizing_a_huge_prompt_does_not_stall_the_event_loop(
    llmkit_server: openai.OpenAI, gemma_gguf: Path
) -> None:
    # Rendering and tokenizing run beside the event loop, not on it: while a prompt of 28k
    # tokens is tokenized (and then refused: it does not fit the context), /health answers and a
    # running stream's tokens keep coming. On the event loop, both would wait for the whole
    # tokenization. (The prompt is special tokens so that tokenizing takes seconds, far longer
    # than a step, in the 196 kB that 4096 tokens of at most 48 bytes can be: a longer one is
    # refused untokenized. On 2 cores the extra thread slows the steps, so the loop is timed
    # through /health.)
    import llama_cpp

    text = "<end_of_turn>a" * 14_000
    llama = llama_cpp.Llama(model_path=str(gemma_gguf), n_ctx=256, verbose=False)
    started = time.perf_counter()
    assert len(llama.tokenize(text.encode(), add_bos=True, special=True)) > 20_000
    tokenizing = time.perf_counter() - started
    llama.close()
    arrivals: list[float] = []
    stream = llmkit_server.completions.create(
        model="x", prompt="Count from 1 to 1000:", stream=True, temperature=0, **exactly(400)
    )

    done = threading.Event()

    def read() -> None:
        for _ in stream:
            arrivals.append(time.perf_counter())
            if done.is_set():
                break
        stream.close()  # hangs up: the server frees the slot

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(arrivals) >= 3, 60)
    refused: list[float] = []

    def huge() -> None:
        with pytest.raises(openai.BadRequestError, match="context"):
            llmkit_server.chat.completions.create(
                model="x", messages=[{"role": "user", "content": text}], max_tokens=1
            )
        refused.append(time.perf_counter())

    sender = threading.Thread(target=huge)
    sent = time.perf_counter()
    sender.start()
    slowest = 0.0
    try:
        while not refused and time.perf_counter() < sent + 10 * tokenizing + 60:
            t = time.perf_counter()
            health(llmkit_server)
            slowest = max(slowest, time.perf_counter() - t)
            time.sleep(0.05)
        sender.join(60)
    finally:
        done.set()
        reader.join(60)
    assert refused, "the huge request was not answered"
    assert refused[0] - sent > tokenizing / 2  # it was tokenized: the window is real
    assert slowest < tokenizing / 4, (slowest, tokenizing)
    assert any(sent < t < refused[0] for t in arrivals)  # the stream went on meanwhile
