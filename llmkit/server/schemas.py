"""The JSON Schema fragments of the request bodies (llmkit.server.bodies), side by side: what each
field admits, and what JSON Schema can say between the fields. Client generators and fuzzers read
them in /openapi.json; the code checks the rest, with the same bounds.
"""

from __future__ import annotations

from typing import Any

from llmkit.embeddings import MAX_INPUTS
from llmkit.tools.request import MAX_TOOLS

MAX_N = 16
MAX_PROMPTS = 64  # a completion request's prompts
MAX_STOP = 16
MAX_COMPLETION_LOGPROBS = 5
MAX_BIAS = 100.0  # the OpenAI API's range for a logit_bias value
# llama.cpp divides a repeated token's positive logit by the penalty (multiplies a negative one):
# 0 divides by zero, and past 10 a repeated token is as good as banned already (presence and
# frequency penalties and logit_bias say that outright). 1 is no penalty.
MAX_REPEAT_PENALTY = 10.0
# llama.cpp reads top_k as a C int: 2**40 became 0 (no top-k at all) on the way. Past the
# vocabulary it keeps every token anyway.
MAX_TOP_K = 2**31 - 1

# A bound the served model sets (llmkit.server.openapi states it in the running server's schema,
# and the request is checked against the same value in code): its vocabulary, for every token id.
TOKEN_ID = "x-llmkit-token-id"
EMBEDDING_TOKEN_ID = "x-llmkit-embedding-token-id"  # the embedding model's (--embedding-model)
EMBEDDING_SIZE = "x-llmkit-embedding-size"
# logit_bias: token ids as JSON object keys, in decimal; a bias in the OpenAI API's range.
TOKEN_KEY = r"^(0|[1-9][0-9]{0,9})$"
LOGIT_BIAS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"type": "string", "pattern": TOKEN_KEY, TOKEN_ID: True},
    "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS},
}


# -- chat completions --------------------------------------------------------------------------

CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_TEXT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
# A function an assistant called, in its tool_calls or function_call.
_CALLED = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "arguments": {"type": ["string", "object"]}},
}
_CALL = {"type": "object", "required": ["function"], "properties": {"function": _CALLED}}
# A message as normalize_messages takes it: a known role and text content (as a string or text
# parts); only an assistant's may be missing, when it has its calls instead.
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": sorted(CHAT_ROLES)},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": _TEXT_PART},
                {"type": "null"},
            ]
        },
    },
    "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
    "then": {
        "required": ["content"],
        "properties": {"content": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
    },
    "else": {
        "properties": {
            "tool_calls": {
                "anyOf": [{"type": "null"}, {"type": "array", "items": _CALL}],
            },
            "function_call": {"anyOf": [{"type": "null"}, _CALLED]},
        },
        "anyOf": [
            {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
            {
                "required": ["tool_calls"],
                "properties": {"tool_calls": {"type": "array", "minItems": 1}},
            },
            {"required": ["function_call"], "properties": {"function_call": {"type": "object"}}},
        ],
    },
}
# A function tool as llmkit.tools.request takes it (which names the wrong parameter exactly).
_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
_FUNCTION = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": _NAME_PATTERN},
        "description": {"type": ["string", "null"]},
        "parameters": {"type": "object", "properties": {"type": {"const": "object"}}},
    },
}
CHAT_TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_TOOLS,
    "items": {
        "type": "object",
        "required": ["type", "function"],
        "properties": {"type": {"const": "function"}, "function": _FUNCTION},
    },
}


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


