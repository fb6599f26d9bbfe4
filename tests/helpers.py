"""Helpers the test modules share: the CLI in a subprocess, HTTP to a server, waiting, parsing.

Fixtures live in conftest.py; plain functions and constants live here, so that no test module
imports another's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import Result

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# Two function tools the tool tests offer, in chat completions' shape (the Responses API's is flat).
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two small numbers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 9},
                "b": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped function tool (WEATHER_TOOL, ADD_TOOL) in Anthropic's shape."""
    function = tool["function"]
    return {
        "name": function["name"],
        "description": function["description"],
        "input_schema": function["parameters"],
    }


def valid_tool_call(name: str, arguments: dict[str, Any]) -> bool:
    """A call of WEATHER_TOOL or ADD_TOOL whose arguments keep to its schema."""
    if name == "add":
        return set(arguments) == {"a", "b"} and all(0 <= arguments[k] <= 9 for k in "ab")
    return (
        name == "get_weather"
        and isinstance(arguments["city"], str)
        and len(arguments["city"]) <= 20
    )


# `llmkit ARGS` in this process: the llmkit_cli fixture.
LlmkitCli = Callable[..., Result]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The prompt cache's disk tier of the servers the tests start: this run's own, so that no state a
# previous run saved (in the user's ~/.cache) serves a request of this one.
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="llmkit-test-prompts-")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child llmkit: no stray LLMKIT_/HF_/OPENAI_ settings from the caller,
    and a prompt cache of this test run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMKIT_", "HF_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["LLMKIT_CACHE_DIR"] = TEST_CACHE_DIR
    env.update(extra)
    return env


def run_llmkit(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (`python -m llmkit ...`) and capture what a user would see."""
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args],
        env=env or clean_env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def get_json(url: str, timeout: float = 5) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_json(url: str, body: Any, timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def root_url(client: openai.OpenAI) -> str:
    return str(client.base_url).rstrip("/").removesuffix("/v1")


def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": text}], **kwargs
    )


def health(client: openai.OpenAI) -> dict[str, Any]:
    status, body = get_json(root_url(client) + "/health")
    assert status == 200
    return body


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def wait_until_idle(client: openai.OpenAI, timeout: float = 120) -> None:
    """Return once /health shows no active slot and nothing waiting (a hung-up stream's sequence
    runs until the engine notices the client has gone)."""
    deadline = time.monotonic() + timeout
    while True:
        body = get_json(root_url(client) + "/health")[1]
        if body["slots"]["active"] == 0 and body["waiting"] == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the server was still busy after {timeout:g} s: {body}")
        time.sleep(0.05)


def exactly(n: int) -> dict[str, Any]:
    """Generate exactly n tokens: the model's end-of-turn token is banned until then."""
    return {"max_tokens": n, "extra_body": {"min_tokens": n}}


def scrape(client: openai.OpenAI) -> dict[str, float]:
    """/metrics as {sample name{labels}: value}, parsed by prometheus-client's own parser."""
    request = urllib.request.Request(
        root_url(client) + "/metrics", headers={"Authorization": f"Bearer {client.api_key}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


REPEAT = (
    "Repeat the word.\nWord: apple\nRepeat: apple\nWord: river\nRepeat: river\nWord: {}\nRepeat:"
)


def env_file_values(text: str) -> dict[str, str]:
    """An EnvironmentFile's variables, read by /bin/sh: systemd unquotes values as sh does."""
    script = 'set -a; eval "$ENV_FILE"; set +a; exec env -0'
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"ENV_FILE": text},
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (item.split("=", 1) for item in result.stdout.split("\0") if item.startswith("LLMKIT_"))
    return dict(pairs)


# Anthropic's Messages API: a text answer's stream events, each run of deltas shown once.
MESSAGE_EVENTS = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def collapsed(types: list[str]) -> list[str]:
    """Event types with each run of deltas shown once."""
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The data of each server-sent event, checked against its `event:` line."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            events.append(json.loads(data.removeprefix("data: ")))
            assert kind == f"event: {events[-1]['type']}"
    return events
