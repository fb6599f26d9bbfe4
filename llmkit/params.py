"""OpenAI request bodies: validated, then turned into the engine's choices (one per prompt × n).

Whatever the engine cannot honour is a 400 that says so, never silently ignored.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import llama_cpp
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from llmkit.embeddings import MAX_INPUTS
from llmkit.engine import Choice
from llmkit.errors import BadRequest
from llmkit.grammar import grammar_for
from llmkit.logprobs import MAX_TOP
from llmkit.prompts import chat_prompt, completion_prompts
from llmkit.sampling import SamplingParams
from llmkit.tools.constraint import calls_grammar
from llmkit.tools.render import ChatTemplate, tool_family, tool_prompt
from llmkit.tools.request import ToolRequest, tool_request

MAX_N = 16
MAX_STOP = 16
MAX_COMPLETION_LOGPROBS = 5
MAX_BIAS = 100.0  # the OpenAI API's range for a logit_bias value
NEVER = 2**62  # a min_tokens no generation reaches: the end-of-generation tokens stay banned

# A bound the served model sets (llmkit.openapi states it in the running server's schema, and the
# request is checked against the same value in code): its vocabulary, for every token id.
TOKEN_ID = "x-llmkit-token-id"
EMBEDDING_TOKEN_ID = "x-llmkit-embedding-token-id"  # the embedding model's (--embedding-model)
EMBEDDING_SIZE = "x-llmkit-embedding-size"
TokenId = Annotated[int, Field(ge=0, json_schema_extra={TOKEN_ID: True})]
# logit_bias: token ids as JSON object keys, in decimal; a bias in the OpenAI API's range.
_TOKEN_KEY = r"^(0|[1-9][0-9]{0,9})$"
LogitBias = Annotated[
    dict[
        Annotated[str, Field(pattern=_TOKEN_KEY)],
        Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)],
    ],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"type": "string", "pattern": _TOKEN_KEY, TOKEN_ID: True},
            "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS},
        }
    ),
]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)]


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "[key]"}


def invalid(errors: Sequence[Any]) -> tuple[str, str | None]:
    """pydantic's validation errors as one line and the param it names: the first broken bound
    (a wrong type is only the first error when nothing else is), its place without pydantic's
    union tags (`stop`, not `stop.list[str]`)."""
    chosen = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), None)
    first = chosen or (errors[0] if errors else {})
    where = ".".join(
        str(p)
        for p in first.get("loc", ())
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))
    )
    message = str(first.get("msg", "invalid request"))
    return (f"{where}: {message}" if where else message), where or None


def _integral(value: Any) -> Any:
    """JSON Schema's integers, 2.0 among them, as ints (lists of them too: token ids)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class Body(BaseModel):
    """A request body, validated as its JSON schema reads: no "1" for 1, no 1 for true (pydantic's
    lax coercions), but 2.0 is the integer 2."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return _integral(value)


class StreamOptions(Body):
    include_usage: bool = False


class _Common(Body):
    # The OpenAI API's ranges, which llama_cpp.server does not check.
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    # No repeat penalty unless asked, as the OpenAI API and llama-server (llama_cpp.server: 1.1).
    repeat_penalty: float = Field(default=1.0, ge=0.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)
    # llama-server's extension, which benchmarks send: generate to max_tokens (or the context).
    ignore_eos: bool = False
    # llmkit's extension: false turns n-gram speculation off for this request (the text is the same).
    speculation: bool = True
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    mirostat_mode: int = Field(default=0, ge=0, le=2)
    stop: Stop | None = None
    logit_bias: LogitBias | None = None
    # "tokens" (llama_cpp.server's: keys as token texts) is refused: the keys are token ids.
    logit_bias_type: Literal["input_ids"] | None = None
    stream_options: StreamOptions | None = None


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
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
        "role": {"enum": sorted(_ROLES)},
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
TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["type", "function"],
        "properties": {"type": {"const": "function"}, "function": _FUNCTION},
    },
}


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


# A tool request's grammar is the tools': nothing else may constrain the answer.
_BESIDE_TOOLS: dict[str, Any] = {
    "properties": {
        "logprobs": {"enum": [False, None]},
        "grammar": {"type": "null"},
        "response_format": {
            "anyOf": [
                {"type": "null"},
                {"type": "object", "properties": {"type": {"enum": ["text", None]}}},
            ]
        },
    }
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
_TOOL_CHOICE = {
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
_FUNCTIONS = {"anyOf": [{"type": "array", "minItems": 1, "items": _FUNCTION}, {"type": "null"}]}
_FUNCTION_CALL = {
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

ResponseFormat = Annotated[dict[str, Any] | None, WithJsonSchema(RESPONSE_FORMAT_SCHEMA)]


class ChatRequest(_Common, CreateChatCompletionRequest):  # type: ignore[misc]
    model_config = ConfigDict(json_schema_extra={"allOf": CHAT_BETWEEN_FIELDS})  # type: ignore[dict-item]

    messages: Annotated[  # type: ignore[assignment]
        list[dict[str, Any]],
        Field(min_length=1),
        WithJsonSchema({"type": "array", "minItems": 1, "items": MESSAGE_SCHEMA}),
    ]
    response_format: ResponseFormat = None  # type: ignore[assignment]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    # Validated by llmkit.tools.request, which names the wrong parameter exactly.
    tools: Annotated[
        list[Any] | None, WithJsonSchema({"anyOf": [TOOLS_SCHEMA, {"type": "null"}]})
    ] = None  # type: ignore[assignment]
    tool_choice: Annotated[Any, WithJsonSchema(_TOOL_CHOICE)] = None
    functions: Annotated[list[Any] | None, WithJsonSchema(_FUNCTIONS)] = None  # type: ignore[assignment]
    function_call: Annotated[Any, WithJsonSchema(_FUNCTION_CALL)] = None
    parallel_tool_calls: Annotated[Any, WithJsonSchema({"type": ["boolean", "null"]})] = None


def tools_of(body: ChatRequest) -> ToolRequest | None:
    """The request's tools and what tool_choice demands; None when no tool is offered."""
    return tool_request(
        body.tools, body.tool_choice, body.functions, body.function_call, body.parallel_tool_calls
    )