# A tool request's grammar is the tools' and the response format's: no GBNF grammar beside them.
_BESIDE_TOOLS: dict[str, Any] = {
    "properties": {"logprobs": {"enum": [False, None]}, "grammar": {"type": "null"}}
}
# What JSON Schema can say of chat's fields between them (the rest is checked in code only:
# tool_choice naming a tool offered, tool names unique, a tool's parameters a schema llguidance
# compiles, the prompt within the context).
CHAT_BETWEEN_FIELDS: list[dict[str, Any]] = [
    {
        "if": _given("top_logprobs"),
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    },
    {"not": {"allOf": [_given("tools"), _given("functions")]}},
    {
        "if": {
            "required": ["tool_choice"],
            "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}},
        },
        "then": _given("tools"),
    },
    {
        "if": {
            "required": ["function_call"],
            "properties": {"function_call": {"not": {"enum": [None, "none"]}}},
        },
        "then": _given("functions"),
    },
    *(
        {
            "if": _given(offered),
            "then": _BESIDE_TOOLS,
        }
        for offered in ("tools", "functions")
    ),
]
CHAT_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        },
        {"type": "null"},
    ]
}
FUNCTIONS_SCHEMA = {
    "anyOf": [
        {"type": "array", "minItems": 1, "maxItems": MAX_TOOLS, "items": _FUNCTION},
        {"type": "null"},
    ]
}
FUNCTION_CALL_SCHEMA = {
    "anyOf": [
        {"enum": ["none", "auto"]},
        {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        {"type": "null"},
    ]
}


# response_format as grammar_for reads it: free text (no type, or "text"), json_object (with
# llama_cpp.server's optional `schema`), or json_schema with its schema.
_JSON_SCHEMA = {"type": "object"}  # whether llguidance compiles it is checked in code only
RESPONSE_FORMAT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "object", "properties": {"type": {"enum": ["text", None]}}},
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": "json_object"}, "schema": _JSON_SCHEMA},
        },
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {
                    "type": "object",
                    "required": ["schema"],
                    "properties": {"schema": _JSON_SCHEMA},
                },
            },
        },
    ]
}


# -- completions ---------------------------------------------------------------------------------

# best_of may only say what n says: 1, or n itself (JSON Schema compares no two values: one
# branch per n).
BEST_OF_SCHEMA = [
    {"properties": {"best_of": {"enum": [None, 1]}}},
    *(
        {"required": ["n", "best_of"], "properties": {"n": {"const": n}, "best_of": {"const": n}}}
        for n in range(2, MAX_N + 1)
    ),
]

# -- embeddings ----------------------------------------------------------------------------------

_INPUT_TEXT = {"type": "string", "minLength": 1}
_EMBEDDING_TOKEN = {"type": "integer", "minimum": 0, EMBEDDING_TOKEN_ID: True}
# A list of token ids is one input (as OpenAI reads it), a list of lists several.
EMBEDDING_INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _INPUT_TEXT},
        {"type": "array", "minItems": 1, "items": _EMBEDDING_TOKEN},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_INPUTS,
            "items": {"type": "array", "minItems": 1, "items": _EMBEDDING_TOKEN},
        },
    ]
}


# -- the Responses API ---------------------------------------------------------------------------

# The input items messages_for takes: messages of text, and function calls with their outputs.
RESPONSES_ROLES = ("user", "system", "developer", "assistant")
RESPONSES_TEXT_PARTS = ("input_text", "output_text")  # output_text: a previous answer passed back
_RESPONSES_TEXT = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "text"],
                "properties": {
                    "type": {"enum": list(RESPONSES_TEXT_PARTS)},
                    "text": {"type": "string"},
                },
            },
        },
    ]
}
_ID = {"type": "string", "minLength": 1}
RESPONSES_INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "type": {"const": "message"},
                            "role": {"enum": list(RESPONSES_ROLES)},
                            "content": _RESPONSES_TEXT,
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "call_id", "name", "arguments"],
                        "properties": {
                            "type": {"const": "function_call"},
                            "call_id": _ID,
                            "name": _ID,
                            "arguments": {"type": "string"},
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type", "call_id", "output"],
                        "properties": {
                            "type": {"const": "function_call_output"},
                            "call_id": _ID,
                            "output": _RESPONSES_TEXT,
                        },
                    },
                ]
            },
        },
    ]
}
# A flat function tool, as chat_tools takes it (llmkit.tools.request checks the rest).
RESPONSES_TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": MAX_TOOLS,
    "items": {
        "type": "object",
        "required": ["type", "name"],
        "properties": {
            "type": {"const": "function"},
            "name": {"type": "string", "pattern": _NAME_PATTERN},
            "description": {"type": ["string", "null"]},
            "parameters": {
                "type": ["object", "null"],  # null: a tool without parameters
                "properties": {"type": {"const": "object"}},
            },
            "strict": {"type": ["boolean", "null"]},
        },
        "additionalProperties": {"type": "null"},  # any other key refused unless null
    },
}
RESPONSES_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "name"],
            "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
        },
        {"type": "null"},
    ]
}


