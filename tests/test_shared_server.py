"""A server a team shares: no client without the key can hurt it, no greedy client starves the
others. Each check runs against a real `llmkit serve --api-key K` on SmolLM2, started under the
systemd default soft limit of 1024 open files, with raw sockets where a client misbehaves."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llmkit
from tests.helpers import chat, clean_env, get_json, root_url

KEY = "team-key-0123"
TIMEOUT = 3  # --request-timeout: seconds for a request to arrive whole
# A grammar so ambiguous that llguidance's per-mask limits put it in its error state in a few tokens.
EXPLODING = "root ::= (x | y | z)+\nx ::= [a-z] x? [a-z]?\ny ::= [a-z]+ y?\nz ::= [a-z]? [a-z]? z?"


@pytest.fixture(scope="module")
def shared(smollm2_models_dir: Path) -> Iterator[openai.OpenAI]:
    """`llmkit serve --api-key` on SmolLM2, 2 slots, started with a soft limit of 1024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the child inherits it
    try:
        server = llmkit.serve(
            "smollm2-135m-instruct",
            api_key=KEY,
            threads=2,
            ctx=1024,
            parallel=2,
            request_timeout=TIMEOUT,
            offline=True,
            env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
        )
        client = server.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield client
    finally:
        server.__exit__(None, None, None)


def _address(client: openai.OpenAI) -> tuple[str, int]:
    host, port = root_url(client).removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _connect(client: openai.OpenAI) -> socket.socket:
    sock = socket.create_connection(_address(client), timeout=10)
    return sock


def _head(path: str, length: int, key: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one response read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body) if body else {}