# best_of may only say what n says: 1, or n itself (JSON Schema compares no two values: one
# branch per n).
_BEST_OF = [
    {"properties": {"best_of": {"enum": [None, 1]}}},
    *(
        {"required": ["n", "best_of"], "properties": {"n": {"const": n}, "best_of": {"const": n}}}
        for n in range(2, MAX_N + 1)
    ),
]


class CompletionRequest(_Common, CreateCompletionRequest):  # type: ignore[misc]
    model_config = ConfigDict(json_schema_extra={"anyOf": _BEST_OF})  # type: ignore[dict-item]

    prompt: str | list[str] | list[TokenId] | list[TokenIds] = ""  # type: ignore[assignment]
    # Alternatives per token, as the OpenAI API's legacy completions (at most 5).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    # n choices, each its own: best_of may only say the same (1 or n; _BEST_OF, and in code).
    best_of: int | None = Field(default=1, ge=1, le=MAX_N)
    # Fill-in-the-middle is not supported: no suffix, or an empty one.
    suffix: str | None = Field(default=None, max_length=0)


_TEXT = {"type": "string", "minLength": 1}
_EMBEDDING_TOKEN = {"type": "integer", "minimum": 0, EMBEDDING_TOKEN_ID: True}


class TokenizeRequest(Body):
    """The body of POST /extras/tokenize and /extras/tokenize/count."""

    model: str | None = None
    input: str


class DetokenizeRequest(Body):
    """The body of POST /extras/detokenize: token ids of the served model's vocabulary."""

    model: str | None = None
    tokens: list[TokenId]