# text.format as response_format_for reads it.
TEXT_FORMAT_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": ["text", "json_object"]}},
        },
        {
            "type": "object",
            "required": ["type", "schema"],
            "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}},
        },
    ]
}


# -- Anthropic's Messages API --------------------------------------------------------------------

# What llmkit.server.messages' to_chat takes. A block's other keys must be absent or null: what
# is not known is refused, not ignored. cache_control is accepted anywhere Anthropic takes it
# (and changes nothing: llmkit reuses the longest cached prefix of every prompt by itself).
MESSAGES_CACHE_CONTROL = _CACHE_CONTROL = {"type": ["object", "null"]}


def _block(kind: str, required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", *required],
        "properties": {"type": {"const": kind}, "cache_control": _CACHE_CONTROL, **properties},
        "additionalProperties": {"type": "null"},
    }


MESSAGES_TEXT_BLOCK = _block("text", ["text"], text={"type": "string"})
MESSAGES_TOOL_USE_BLOCK = _block(
    "tool_use",
    ["id", "name", "input"],
    id={"type": "string", "minLength": 1},
    name={"type": "string", "minLength": 1},
    input={"type": "object"},
)
MESSAGES_TOOL_RESULT_BLOCK = _block(
    "tool_result",
    ["tool_use_id"],
    tool_use_id={"type": "string", "minLength": 1},
    content={
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": MESSAGES_TEXT_BLOCK},
            {"type": "null"},
        ]
    },
    is_error={"type": ["boolean", "null"]},
)
_MESSAGES_CONTENT = {
    "user": [MESSAGES_TEXT_BLOCK, MESSAGES_TOOL_RESULT_BLOCK],
    "assistant": [MESSAGES_TEXT_BLOCK, MESSAGES_TOOL_USE_BLOCK],
}
# A message of text, tool calls (the assistant's) and their results (the user's). The last one
# must be the user's (no prefill): JSON Schema cannot say which item is the last.
MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "anyOf": [
            {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"const": role},
                    "content": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"anyOf": blocks}},
                        ]
                    },
                },
                "additionalProperties": False,
            }
            for role, blocks in _MESSAGES_CONTENT.items()
        ]
    },
}
MESSAGES_SYSTEM_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": MESSAGES_TEXT_BLOCK}, {"type": "null"}]
}
# A client tool, as to_chat takes it (llmkit.tools.request checks its schema compiles); no
# server tools (web search, code execution, ...) and no Anthropic-defined client tools.
MESSAGES_TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "input_schema"],
        "properties": {
            "type": {"enum": ["custom", None]},
            "name": {"type": "string", "pattern": _NAME_PATTERN},
            "description": {"type": ["string", "null"]},
            "input_schema": {"type": "object", "properties": {"type": {"const": "object"}}},
            "cache_control": _CACHE_CONTROL,
        },
        "additionalProperties": {"type": "null"},
    },
}
_PARALLEL = {"disable_parallel_tool_use": {"type": ["boolean", "null"]}}
MESSAGES_TOOL_CHOICE: dict[str, Any] = {
    "anyOf": [
        *(
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"const": kind}, **_PARALLEL},
                "additionalProperties": False,
            }
            for kind in ("auto", "any")
        ),
        {
            "type": "object",
            "required": ["type", "name"],
            "properties": {"type": {"const": "tool"}, "name": {"type": "string"}, **_PARALLEL},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": "none"}},
            "additionalProperties": False,
        },
        {"type": "null"},
    ]
}
# No model here has a reasoning format: thinking may only be off.
MESSAGES_THINKING: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": "disabled"}},
            "additionalProperties": False,
        },
        {"type": "null"},
    ]
}
# A tool_choice but none needs tools offered (that it names one of them is checked in code).
MESSAGES_BETWEEN_FIELDS: dict[str, Any] = {
    "if": {
        "required": ["tool_choice"],
        "properties": {
            "tool_choice": {"type": "object", "properties": {"type": {"not": {"const": "none"}}}}
        },
    },
    "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
}
