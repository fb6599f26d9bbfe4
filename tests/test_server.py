"""`llmkit serve` end to end: the real server, the gemma model, the real openai SDK."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

import llmkit
from llmkit.settings import ServeSettings
from tests.helpers import (
    chat,
    clean_env,
    free_port,
    get_json,
    health,
    post_json,
    root_url,
    run_llmkit,
    wait_until_idle,
)

pytestmark = pytest.mark.slow

SHORT = {"max_tokens": 16, "temperature": 0}


@pytest.fixture
def serve_env(server_models_dir: Path) -> dict[str, str]:
    return clean_env(LLMKIT_MODELS_DIR=str(server_models_dir))


def test_the_bundled_instruct_model_serves_offline_and_answers_a_chat(
    smollm2_server: openai.OpenAI,
) -> None:
    reply = chat(smollm2_server, "What is the capital of France?", max_tokens=24, temperature=0)
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    card = smollm2_server.models.list().data[0]
    assert card.id == "smollm2-135m-instruct"


def test_the_quickstart_requests_work_with_any_model_name(llmkit_server: openai.OpenAI) -> None:
    poem = llmkit_server.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[
            {
                "role": "system",
                "content": "You are a poetic assistant, skilled in explaining "
                "complex programming concepts with creative flair.",
            },
            {"role": "user", "content": "Compose a poem that explains the concept of recursion."},
        ],
        max_tokens=32,
    )
    intro = llmkit_server.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Could you introduce yourself?"}],
        max_tokens=32,
    )
    for response in (poem, intro):
        assert response.model == "gpt-3.5-turbo"
        assert response.choices[0].message.role == "assistant"
        assert response.choices[0].message.content
        assert response.choices[0].finish_reason in ("stop", "length")
        assert response.usage.prompt_tokens > 10
        assert 0 < response.usage.completion_tokens <= 32


def test_models_and_health_answer_without_waiting(llmkit_server: openai.OpenAI) -> None:
    assert [m.id for m in llmkit_server.models.list().data] == ["gemma-3-270m"]
    status, body = get_json(root_url(llmkit_server) + "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "gemma-3-270m"
    status, body = get_json(root_url(llmkit_server) + "/ready")
    assert status == 200 and body["status"] == "ready" and body["slots"]["total"] >= 1


def test_stream_ends_with_a_usage_chunk_that_counts_the_streamed_tokens(
    llmkit_server: openai.OpenAI,
) -> None:
    # Greedy output is repeatable for the same batch layout: a prompt computed afresh (in one
    # chunk) and one found in the cache (only its last token computed) round differently, so
    # compare two requests that both find the prompt cached.
    chat(llmkit_server, "Count from one to twenty.", **SHORT)
    stream = chat(
        llmkit_server,
        "Count from one to twenty.",
        stream=True,
        stream_options={"include_usage": True},
        **SHORT,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert finish in (["stop"], ["length"])
    assert len({c.id for c in chunks}) == 1
    plain = chat(llmkit_server, "Count from one to twenty.", **SHORT)
    assert plain.choices[0].message.content == text
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_n_returns_that_many_complete_choices(llmkit_server: openai.OpenAI) -> None:
    response = chat(llmkit_server, "Name a colour.", n=3, max_tokens=12, temperature=1.0)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(
        c.message.content and c.finish_reason in ("stop", "length") for c in response.choices
    )
    assert response.usage.completion_tokens >= 3
    stream = chat(llmkit_server, "Name a colour.", n=2, max_tokens=8, temperature=1.0, stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def served_alone(client: openai.OpenAI, text: str, **kwargs: Any) -> str:
    """The answer to a request that the server decodes with no other sequence in the batch."""
    wait_until_idle(client)
    return chat(client, text, **kwargs).choices[0].message.content


def test_a_request_served_alone_repeats_its_answer_for_its_seed_and_at_temperature_zero(
    llmkit_server: openai.OpenAI,
) -> None:
    # What README promises for `seed`: the same output for the same request served alone. Other
    # sequences decoded in the same batch change the rounding of the logits (as in llama-server),
    # and so does computing a prompt afresh rather than finding it cached; so each request below
    # waits for an idle server, and a first one puts its prompt in the cache.
    served_alone(llmkit_server, "Tell me a story.", max_tokens=1)
    story = {"max_tokens": 24, "temperature": 1.5}
    seeded = [
        served_alone(llmkit_server, "Tell me a story.", seed=s, **story) for s in (7, 7, 8, 9)
    ]
    assert seeded[0] == seeded[1]
    assert len(set(seeded[1:])) == 3  # other seeds give other samples
    served_alone(llmkit_server, "Tell me about the sea.", max_tokens=1)
    greedy = [
        served_alone(llmkit_server, "Tell me about the sea.", max_tokens=24, temperature=0)
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]


def test_json_object_mode_returns_json(llmkit_server: openai.OpenAI) -> None:
    response = chat(
        llmkit_server,
        "Describe a cat as a JSON object.",
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_object"},
    )
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(response.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of a JSON object
        assert response.choices[0].message.content.lstrip().startswith("{")


def test_json_schema_mode_returns_json_matching_the_schema(llmkit_server: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = chat(
        llmkit_server,
        "Invent a person.",
        max_tokens=64,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
    )
    assert response.choices[0].finish_reason == "stop"
    data = json.loads(response.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_concurrent_streams_all_run_to_completion(llmkit_server: openai.OpenAI) -> None:
    results: dict[int, tuple[str | None, int]] = {}

    def one(i: int) -> None:
        stream = chat(
            llmkit_server,
            f"Write a list of {i + 3} fruits.",
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        finish, usage = None, 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        results[i] = (finish, usage)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.2)  # each arrives while the previous one streams
    for t in threads:
        t.join(120)
    assert len(results) == 3
    for finish, tokens in results.values():
        assert finish in ("stop", "length")
        assert tokens == 40 if finish == "length" else tokens > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 5},
        {"messages": []},
        {"n": 0},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"response_format": {"type": "yaml"}},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
    ],
)
def test_bad_requests_get_an_openai_400_and_the_server_keeps_serving(
    llmkit_server: openai.OpenAI, bad: dict[str, Any]
) -> None:
    request = {
        "model": "x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        **bad,
    }
    with pytest.raises(openai.BadRequestError) as info:
        llmkit_server.chat.completions.create(**request)
    error = info.value.body
    assert (
        isinstance(error, dict)
        and error.get("message")
        and error.get("type") == "invalid_request_error"
    )
    assert chat(llmkit_server, "hi", max_tokens=4).choices[0].message.content is not None


def test_a_prompt_longer_than_the_context_is_a_clear_400(llmkit_server: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(llmkit_server, "word " * 6000, max_tokens=4)
    assert "context" in str(info.value).lower()
    with pytest.raises(openai.BadRequestError):
        chat(llmkit_server, "word " * 6000, max_tokens=4, stream=True)
    assert chat(llmkit_server, "hi", max_tokens=4).choices


def test_completions_take_several_prompts_and_n(llmkit_server: openai.OpenAI) -> None:
    # min_tokens = max_tokens: every choice is exactly 6 tokens, so the usage is known.
    exact = {"max_tokens": 6, "min_tokens": 6, "temperature": 0}
    response = llmkit_server.completions.create(
        model="x", prompt=["The sky is", "Water is"], n=2, extra_body=exact
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert all(c.text and c.finish_reason == "length" for c in response.choices)
    singles = [
        llmkit_server.completions.create(model="x", prompt=p, extra_body=exact)
        for p in ("The sky is", "Water is")
    ]
    # each prompt counted once, each of the four choices' tokens counted
    assert response.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert response.usage.completion_tokens == 4 * 6


def test_a_stop_sequence_ends_the_answer_before_it(llmkit_server: openai.OpenAI) -> None:
    # Warm: both compared requests then find the prompt cached (the same batch layout).
    llmkit_server.completions.create(model="x", prompt="Once upon a time", max_tokens=1)
    full = (
        llmkit_server.completions.create(
            model="x", prompt="Once upon a time", max_tokens=24, temperature=0
        )
        .choices[0]
        .text
    )
    words = full.split()
    assert len(words) > 4
    stop = " ".join(words[2:4])  # a stop sequence longer than one token
    cut = llmkit_server.completions.create(
        model="x",
        prompt="Once upon a time",
        max_tokens=24,
        temperature=0,
        stop=[stop, "never-appears-here"],
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(stop)]


def test_health_answers_within_a_second_during_a_long_generation(
    llmkit_server: openai.OpenAI,
) -> None:
    stream = chat(
        llmkit_server,
        "Write a very long story about a dragon.",
        max_tokens=400,
        temperature=0.8,
        stream=True,
    )
    next(iter(stream))  # generation is under way
    timings = []
    for _ in range(5):
        start = time.monotonic()
        status, body = get_json(root_url(llmkit_server) + "/health", timeout=5)
        timings.append(time.monotonic() - start)
        assert status == 200 and body["busy"] is True
        time.sleep(0.2)
    stream.close()
    assert max(timings) < 1.0


def test_a_client_that_hangs_up_frees_the_model(llmkit_server: openai.OpenAI) -> None:
    stream = chat(
        llmkit_server, "Write a very long story about a castle.", max_tokens=2000, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not get_json(root_url(llmkit_server) + "/health")[1]["busy"]:
            break
        time.sleep(0.05)
    assert get_json(root_url(llmkit_server) + "/health")[1]["busy"] is False


def test_the_api_key_is_enforced_on_v1_but_not_on_health(serve_env: dict[str, str]) -> None:
    with llmkit.serve("gemma-3-270m", api_key="s3cret", offline=True, env=serve_env) as client:
        assert chat(client, "hi", max_tokens=2).choices
        base = str(client.base_url)
        for key in ("wrong", "llmkit"):
            anonymous = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                chat(anonymous, "hi", max_tokens=2)
            with pytest.raises(openai.AuthenticationError):
                anonymous.models.list()
        assert get_json(root_url(client) + "/health")[0] == 200


def test_a_full_queue_answers_503_with_retry_after_at_once(serve_env: dict[str, str]) -> None:
    with llmkit.serve(
        "gemma-3-270m", max_queue=1, parallel=1, offline=True, env=serve_env
    ) as client:
        quick = client.with_options(max_retries=0)
        running = chat(quick, "Write a long story.", max_tokens=300, stream=True)
        next(iter(running))
        waiting = threading.Thread(target=lambda: chat(quick, "hi", max_tokens=2))
        waiting.start()
        deadline = time.monotonic() + 5
        while (
            get_json(root_url(client) + "/health")[1]["waiting"] < 1 and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            chat(quick, "hi", max_tokens=2)
        assert time.monotonic() - start < 1.0
        assert info.value.status_code == 503
        assert info.value.response.headers.get("retry-after")
        # A balancer's check sees it too, and sends the next request elsewhere.
        with urllib.request.urlopen(root_url(client) + "/health", timeout=5) as alive:
            assert alive.status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(root_url(client) + "/ready", timeout=5)
        assert not_ready.value.code == 503 and not_ready.value.headers["Retry-After"]
        assert json.loads(not_ready.value.read())["error"]["code"] == "queue_full"
        running.close()
        waiting.join(60)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_mid_generation_exits_zero_within_the_grace_period(
    serve_env: dict[str, str], stop_signal: signal.Signals
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmkit",
            "serve",
            "--model",
            "gemma-3-270m",
            "--offline",
            "--port",
            str(port),
            "--grace",
            "2",
        ],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get_json(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        stream = chat(client, "Write a very long story.", max_tokens=3000, stream=True)
        got: list[str] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in stream:
                    got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            except Exception as exc:  # noqa: BLE001 - the cut stream reports an error, as it should
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(got)
        start = time.monotonic()
        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - start
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    # SIGTERM first drains (for a balancer's checks), Ctrl-C does not; then the grace period.
    drain = ServeSettings.drain_seconds if stop_signal == signal.SIGTERM else 0
    assert took < drain + 2 + 5
    assert "shutting down" in output and "Traceback" not in output
    assert before >= 3 and len(got) > before  # it kept streaming during the grace period
    assert errors, "a stream cut by shutdown must end with an error, not look complete"


def test_sigterm_drains_ready_goes_503_at_once_and_requests_are_still_served(
    serve_env: dict[str, str],
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "serve", "--model", "gemma-3-270m", "--offline"]
        + ["--port", str(port), "--drain-seconds", "3", "--grace", "10"],
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get_json(f"{base}/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        status, body = get_json(f"{base}/ready", timeout=1)
        assert status == 503 and body["error"]["code"] == "draining"
        # Still accepting during the drain: what a balancer sends before its checks notice works.
        sent = time.monotonic() - start
        answer = chat(client, "Say hi.", max_tokens=4)
        assert answer.choices[0].message.content is not None
        assert sent < 3  # within the drain
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert 3 <= took < 3 + 10 + 5, output
    assert output.index("draining") < output.index("shutting down"), output


def test_serve_refuses_a_context_that_cannot_fit_in_memory(serve_env: dict[str, str]) -> None:
    result = run_llmkit(
        "serve",
        "--model",
        "gemma-3-270m",
        "--offline",
        "--ctx",
        "100000000",
        "--port",
        str(free_port()),
        env=serve_env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "memory" in result.stderr and "Traceback" not in result.stderr


def test_serve_warns_when_listening_beyond_loopback_without_a_key(
    serve_env: dict[str, str],
) -> None:
    with llmkit.serve("gemma-3-270m", host="0.0.0.0", offline=True, env=serve_env) as client:
        pass
    assert "without an API key" in Path(client.llmkit_log).read_text()  # type: ignore[attr-defined]


def test_serve_python_api_stops_the_server_on_an_exception(serve_env: dict[str, str]) -> None:
    with (
        pytest.raises(RuntimeError),
        llmkit.serve("gemma-3-270m", offline=True, env=serve_env) as client,
    ):
        proc = client.llmkit_process  # type: ignore[attr-defined]
        raise RuntimeError("boom")
    assert proc.poll() == 0


def test_serve_offline_without_the_model_is_one_clear_line(tmp_path: Path) -> None:
    env = clean_env(LLMKIT_MODELS_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    result = run_llmkit("serve", "--model", "llama-2-7b-chat", env=env, timeout=60)
    assert result.returncode == 1
    assert "not in the store" in result.stderr and "Traceback" not in result.stderr


def test_a_system_message_reaches_the_model(llmkit_server: openai.OpenAI) -> None:
    # llama_cpp's gemma format drops system messages; llmkit puts them in the first user turn,
    # as Gemma's own template does: the prompt grows by the system text's tokens.
    plain = chat(llmkit_server, "Hello", max_tokens=1, temperature=0)
    system = llmkit_server.chat.completions.create(
        model="x",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=1,
        temperature=0,
    )
    assert system.usage.prompt_tokens >= plain.usage.prompt_tokens + 4


def test_ignore_eos_generates_to_max_tokens(llmkit_server: openai.OpenAI) -> None:
    # A bias toward Gemma's end-of-turn token (106) makes the model end at once...
    to_the_end = {"logit_bias": {"106": 100}, "temperature": 0}
    ended = chat(llmkit_server, "Hi", max_tokens=12, **to_the_end)
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens == 0
    # ...unless end-of-generation tokens are ignored: then it runs to max_tokens.
    kept = chat(llmkit_server, "Hi", max_tokens=12, extra_body={"ignore_eos": True}, **to_the_end)
    assert kept.choices[0].finish_reason == "length"
    assert kept.usage.completion_tokens == 12


def test_the_tokenizer_extras_round_trip_and_refuse_ids_outside_the_vocabulary(
    llmkit_server: openai.OpenAI,
) -> None:
    base = root_url(llmkit_server)
    status, tokenized = post_json(base + "/extras/tokenize", {"input": "Hello, world"})
    tokens = tokenized["tokens"]
    assert status == 200 and tokens
    assert post_json(base + "/extras/tokenize/count", {"input": "Hello, world"}) == (
        200,
        {"count": len(tokens)},
    )
    status, detokenized = post_json(base + "/extras/detokenize", {"tokens": tokens})
    assert status == 200 and "Hello, world" in detokenized["text"]
    status, refused = post_json(base + "/extras/detokenize", {"tokens": [10**9]})
    assert status == 400 and refused["error"]["param"] == "tokens"  # llama.cpp would abort
    assert health(llmkit_server)["status"] == "ok"  # still serving


def test_health_shows_the_slots_and_context_chosen_for_the_memory(llmkit_server: Any) -> None:
    # The session server passes --ctx 4096 but no --parallel: the slots are sized by memory.
    body = health(llmkit_server)
    chosen = body["plan"]
    assert chosen["ctx"] == 4096 and chosen["kv_type"] == "f16"
    assert chosen["parallel"] == body["slots"]["total"] >= 1
    assert "slots" in chosen["reason"] and "available" in chosen["reason"]
    assert f"sized        {chosen['parallel']} " in Path(llmkit_server.llmkit_log).read_text()