class EmbeddingRequest(Body):
    """The body of POST /v1/embeddings; a field the route does not know is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    # A list of token ids is one input (as OpenAI reads it), a list of lists several; checked
    # in inputs(), so that a wrong one is a 400 naming "input".
    input: Annotated[
        Any,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _TEXT},
                    {"type": "array", "minItems": 1, "items": _EMBEDDING_TOKEN},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_INPUTS,
                        "items": {"type": "array", "minItems": 1, "items": _EMBEDDING_TOKEN},
                    },
                ]
            }
        ),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    # At most the model's embedding size (checked by the embedder, stated in the schema).
    dimensions: int | None = Field(default=None, ge=1, json_schema_extra={EMBEDDING_SIZE: True})
    user: str | None = None  # OpenAI's end-user id: accepted, changes nothing

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or of token-id lists; a malformed or empty one refused."""
        raw = self.input
        if isinstance(raw, str):
            return [raw]
        if not isinstance(raw, list):
            raise BadRequest(
                "input must be a string, a list of strings, a list of token ids or a list of "
                "lists of token ids",
                param="input",
            )
        if not raw:
            raise BadRequest("input is an empty list: give at least one input", param="input")
        if _token_ids(raw):
            return [list(raw)]
        if len(raw) > MAX_INPUTS:
            raise BadRequest(f"input takes at most {MAX_INPUTS} items", param="input")
        if all(isinstance(item, str) for item in raw):
            return list(raw)
        if all(_token_ids(item) for item in raw):
            return [list(item) for item in raw]
        raise BadRequest(
            "input must be a string, a list of strings, a list of token ids or a list of lists "
            "of token ids",
            param="input",
        )


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten text-part lists into strings, as chat templates expect."""
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequest(
                f"messages[{i}].role must be one of {sorted(_ROLES)}, not {role!r}",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise BadRequest(
                        f"messages[{i}] has a {kind!r} part; this model takes text only",
                        param=f"messages[{i}].content",
                    )
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise BadRequest(
                        f"messages[{i}].content's text must be a string",
                        param=f"messages[{i}].content",
                    )
                texts.append(text)
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of text parts",
                param=f"messages[{i}].content",
            )
        elif content is None and role != "assistant":
            raise BadRequest(f"messages[{i}].content is missing", param=f"messages[{i}].content")
        if role == "assistant":
            _check_calls(message, i, content is None)
        out.append(
            {**message, "role": "system" if role == "developer" else role, "content": content}
        )
    return out


def _check_calls(message: dict[str, Any], i: int, no_content: bool) -> None:
    """An assistant message's calls as the templates read them: `tool_calls` a list of calls
    whose function has a name, `function_call` one such function; without content, one of them."""
    calls, call = message.get("tool_calls"), message.get("function_call")
    if calls is not None:
        if not isinstance(calls, list):
            raise BadRequest(
                f"messages[{i}].tool_calls must be a list", param=f"messages[{i}].tool_calls"
            )
        for k, c in enumerate(calls):
            _check_function(
                c.get("function") if isinstance(c, dict) else None,
                f"messages[{i}].tool_calls[{k}].function",
            )
    if call is not None:
        _check_function(call, f"messages[{i}].function_call")
    if no_content and not calls and call is None:
        raise BadRequest(
            f"messages[{i}] has neither content nor tool_calls", param=f"messages[{i}].content"
        )


def _check_function(function: Any, where: str) -> None:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where} must be an object with a name", param=where)
    if not isinstance(function.get("arguments", ""), (str, dict)):
        raise BadRequest(
            f"{where}.arguments must be a JSON string or object", param=f"{where}.arguments"
        )


def seeds_for(seed: int | None, n: int) -> list[int]:
    """One seed per choice: the caller's seed (then seed+1, ...) or fresh random ones."""
    if seed is None:
        return [secrets.randbits(32) for _ in range(n)]
    return [(seed + i) % 2**32 for i in range(n)]


