"""ChatSession against the real `llmkit serve` (gemma 270M) through the real openai SDK.

The model is a tiny base model: the tests check structure and behaviour, never what it says.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

import llmkit
from llmkit import ChatSession
from llmkit.client import (
    DEFAULT_URL,
    DUMMY_API_KEY,
    Answer,
    AnswerCut,
    format_stats,
    parse_conversation,
    resolve_api_key,
    resolve_url,
    retry_delay,
)
from llmkit.errors import LlmkitError, ServerUnreachable
from tests.helpers import WEATHER_TOOL as WEATHER
from tests.helpers import clean_env, free_port

# Long enough that an answer is still streaming when a test stops it.
COUNTING = "Count from 1 to 500, separated by commas: 1, 2, 3, 4, 5,"


def session(client: openai.OpenAI, **options: object) -> ChatSession:
    return ChatSession(client=client, **{"temperature": 0, "max_tokens": 8, **options})  # type: ignore[arg-type]


def busy(client: openai.OpenAI) -> bool:
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/health", timeout=5) as response:
        return bool(json.loads(response.read())["busy"])


def wait_idle(client: openai.OpenAI, seconds: float = 10.0) -> float:
    """Seconds until the server has no generation running (fails after `seconds`).

    The tests ask for 2000 tokens, which would keep the server busy for far longer (over 30 s at
    gemma's 60 tokens/s), so an idle server soon after means the closed response stopped it.
    """
    start = time.monotonic()
    while busy(client):
        assert time.monotonic() - start < seconds, "the server went on generating for nobody"
        time.sleep(0.05)
    return time.monotonic() - start


# --- pure functions ---------------------------------------------------------------------------


def test_url_comes_from_the_flag_then_llmkit_url_then_openai_base_url() -> None:
    env = {"LLMKIT_URL": "http://a:1/v1", "OPENAI_BASE_URL": "http://b:2/v1"}
    assert resolve_url("http://flag:3/v1", env) == "http://flag:3/v1"
    assert resolve_url(None, env) == "http://a:1/v1"
    assert resolve_url(None, {"OPENAI_BASE_URL": "http://b:2/v1"}) == "http://b:2/v1"
    assert (
        resolve_url(None, {"LLMKIT_URL": "", "OPENAI_BASE_URL": "http://b:2/v1"}) == "http://b:2/v1"
    )
    assert resolve_url(None, {}) == DEFAULT_URL == "http://127.0.0.1:8000/v1"


def test_a_url_without_a_path_means_the_servers_v1() -> None:
    assert resolve_url("http://host:8000", {}) == "http://host:8000/v1"
    assert resolve_url("http://host:8000/", {}) == "http://host:8000/v1"
    assert resolve_url("host:8000", {}) == "http://host:8000/v1"
    assert resolve_url("https://example.com/openai/v1/", {}) == "https://example.com/openai/v1"


def test_api_key_comes_from_the_flag_then_llmkit_then_openai_else_a_dummy() -> None:
    env = {"LLMKIT_API_KEY": "l", "OPENAI_API_KEY": "o"}
    assert resolve_api_key("f", env) == "f"
    assert resolve_api_key(None, env) == "l"
    assert resolve_api_key(None, {"OPENAI_API_KEY": "o"}) == "o"
    assert resolve_api_key(None, {}) == DUMMY_API_KEY


def test_stats_show_first_token_tokens_speed_and_total() -> None:
    answer = Answer("x", seconds_to_first_token=0.5, completion_tokens=11, total_seconds=1.5)
    assert answer.tokens_per_second == pytest.approx(10.0)  # 10 tokens after the first, in 1 s
    assert format_stats(answer) == "first token 0.50 s · 11 tokens · 10.0 tokens/s · 1.50 s total"
    cut = Answer("x", 0.5, 3, 1.0, tokens_counted=True, interrupted=True)
    assert format_stats(cut) == (
        "first token 0.50 s · ~3 tokens · 4.0 tokens/s · 1.00 s total · interrupted"
    )
    assert Answer("", None, 0, 0.2, interrupted=True).tokens_per_second is None
    assert "cut at max_tokens" in format_stats(Answer("x", 0.1, 16, 0.5, finish_reason="length"))


def test_a_conversation_file_is_checked_message_by_message() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert parse_conversation({"model": "m", "messages": messages}) == messages
    assert parse_conversation(messages) == messages  # a bare list, as other tools save them
    with pytest.raises(LlmkitError, match="message 1"):
        parse_conversation([{"role": "user", "content": "u"}, {"role": "robot", "content": "r"}])
    with pytest.raises(LlmkitError, match="not a conversation"):
        parse_conversation({"history": []})


# --- against the real server ------------------------------------------------------------------


def test_the_default_model_is_the_first_the_server_lists(llmkit_server: openai.OpenAI) -> None:
    assert ChatSession(client=llmkit_server).model == "gemma-3-270m"
    assert ChatSession(client=llmkit_server, model="mine").model == "mine"


def test_two_turns_send_the_whole_conversation(llmkit_server: openai.OpenAI) -> None:
    chat = session(llmkit_server, system="You are terse.")
    first = chat.ask("Name a colour.")
    second = chat.ask("Name another one.")

    assert [m["role"] for m in chat.messages] == ["system", *["user", "assistant"] * 2]
    assert chat.messages[2]["content"] == first.text and chat.messages[4]["content"] == second.text
    # The server counted the first exchange in the second request's prompt.
    assert first.prompt_tokens and second.prompt_tokens
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens
    for answer in (first, second):
        assert answer.text and not answer.interrupted and not answer.tokens_counted
        assert 0 < answer.completion_tokens <= 8
        assert 0 < answer.seconds_to_first_token < answer.total_seconds  # type: ignore[operator]
        assert answer.finish_reason in ("stop", "length")
    assert chat.answers == [first, second]


def test_stream_yields_the_answer_piece_by_piece(llmkit_server: openai.OpenAI) -> None:
    chat = session(llmkit_server)
    pieces = list(chat.stream("Say hello."))
    assert len(pieces) > 1
    assert chat.last is not None and chat.last.text == "".join(pieces)
    assert chat.last.completion_tokens >= len(pieces) - 1  # about one token per piece


def test_json_mode_makes_the_answer_a_json_object(llmkit_server: openai.OpenAI) -> None:
    answer = session(llmkit_server, json_mode=True, max_tokens=4).ask("Describe a cat as JSON.")
    assert answer.text.lstrip().startswith("{")


def test_a_forced_call_streams_into_the_answer_and_stays_in_the_history(
    llmkit_server: openai.OpenAI,
) -> None:
    chat = session(
        llmkit_server,
        max_tokens=48,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    answer = chat.ask("What is the weather in Paris?")
    [call] = answer.tool_calls
    assert call.name == "get_weather" and call.id and "city" in json.loads(call.arguments)
    assert (answer.text, answer.finish_reason) == ("", "tool_calls")
    # No text came, yet the answer has a first token (the chunk that opened it) and a speed.
    assert answer.seconds_to_first_token is not None
    assert 0 < answer.seconds_to_first_token < answer.total_seconds
    assert answer.tokens_per_second is not None and not answer.tokens_counted
    assert chat.messages[-1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }


def test_stopping_keeps_the_partial_answer_and_frees_the_server(
    llmkit_server: openai.OpenAI,
) -> None:
    chat = session(llmkit_server, max_tokens=2000)
    stop = threading.Event()
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 5:
            stop.set()

    answer = chat.ask(COUNTING, on_text=on_text, stop=stop)
    assert answer.interrupted and answer.finish_reason is None
    assert answer.text == "".join(pieces) and len(pieces) == 5
    assert chat.messages[-1] == {"role": "assistant", "content": answer.text}
    wait_idle(llmkit_server)  # the closed response stopped the generation


def test_ctrl_c_closes_the_stream_keeps_the_partial_answer_and_the_conversation_goes_on(
    llmkit_server: openai.OpenAI,
) -> None:
    chat = session(llmkit_server, max_tokens=2000)
    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.ask(COUNTING, on_text=on_text)
    assert chat.last is not None and chat.last.interrupted and chat.last.text == "".join(pieces)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
    wait_idle(llmkit_server)

    chat.max_tokens = 8
    after = chat.ask("Go on.")
    assert not after.interrupted and after.prompt_tokens and after.prompt_tokens > 5
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]


def test_save_and_load_continue_a_conversation(
    llmkit_server: openai.OpenAI, tmp_path: Path
) -> None:
    chat = session(llmkit_server, system="Be brief.")
    chat.ask("Hello.")
    chat.save(tmp_path / "chat.json")
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["model"] == "gemma-3-270m"
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]

    again = session(llmkit_server)
    again.load(tmp_path / "chat.json")
    assert again.messages == chat.messages and again.system == "Be brief."
    again.ask("And then?")
    assert [m["role"] for m in again.messages] == ["system", *["user", "assistant"] * 2]


def test_system_prompt_and_clear(llmkit_server: openai.OpenAI) -> None:
    chat = session(llmkit_server, max_tokens=4)
    chat.ask("Hi.")
    chat.system = "You are a pirate."
    assert chat.messages[0] == {"role": "system", "content": "You are a pirate."}
    assert len(chat.messages) == 3
    chat.system = "You are a poet."
    assert chat.messages[0]["content"] == "You are a poet." and len(chat.messages) == 3
    chat.clear()
    assert chat.messages == [{"role": "system", "content": "You are a poet."}]
    chat.system = None
    assert chat.messages == []


def test_no_server_at_the_url_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    chat = ChatSession(url, model="m")
    with pytest.raises(ServerUnreachable) as caught:
        chat.ask("Hello?")
    assert str(caught.value) == f"no server at {url} — start one with: llmkit serve --model NAME"
    assert chat.messages == [] and chat.last is None  # nothing happened, so nothing was kept
    with pytest.raises(ServerUnreachable):
        ChatSession(url).server_models()


def test_a_server_error_shows_the_servers_message_and_leaves_the_history(
    llmkit_server: openai.OpenAI,
) -> None:
    chat = session(llmkit_server, temperature=5)  # out of the API's range: the server says 400
    with pytest.raises(LlmkitError, match=r"^the server answered 400: .*temperature") as caught:
        chat.ask("Hello?")
    assert "\n" not in str(caught.value)
    assert chat.messages == []


def test_retry_delay_retries_only_what_failed_before_an_answer_could_begin() -> None:
    request = httpx.Request("POST", "http://x/v1/chat/completions")

    def status(code: int, **headers: str) -> openai.APIStatusError:
        response = httpx.Response(code, headers=headers, request=request)
        return openai.APIStatusError("busy", response=response, body=None)

    refused = openai.APIConnectionError(request=request)
    assert [retry_delay(refused, k) for k in range(4)] == [0.5, 1.0, 2.0, None]  # bounded
    assert retry_delay(status(503, **{"Retry-After": "2"}), 0) == 2.0
    assert retry_delay(status(503, **{"Retry-After": "3600"}), 0) == 10.0
    assert retry_delay(status(503), 0) is None  # no Retry-After: not a transient refusal
    assert retry_delay(status(400), 0) is None
    assert retry_delay(openai.APITimeoutError(request=request), 0) is None


@pytest.mark.slow
def test_a_busy_server_is_asked_again_after_retry_after(server_models_dir: Path) -> None:
    env = clean_env(LLMKIT_MODELS_DIR=str(server_models_dir))
    with llmkit.serve("gemma-3-270m", parallel=1, max_queue=1, offline=True, env=env) as client:
        quick = client.with_options(max_retries=0)
        running = quick.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": COUNTING}],
            max_tokens=2000,
            stream=True,
        )
        next(iter(running))
        waiting = threading.Thread(
            target=lambda: quick.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            root = str(client.base_url).rstrip("/").removesuffix("/v1")
            with urllib.request.urlopen(root + "/health", timeout=5) as response:
                if json.loads(response.read())["waiting"] >= 1:
                    break
            time.sleep(0.05)
        threading.Timer(1.0, running.close).start()  # the slot frees while the chat waits
        chat = session(quick)
        start = time.monotonic()
        answer = chat.ask("Hello?")  # first a 503 with Retry-After: 2, then served
        assert time.monotonic() - start >= 1.5
        assert answer.finish_reason in ("stop", "length") and not answer.interrupted
        waiting.join(60)


@pytest.mark.slow
def test_a_stream_cut_mid_answer_says_so_and_keeps_the_partial_answer(
    server_models_dir: Path,
) -> None:
    env = clean_env(LLMKIT_MODELS_DIR=str(server_models_dir))
    with llmkit.serve("gemma-3-270m", offline=True, env=env) as client:
        chat = session(client, max_tokens=2000)
        pieces: list[str] = []

        def on_text(text: str) -> None:
            pieces.append(text)
            if len(pieces) == 5:
                client.llmkit_process.kill()  # type: ignore[attr-defined]  # the server dies

        with pytest.raises(AnswerCut, match="cut off mid-way.*went away.*kept") as caught:
            chat.ask(COUNTING, on_text=on_text)
        assert "\n" not in str(caught.value)
        assert chat.last is not None and chat.last.interrupted
        assert chat.last.text == "".join(pieces) and len(pieces) >= 5
        assert chat.messages[-1] == {"role": "assistant", "content": chat.last.text}