def _closed(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within `within` seconds (what it sent before
    closing is read and dropped)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def test_a_wrong_key_is_a_401_before_any_body_byte_is_read(shared: openai.OpenAI) -> None:
    # The head announces 50 MB and no body follows: the answer must not wait for it.
    with _connect(shared) as sock:
        sock.sendall(_head("/v1/chat/completions", 50_000_000, "wrong"))
        start = time.monotonic()
        status, body = _response(sock)
    assert status == 401 and time.monotonic() - start < 2
    assert body["error"]["code"] == "invalid_api_key"
    # A malformed body with the wrong key is a 401 too, not a 400 that read it.
    with _connect(shared) as sock:
        sock.sendall(_head("/v1/chat/completions", 9, None) + b"{not json")
        assert _response(sock)[0] == 401


def test_a_non_ascii_bearer_token_is_a_401_not_a_500(shared: openai.OpenAI) -> None:
    with _connect(shared) as sock:
        sock.sendall(_head("/v1/models", 0, "clé-ü").replace(b"POST", b"GET", 1))
        status, body = _response(sock)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_a_body_over_the_limit_is_a_413_whether_announced_or_chunked(
    shared: openai.OpenAI,
) -> None:
    with _connect(shared) as sock:  # announced: refused before it is sent
        sock.sendall(_head("/v1/chat/completions", 5 * 1024 * 1024, KEY))
        status, body = _response(sock)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert "--max-body" in body["error"]["message"]
    with _connect(shared) as sock:  # chunked: counted as it comes
        head = _head("/v1/chat/completions", 0, KEY).replace(
            b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"
        )
        sock.sendall(head)
        chunk = b'{"messages": [' + b" " * 65000
        status = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(80):  # 5.2 MB at most: bounded
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = _response(sock)
    assert status == 413
    # The server goes on serving.
    assert chat(shared, "Say hi.", max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_health_answers_while_1100_idle_connections_are_open(shared: openai.OpenAI) -> None:
    pid = shared.llmkit_process.pid  # type: ignore[attr-defined]
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
    assert soft == hard  # raised from 1024 at start
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (own_hard, own_hard))  # this client's sockets
    idle = []
    try:
        for _ in range(1100):
            idle.append(_connect(shared))
        start = time.monotonic()
        status, body = get_json(root_url(shared) + "/health", timeout=5)
        assert status == 200 and body["status"] == "ok" and time.monotonic() - start < 2
        # Past the deadline the server has closed them: they hold no socket of its for good.
        time.sleep(TIMEOUT + 1)
        assert all(_closed(sock, 5) for sock in idle[:20])
    finally:
        for sock in idle:
            sock.close()


def _health_status(client: openai.OpenAI) -> int:
    try:  # past the connection bound uvicorn answers in plain text: the status is what counts
        with urllib.request.urlopen(root_url(client) + "/health", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_past_the_connection_bound_health_is_a_503_until_connections_close(
    smollm2_models_dir: Path,
) -> None:
    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=512,
        parallel=1,
        max_connections=16,  # the least it takes
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as server:
        assert _health_status(server) == 200
        idle = [_connect(server) for _ in range(16)]
        try:
            deadline = time.monotonic() + 5  # accepted by the server's event loop meanwhile
            while (status := _health_status(server)) != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert status == 503  # uvicorn's limit_concurrency: --max-connections
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while (status := _health_status(server)) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200


def test_a_request_that_never_finishes_arriving_is_cut_at_the_deadline(
    shared: openai.OpenAI,
) -> None:
    with _connect(shared) as sock:  # a head that never ends
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        assert _closed(sock, TIMEOUT + 5) and time.monotonic() - start < TIMEOUT + 3
    with _connect(shared) as sock:  # a body that never ends
        sock.sendall(_head("/v1/chat/completions", 100, KEY) + b'{"messages": ')
        start = time.monotonic()
        assert _closed(sock, TIMEOUT + 5) and time.monotonic() - start < TIMEOUT + 3
    assert get_json(root_url(shared) + "/health")[0] == 200


def test_a_request_with_many_choices_takes_its_share_of_the_slots(shared: openai.OpenAI) -> None:
    """64 prompts (of 2 slots): a small chat sent after it is served in seconds, not after it."""
    done: dict[str, float] = {}

    def greedy() -> None:
        shared.completions.create(
            model="m",
            prompt=[f"Count from {i} upwards:" for i in range(64)],
            max_tokens=32,
            temperature=0,
            extra_body={"min_tokens": 32},
        )
        done["greedy"] = time.monotonic()

    worker = threading.Thread(target=greedy)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while get_json(root_url(shared) + "/health")[1]["waiting"] < 32:  # in choices
            assert time.monotonic() < deadline
            time.sleep(0.05)
        start = time.monotonic()
        answer = chat(shared, "Say hi.", max_tokens=8, temperature=0)
        done["small"] = time.monotonic()
    finally:
        worker.join(600)
    assert answer.choices[0].message.content
    assert done["small"] < done["greedy"]
    assert done["small"] - start < (done["greedy"] - start) / 4


def test_choices_beyond_what_the_server_holds_are_a_400(shared: openai.OpenAI) -> None:
    quick = shared.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as too_many:  # 65 prompts: over the schema's bound
        quick.completions.create(model="m", prompt=["a"] * 65, max_tokens=1)
    assert too_many.value.body["param"].startswith("prompt")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as product:  # 64 × 16: over the capacity
        quick.completions.create(model="m", prompt=["a"] * 64, n=16, max_tokens=1)
    assert "choices" in product.value.message and product.value.body["param"] == "n"  # type: ignore[index]
    _, schema = get_json(root_url(shared) + "/openapi.json", timeout=5)  # /openapi.json is open
    prompt = schema["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
    bounds = [b.get("maxItems") for b in prompt["anyOf"] if b.get("type") == "array"]
    assert 64 in bounds


def test_a_large_invalid_body_is_refused_off_the_event_loop(shared: openai.OpenAI) -> None:
    """100,000 prompts of token ids (3 MB, over the 64-prompt bound): building pydantic's 100,003
    errors took the event loop 1.3 s, while /health waited. Now they are built on a worker thread,
    and the answer is the one a small invalid body gets."""
    quick = shared.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as small:
        quick.completions.create(model="m", prompt=[[1] * 10] * 65, max_tokens=1)
    refused: dict[str, Any] = {}

    def large() -> None:
        with pytest.raises(openai.BadRequestError) as big:
            quick.completions.create(model="m", prompt=[[1] * 10] * 100_000, max_tokens=1)
        refused["error"] = big.value

    sender = threading.Thread(target=large)
    sender.start()
    slowest = 0.0
    while sender.is_alive():  # bounded: the request ends within the client's timeout
        started = time.monotonic()
        get_json(root_url(shared) + "/health", timeout=10)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    sender.join()
    big, small_body = refused["error"].body, small.value.body
    assert big["param"] == small_body["param"] == "prompt"  # type: ignore[index]
    assert big["message"] == small_body["message"].replace("not 65", "not 100000")  # type: ignore[index]
    assert slowest < 0.5


def test_a_prompt_longer_than_the_context_can_hold_is_refused_before_it_is_tokenized(
    shared: openai.OpenAI,
) -> None:
    """100,000 one-letter messages (2.9 MB rendered) or 350,000 <|im_end|> in one: llama.cpp's
    tokenizer is superlinear in their special tokens (34 s for 40,000 messages, minutes for
    these). No token stands for more bytes than the vocabulary's longest, so a text of more
    bytes than the context's tokens × those is too long for it: refused untokenized."""
    flood = "<|im_end|>" * 350_000
    letters = [{"role": "user", "content": "a"}] * 100_000
    one = [{"role": "user", "content": flood}]
    requests = [  # each API, its body, and the parameter the refusal names
        ("/v1/chat/completions", {"messages": letters, "max_tokens": 1}, "messages"),
        ("/v1/chat/completions", {"messages": one, "max_tokens": 1}, "messages"),
        ("/v1/completions", {"prompt": flood, "max_tokens": 1}, "prompt"),
        ("/v1/responses", {"input": flood, "max_output_tokens": 16}, "input"),
        ("/v1/messages", {"messages": one, "max_tokens": 1}, None),  # Anthropic's: no param
    ]
    for path, fields, param in requests:
        body = json.dumps({"model": "m", **fields}).encode()
        assert len(body) < 4 * 1024 * 1024  # under the body cap
        with _connect(shared) as sock:  # raw: the openai SDK takes 17 s to send 100,000 messages
            start = time.monotonic()
            sock.sendall(_head(path, len(body), KEY) + body)
            status, answer = _response(sock)
        assert status == 400 and time.monotonic() - start < 5, (path, status)
        assert answer["error"].get("param") == param
        assert re.match(  # the words scripts/fuzz.py excuses
            r"the prompt is \d+ bytes, more than this server's context holds \(1024 tokens of at "
            r"most \d+ bytes each\)$",
            answer["error"]["message"],
        )
    assert get_json(root_url(shared) + "/health")[0] == 200
    # A prompt within the bound is tokenized and served as before.
    assert chat(shared, "Say hi.", max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_prompts_within_the_bytes_but_not_the_tokens_cost_one_tokenization_not_all(
    shared: openai.OpenAI,
) -> None:
    """48 completion prompts of 82 kB of special tokens each (under the bytes 1024 tokens can
    be, 15,000 tokens each): the first one too long is refused before the next is tokenized.
    An embedding input too long in bytes is refused untokenized, as a prompt is."""
    dense = "<|im_end|>a" * 7_500
    requests = [
        ("/v1/completions", {"prompt": [dense] * 48, "max_tokens": 1}, "tokens; this server's"),
        ("/v1/embeddings", {"input": "<|im_end|>" * 350_000}, "bytes, longer than the embedding"),
    ]
    for path, fields, words in requests:
        body = json.dumps({"model": "m", **fields}).encode()
        with _connect(shared) as sock:
            start = time.monotonic()
            sock.sendall(_head(path, len(body), KEY) + body)
            status, answer = _response(sock)
        assert status == 400 and time.monotonic() - start < 5, (path, status)
        assert words in answer["error"]["message"]


def test_the_key_is_never_on_the_servers_command_line(shared: openai.OpenAI) -> None:
    pid = shared.llmkit_process.pid  # type: ignore[attr-defined]
    assert KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert os.path.exists(f"/proc/{pid}")


def test_a_grammar_that_fails_fails_its_own_request_never_a_silent_stop(
    shared: openai.OpenAI,
) -> None:
    quick = shared.with_options(max_retries=0)
    body = {"grammar": EXPLODING, "min_tokens": 200}
    with pytest.raises(openai.BadRequestError) as failed:
        chat(quick, "Write words.", max_tokens=200, extra_body=body)
    assert failed.value.body["code"] == "grammar_failed"  # type: ignore[index]
    with pytest.raises(openai.APIError) as streamed:  # an error event, not finish_reason "stop"
        for _ in chat(quick, "Write words.", max_tokens=200, stream=True, extra_body=body):
            pass
    assert streamed.value.code == "grammar_failed"  # as the answer that was not streamed
    # The others are served meanwhile and after.
    assert chat(shared, "Say hi.", max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_a_grammar_past_its_time_budget_fails_its_own_request(smollm2_models_dir: Path) -> None:
    # A budget of 0 s: any grammar is past it at its first token, whatever this machine's speed.
    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=512,
        parallel=2,
        grammar_seconds=0,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as server:
        quick = server.with_options(max_retries=0)
        with pytest.raises(openai.BadRequestError) as slow:
            chat(quick, "A JSON object:", max_tokens=40, response_format={"type": "json_object"})
        assert slow.value.body["code"] == "grammar_failed"  # type: ignore[index]
        assert "simplify it" in slow.value.message
        answer = chat(quick, "Say hi.", max_tokens=4)  # without a grammar: served
        assert answer.choices[0].finish_reason in ("stop", "length")


# About 120 tokens each: 2048 of them are ~250k tokens, a minute or more of this CPU's time.
PARAGRAPH = " ".join(f"word{i} is followed by another word, and then" for i in range(12))


def test_embeddings_are_bounded_in_tokens_and_stop_when_their_client_leaves(
    shared: openai.OpenAI,
) -> None:
    quick = shared.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as too_many:  # ~410k tokens in all
        quick.embeddings.create(model="m", input=[PARAGRAPH + PARAGRAPH] * 1300)
    assert "at most 300000" in too_many.value.message
    # A long request whose client hangs up: its work stops, the next request is not behind it.
    body = json.dumps({"model": "m", "input": [PARAGRAPH] * 2048}).encode()
    with _connect(shared) as sock:
        sock.sendall(_head("/v1/embeddings", len(body), KEY) + body)
        time.sleep(2)  # it has started
    start = time.monotonic()
    small = shared.embeddings.create(model="m", input="hello")
    assert len(small.data[0].embedding) > 0
    assert time.monotonic() - start < 20  # not the minute or more the big one takes


def test_sigterm_stops_a_long_embeddings_request_within_the_grace(
    smollm2_models_dir: Path,
) -> None:
    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=512,
        grace=2,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as server:
        outcome: dict[str, Any] = {}

        def embed() -> None:
            try:
                server.with_options(max_retries=0).embeddings.create(
                    model="m", input=[PARAGRAPH] * 2048
                )
                outcome["answered"] = True
            except openai.APIError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=embed)
        worker.start()
        time.sleep(3)  # it has started
        process = server.llmkit_process  # type: ignore[attr-defined]
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        stopped = time.monotonic() - start
        worker.join(60)
    assert process.returncode == 0 and stopped < 15, stopped
    assert "answered" not in outcome


def test_sigterm_while_a_prompt_is_tokenized_frees_nothing_under_it(
    smollm2_models_dir: Path,
) -> None:
    """A prompt within the context's bytes but full of special tokens takes llama.cpp seconds to
    tokenize, on a worker thread that the shutdown's cancellation does not stop: the model was
    freed under it (a crash, or an abort in llama_free). Now the model is freed once that thread
    is done with it, or left to the process's exit."""
    with llmkit.serve(
        "smollm2-135m-instruct",
        threads=2,
        ctx=4096,
        parallel=1,
        grace=1,
        offline=True,
        env=clean_env(LLMKIT_MODELS_DIR=str(smollm2_models_dir)),
    ) as server:
        prompt = "<|im_end|>a" * 30_000  # 330,000 bytes: within 4096 tokens of 81 bytes
        body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 1}).encode()
        with _connect(server) as sock:
            sock.sendall(_head("/v1/completions", len(body), None) + body)
            time.sleep(1.5)  # it is being tokenized
            process = server.llmkit_process  # type: ignore[attr-defined]
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        log = server.llmkit_log.read_text()  # type: ignore[attr-defined]
    assert process.returncode == 0, log[-2000:]
    assert "stopped" in log


def test_echo_with_logprobs_is_one_choice(shared: openai.OpenAI) -> None:
    # Each choice would compute the whole prompt again with every position's logits.
    quick = shared.with_options(max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        quick.completions.create(
            model="m", prompt="One two three", max_tokens=1, logprobs=1, echo=True, n=4
        )
    assert refused.value.body["param"] == "n"  # type: ignore[index]
    one = quick.completions.create(
        model="m", prompt="One two three", max_tokens=1, logprobs=1, echo=True
    )
    assert one.choices[0].logprobs is not None


def test_a_cache_salt_keeps_one_clients_prompts_from_anothers_cached_tokens(
    shared: openai.OpenAI,
) -> None:
    run = os.urandom(4).hex()  # a prompt no earlier run could have cached
    document = f"Notes of meeting {run}. " + " ".join(f"Item {i} was agreed." for i in range(60))

    def cached(salt: str) -> int:
        answer = chat(
            shared, document, max_tokens=2, temperature=0, extra_body={"cache_salt": salt}
        )
        return answer.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]

    cached("alice")
    assert cached("bob") == 0  # the same prompt, another salt: nothing of alice's is reused
    assert cached("alice") > 100  # alice's own prompt is