def _refuse_unsupported(body: ChatRequest | CompletionRequest) -> None:
    best_of = getattr(body, "best_of", None)
    if best_of not in (None, 1, body.n):
        raise BadRequest("best_of is not supported (ask for n choices instead)", param="best_of")
    if isinstance(body.stop, list) and len(body.stop) > MAX_STOP:
        raise BadRequest(f"stop takes at most {MAX_STOP} sequences", param="stop")
    if getattr(body, "suffix", None):
        raise BadRequest("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.logit_bias and body.logit_bias_type not in (None, "input_ids"):
        raise BadRequest("logit_bias keys must be token ids", param="logit_bias_type")


def _logit_bias(raw: dict[str, float] | None, n_vocab: int) -> dict[int, float]:
    out = {}
    for key, bias in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise BadRequest(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token < n_vocab:
            raise BadRequest(f"logit_bias token {token} is not in the vocabulary", "logit_bias")
        out[token] = float(bias)
    return out


def chat_logprobs(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """How many alternatives chat's logprobs list per token; None when not asked."""
    if top_logprobs is not None:
        if not logprobs:
            raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        if not 0 <= top_logprobs <= MAX_TOP:
            raise BadRequest(f"top_logprobs must be 0 to {MAX_TOP}", param="top_logprobs")
    return (top_logprobs or 0) if logprobs else None


def completion_logprobs(logprobs: int | None) -> int | None:
    """Completions' legacy `logprobs: N`: N alternatives per token (OpenAI allows at most 5)."""
    if logprobs is not None and not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
        raise BadRequest(
            f"logprobs must be 0 to {MAX_COMPLETION_LOGPROBS} for completions", param="logprobs"
        )
    return logprobs


def _refuse_beside_tools(body: ChatRequest) -> None:
    """What a tool request cannot be combined with (its grammar is the tools')."""
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise BadRequest("response_format cannot be combined with tools", param="response_format")
    if body.grammar is not None:
        raise BadRequest("grammar cannot be combined with tools", param="grammar")
    if body.logprobs:
        raise BadRequest("logprobs are not supported with tools", param="logprobs")


def choices_for(
    body: ChatRequest | CompletionRequest,
    llama: llama_cpp.Llama,
    template: ChatTemplate | None = None,
    tools: ToolRequest | None = None,
) -> tuple[list[Choice], list[str]]:
    """The engine's choices for this request, and the text each one's answer begins with.

    `tools` (from tools_of) are offered through `template`, the served model's chat template."""
    _refuse_unsupported(body)
    if isinstance(body, ChatRequest):
        messages = normalize_messages(body.messages)
        template = template or ChatTemplate(None)
        prompt = tool_prompt(llama, template, messages, tools)
        prompts = [prompt or chat_prompt(llama, messages)]
        texts = [""]
        max_tokens = body.max_completion_tokens or body.max_tokens
        grammar: str | None
        if tools is not None:
            _refuse_beside_tools(body)
            grammar = calls_grammar(tool_family(template), tools)
        else:
            grammar = grammar_for(body.response_format, body.grammar)
        top = chat_logprobs(body.logprobs, body.top_logprobs)
        prompt_logprobs = False
    else:
        prompts, texts = completion_prompts(body.prompt, llama, echo=body.echo)
        max_tokens = body.max_tokens
        grammar = grammar_for(None, body.grammar)
        top = completion_logprobs(body.logprobs)
        prompt_logprobs = body.echo and top is not None
    user_stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    bias = _logit_bias(body.logit_bias, llama.n_vocab())
    choices = []
    for p, prompt in enumerate(prompts):
        if not prompt.tokens:
            raise BadRequest(
                "the prompt is empty, and this model has no BOS token to begin with", param="prompt"
            )
        for i, seed in enumerate(seeds_for(body.seed, body.n)):
            params = SamplingParams(
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                min_p=body.min_p,
                repeat_penalty=body.repeat_penalty,
                presence_penalty=body.presence_penalty or 0.0,
                frequency_penalty=body.frequency_penalty or 0.0,
                mirostat_mode=body.mirostat_mode,
                mirostat_tau=body.mirostat_tau,
                mirostat_eta=body.mirostat_eta,
                seed=seed,
                logit_bias=bias,
                grammar=grammar,
                min_tokens=NEVER if body.ignore_eos else body.min_tokens,
                logprobs=top,
                prompt_logprobs=prompt_logprobs,
                max_tokens=max_tokens,
                stop=user_stop + prompt.stop,
                speculation=body.speculation,
            )
            choices.append(
                Choice(prompt.tokens, params, index=p * body.n + i, counts_prompt=i == 0)
            )
    return choices, [texts[c.index // body.n] for c in choices]
