"""The request bodies /openapi.json documents are the ones the server validates: each bound is in
the schema, a body at it is answered, one just outside it is a 400 naming the param."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from llmkit.server.errors import invalid
from llmkit.server.openapi import decimal_range, with_bounds
from llmkit.server.schemas import MAX_COMPLETION_LOGPROBS, MAX_N, MAX_STOP, TOKEN_ID
from llmkit.tools.request import MAX_TOOLS
from tests.test_origins import JSON, error_of, request


@pytest.mark.parametrize("top", [0, 7, 9, 10, 99, 100, 262143, 151935])
def test_a_token_id_pattern_matches_exactly_the_vocabulary(top: int) -> None:
    pattern = re.compile(decimal_range(top))
    matched = [n for n in range(top + 200) if pattern.match(str(n))]
    assert matched == list(range(top + 1))
    assert not pattern.match("01") and not pattern.match("-1") and not pattern.match(" 1")


def test_the_bounds_the_model_sets_are_stated_where_marked() -> None:
    schema = {
        "ids": {"type": "integer", "minimum": 0, TOKEN_ID: True},
        "keys": {"propertyNames": {"type": "string", "pattern": "^x$", TOKEN_ID: True}},
    }
    out = with_bounds(schema, {TOKEN_ID: 99})
    assert out["ids"]["maximum"] == 99
    assert out["keys"]["propertyNames"]["pattern"] == decimal_range(99)


def test_a_broken_bound_in_a_union_names_its_param_not_pydantics_tags() -> None:
    errors = [
        {"loc": ("body", "stop", "str"), "type": "string_type", "msg": "Input should be a string"},
        {"loc": ("body", "stop", "list[str]"), "type": "too_long", "msg": "at most 16 items"},
    ]
    assert invalid(errors) == ("stop: at most 16 items", "stop")


def _schema(server: openai.OpenAI) -> dict[str, Any]:
    _, _, body = request(server, "GET", "/openapi.json", {})
    return json.loads(body)  # type: ignore[no-any-return]


def _request_ref(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """The route's request body schema: a $ref into the components."""
    return schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def _body(schema: dict[str, Any], path: str) -> dict[str, Any]:
    ref = _request_ref(schema, path)
    return schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def _branch(field: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(b for b in field.get("anyOf", [field]) if b.get("type") == kind)


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
COMPLETION = {"prompt": "hi", "max_tokens": 1}
RESPONSES = {"input": "hi", "max_output_tokens": 1}


def _post(server: openai.OpenAI, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, raw = request(server, "POST", path, JSON, body)
    return status, (error_of(raw) if status == 400 else json.loads(raw))


def _tools(n: int, flat: bool = False) -> list[dict[str, Any]]:
    functions = [{"name": f"f{i}"} for i in range(n)]
    return [
        {"type": "function", **f} if flat else {"type": "function", "function": f}
        for f in functions
    ]


# (route, the body's field, the bound in the schema, a body at it, one just outside it, param)
BOUNDS = [
    ("/v1/chat/completions", "n", MAX_N, {"n": MAX_N}, {"n": MAX_N + 1}, "n"),
    (
        "/v1/chat/completions",
        "top_logprobs",
        20,
        {"logprobs": True, "top_logprobs": 20},
        {"logprobs": True, "top_logprobs": 21},
        "top_logprobs",
    ),
    (
        "/v1/chat/completions",
        "stop",
        MAX_STOP,
        {"stop": ["x"] * MAX_STOP},
        {"stop": ["x"] * (MAX_STOP + 1)},
        "stop",
    ),
    (
        "/v1/completions",
        "logprobs",
        MAX_COMPLETION_LOGPROBS,
        {"logprobs": MAX_COMPLETION_LOGPROBS},
        {"logprobs": MAX_COMPLETION_LOGPROBS + 1},
        "logprobs",
    ),
    ("/v1/completions", "best_of", MAX_N, {"n": 2, "best_of": 2}, {"best_of": 2}, "best_of"),
    (
        "/v1/chat/completions",
        "tools",
        MAX_TOOLS,
        {"tools": _tools(MAX_TOOLS), "tool_choice": "none"},
        {"tools": _tools(MAX_TOOLS + 1), "tool_choice": "none"},
        "tools",
    ),
    (
        "/v1/responses",
        "tools",
        MAX_TOOLS,
        {"tools": _tools(MAX_TOOLS, flat=True), "tool_choice": "none"},
        {"tools": _tools(MAX_TOOLS + 1, flat=True), "tool_choice": "none"},
        "tools",
    ),
]


@pytest.mark.parametrize(("path", "field", "bound", "at", "outside", "param"), BOUNDS)
def test_a_documented_bound_is_the_one_validated(
    llmkit_server: openai.OpenAI,
    path: str,
    field: str,
    bound: int,
    at: dict[str, Any],
    outside: dict[str, Any],
    param: str,
) -> None:
    body = _body(_schema(llmkit_server), path)
    documented = body["properties"][field]
    if field in ("stop", "tools"):
        assert _branch(documented, "array")["maxItems"] == bound
    else:
        assert _branch(documented, "integer")["maximum"] == bound
    base = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}.get(path, RESPONSES)
    status, answer = _post(llmkit_server, path, {**base, **at})
    assert status == 200, answer
    status, answer = _post(llmkit_server, path, {**base, **outside})
    assert status == 400 and answer["param"] == param, answer


def test_what_json_schema_says_between_fields_is_in_the_schema(
    llmkit_server: openai.OpenAI,
) -> None:
    schema = _schema(llmkit_server)
    chat = _body(schema, "/v1/chat/completions")
    needs_logprobs = chat["allOf"][0]
    assert needs_logprobs["if"]["required"] == ["top_logprobs"]
    assert needs_logprobs["then"]["properties"]["logprobs"] == {"const": True}
    status, answer = _post(llmkit_server, "/v1/chat/completions", {**CHAT, "top_logprobs": 2})
    assert status == 400 and answer["param"] == "top_logprobs"
    best_of = _body(schema, "/v1/completions")["anyOf"]  # 1, or n itself
    assert {"properties": {"best_of": {"enum": [None, 1]}}} in best_of and len(best_of) == MAX_N


def test_token_ids_are_bounded_by_the_served_vocabulary(llmkit_server: openai.OpenAI) -> None:
    schema = _schema(llmkit_server)
    top = _body(schema, "/extras/detokenize")["properties"]["tokens"]["items"]["maximum"]
    assert top > 1000  # gemma's vocabulary: 262,144
    assert _post(llmkit_server, "/extras/detokenize", {"tokens": [top]})[0] == 200
    status, answer = _post(llmkit_server, "/extras/detokenize", {"tokens": [top + 1]})
    assert status == 400 and answer["param"] == "tokens"
    bias = _branch(_body(schema, "/v1/chat/completions")["properties"]["logit_bias"], "object")
    assert bias["propertyNames"]["pattern"] == decimal_range(top)
    assert bias["additionalProperties"]["maximum"] == 100
    ok = {**CHAT, "logit_bias": {str(top): 100}}
    assert _post(llmkit_server, "/v1/chat/completions", ok)[0] == 200
    for wrong in ({str(top + 1): 1}, {"5": 101}, {"05": 1}):
        status, answer = _post(llmkit_server, "/v1/chat/completions", {**CHAT, "logit_bias": wrong})
        assert status == 400 and answer["param"].startswith("logit_bias"), (wrong, answer)


@pytest.mark.parametrize(
    ("path", "base"),
    [
        ("/v1/responses", {"input": "hi", "max_output_tokens": 1}),
        ("/v1/embeddings", {"input": "hi"}),
    ],
)
def test_routes_that_refuse_unknown_fields_say_so(
    llmkit_server: openai.OpenAI, path: str, base: dict[str, Any]
) -> None:
    assert _body(_schema(llmkit_server), path)["additionalProperties"] is False
    status, answer = _post(llmkit_server, path, {**base, "top_logprobs": 2})
    assert status == 400 and answer["param"] == "top_logprobs", answer


def test_a_schema_type_is_the_type_validated(llmkit_server: openai.OpenAI) -> None:
    # No lax coercions: "1" is no integer, 1 no boolean; but 2.0 is JSON Schema's integer 2.
    for wrong in ({"n": "1"}, {"stream": 1}, {"max_tokens": 1.5}):
        status, answer = _post(llmkit_server, "/v1/chat/completions", {**CHAT, **wrong})
        assert status == 400 and answer["param"] == next(iter(wrong)), (wrong, answer)
    assert _post(llmkit_server, "/v1/chat/completions", {**CHAT, "max_tokens": 1.0})[0] == 200


# What scripts/fuzz.py found (2026-12-03): each was a 500 or an answer off the schema.
ASSISTANT_WRONG = [
    ({"role": "assistant"}, "messages[1].content"),
    ({"role": "assistant", "content": None}, "messages[1].content"),
    ({"role": "assistant", "tool_calls": None}, "messages[1].content"),
    ({"role": "assistant", "tool_calls": "x"}, "messages[1].tool_calls"),
    ({"role": "assistant", "tool_calls": [1]}, "messages[1].tool_calls[0].function"),
    (
        {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
        "messages[1].tool_calls[0].function",
    ),
    ({"role": "assistant", "function_call": "x"}, "messages[1].function_call"),
]


def test_a_legacy_call_in_the_history_is_rendered_without_functions_offered(
    llmkit_server: openai.OpenAI,
) -> None:
    called = {"role": "assistant", "function_call": {"name": "a", "arguments": "{}"}}
    body = {**CHAT, "messages": [called, {"role": "user", "content": "hi"}]}
    assert _post(llmkit_server, "/v1/chat/completions", body)[0] == 200


@pytest.mark.parametrize("tools", [False, True])
@pytest.mark.parametrize(("message", "param"), ASSISTANT_WRONG)
def test_an_assistant_message_needs_content_or_calls_that_name_a_function(
    llmkit_server: openai.OpenAI, message: dict[str, Any], param: str, tools: bool
) -> None:
    offered = {"tools": [{"type": "function", "function": {"name": "f"}}]} if tools else {}
    messages = [{"role": "user", "content": "hi"}, message, {"role": "user", "content": "and?"}]
    body = {**CHAT, **offered, "messages": messages}
    status, answer = _post(llmkit_server, "/v1/chat/completions", body)
    assert status == 400 and answer["param"] == param, answer
    item = _body(_schema(llmkit_server), "/v1/chat/completions")["properties"]["messages"]["items"]
    assistant = item["else"]
    assert {
        "required": ["content"],
        "properties": {"content": {"type": ["string", "array"]}},
    } in assistant["anyOf"]
    called = {
        **message,
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    called.pop("function_call", None)
    replied = [messages[0], called, {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    status, answer = _post(
        llmkit_server, "/v1/chat/completions", {**CHAT, **offered, "messages": replied}
    )
    assert status == 200, answer


@pytest.mark.parametrize(
    ("given", "param"),
    [
        ({"function_call": {"name": {}}}, "function_call"),
        (
            {
                "function_call": {"name": "f"},
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "function_call",
        ),
        ({"tool_choice": "required", "functions": [{"name": "f"}]}, "tool_choice"),
    ],
)
def test_a_choice_needs_tools_of_its_own_style(
    llmkit_server: openai.OpenAI, given: dict[str, Any], param: str
) -> None:
    status, answer = _post(llmkit_server, "/v1/chat/completions", {**CHAT, **given})
    assert status == 400 and answer["param"] == param, answer


def test_parallel_tool_calls_is_a_boolean_with_or_without_tools(
    llmkit_server: openai.OpenAI,
) -> None:
    status, answer = _post(
        llmkit_server, "/v1/chat/completions", {**CHAT, "parallel_tool_calls": {}}
    )
    assert status == 400 and answer["param"] == "parallel_tool_calls", answer
    assert (
        _post(llmkit_server, "/v1/chat/completions", {**CHAT, "parallel_tool_calls": False})[0]
        == 200
    )


def test_a_responses_tool_choice_needs_a_list_of_tools_in_the_schema_too(
    llmkit_server: openai.OpenAI,
) -> None:
    rule = _body(_schema(llmkit_server), "/v1/responses")
    assert rule["then"]["properties"]["tools"] == {"type": "array", "minItems": 1}
    body = {"input": "hi", "tools": None, "tool_choice": {"type": "function", "name": "f"}}
    status, answer = _post(llmkit_server, "/v1/responses", body)
    assert status == 400 and answer["param"] == "tool_choice", answer


def test_an_empty_prompt_begins_at_the_models_bos_token(smollm2_server: openai.OpenAI) -> None:
    # SmolLM2 adds no BOS to its prompts; "" is still the start of a document (OpenAI's reading).
    answer = smollm2_server.completions.create(
        model="smollm2-135m-instruct", prompt="", max_tokens=4, temperature=0, logprobs=1, echo=True
    )
    assert answer.usage.prompt_tokens == 1 and answer.usage.completion_tokens >= 1
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.token_logprobs[0] is None  # the prompt's first token has no logprob


def _valid(schema: dict[str, Any], path: str, body: dict[str, Any]) -> bool:
    """Whether `body` is valid for the route's request schema, its $refs resolved in `schema`."""
    return jsonschema.Draft202012Validator({**schema, **_request_ref(schema, path)}).is_valid(body)


# (route, the body, whether it is answered): what fuzz.py found with 128-token slots
# (2026-12-03), a text.format without a type that the schema allowed, and the rest of the table.
FORMATS = [
    ("/v1/chat/completions", {}, True),
    ("/v1/chat/completions", {"type": "text"}, True),
    ("/v1/chat/completions", {"type": "json_object"}, True),
    ("/v1/chat/completions", {"type": "json_object", "schema": {"type": "object"}}, True),
    (
        "/v1/chat/completions",
        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        True,
    ),
    ("/v1/chat/completions", {"type": "foo"}, False),
    ("/v1/chat/completions", {"type": "json_object", "schema": 5}, False),
    ("/v1/chat/completions", {"type": "json_schema"}, False),
    ("/v1/chat/completions", {"type": "json_schema", "json_schema": {"name": "a"}}, False),
    ("/v1/responses", {"type": "text"}, True),
    ("/v1/responses", {"type": "json_object"}, True),
    ("/v1/responses", {"type": "json_schema", "name": "a", "schema": {"type": "object"}}, True),
    ("/v1/responses", {}, False),
    ("/v1/responses", {"type": None}, False),
    ("/v1/responses", {"type": "foo", "": {}}, False),
    ("/v1/responses", {"type": "json_schema", "name": "a"}, False),
    ("/v1/responses", {"type": "json_schema", "schema": []}, False),
]


@pytest.mark.parametrize(("path", "spec", "answered"), FORMATS)
def test_a_response_format_is_answered_exactly_when_the_schema_allows_it(
    llmkit_server: openai.OpenAI, path: str, spec: dict[str, Any], answered: bool
) -> None:
    if path == "/v1/responses":
        body, param = {"input": "hi", "max_output_tokens": 1, "text": {"format": spec}}, "text"
    else:
        body, param = {**CHAT, "response_format": spec}, "response_format"
    assert _valid(_schema(llmkit_server), path, body) is answered
    status, answer = _post(llmkit_server, path, body)
    if answered:
        assert status == 200, answer
    else:
        assert status == 400 and answer["param"].startswith(param), answer


TOOL_F = {"type": "function", "function": {"name": "f"}}
BESIDE_TOOLS = [
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, True),
    (
        "/v1/chat/completions",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True},
            }
        },
        True,
    ),
    ("/v1/chat/completions", {"grammar": 'root ::= "a"'}, False),
    ("/v1/chat/completions", {"logprobs": True}, False),
    ("/v1/responses", {"text": {"format": {"type": "json_object"}}}, True),
    (
        "/v1/responses",
        {"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}},
        True,
    ),
]


@pytest.mark.parametrize(("path", "given", "answered"), BESIDE_TOOLS)
def test_a_format_beside_tools_is_answered_exactly_when_the_schema_allows_it(
    llmkit_server: openai.OpenAI, path: str, given: dict[str, Any], answered: bool
) -> None:
    if path == "/v1/responses":
        tools = [{"type": "function", "name": "f"}]
        body = {"input": "hi", "max_output_tokens": 1, "tools": tools, **given}
    else:
        body = {**CHAT, "tools": [TOOL_F], **given}
    assert _valid(_schema(llmkit_server), path, body) is answered
    status, answer = _post(llmkit_server, path, body)
    assert (status == 200) is answered, answer


# (route, field, raw JSON value just outside the bound): sampling values llama.cpp cannot take.
SAMPLING_BOUNDS = [
    ("/v1/chat/completions", "repeat_penalty", "0"),
    ("/v1/chat/completions", "repeat_penalty", "1e999"),  # JSON's way to say infinity
    ("/v1/chat/completions", "top_k", str(2**40)),  # was 0 (no top-k at all) through ctypes
    ("/v1/completions", "repeat_penalty", "-0.5"),
    ("/v1/responses", "top_k", str(2**31)),
    ("/v1/responses", "repeat_penalty", "10.5"),
]


@pytest.mark.parametrize(("path", "field", "raw"), SAMPLING_BOUNDS)
def test_a_sampling_value_llama_cpp_cannot_take_is_a_400_and_bounded_in_the_schema(
    llmkit_server: openai.OpenAI, path: str, field: str, raw: str
) -> None:
    base = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}.get(path, RESPONSES)
    documented = _body(_schema(llmkit_server), path)["properties"][field]
    kind = "integer" if field == "top_k" else "number"
    assert "maximum" in _branch(documented, kind)
    if field == "repeat_penalty":
        assert _branch(documented, kind)["exclusiveMinimum"] == 0
    body = json.dumps(base)[:-1] + f', "{field}": {raw}}}'
    status, _, answer = request(llmkit_server, "POST", path, JSON, body.encode())
    assert status == 400 and error_of(answer)["param"] == field, answer
    ok = json.dumps({**base, field: 2 if field == "top_k" else 1.5}).encode()
    assert request(llmkit_server, "POST", path, JSON, ok)[0] == 200
