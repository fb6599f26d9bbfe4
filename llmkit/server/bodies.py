"""The request bodies of every route, side by side: pydantic models that validate as their JSON
schema reads (llmkit.server.schemas holds the fragments, /openapi.json shows them).

Whatever the server cannot honour is a 400 that says so, never silently ignored: a field is
either validated here, checked in code (llmkit.server.choices, llmkit.server.responses), or
refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from llmkit.embeddings import MAX_INPUTS
from llmkit.errors import BadRequest
from llmkit.logprobs import MAX_TOP
from llmkit.server.schemas import (
    BEST_OF_SCHEMA,
    CHAT_BETWEEN_FIELDS,
    CHAT_TOOL_CHOICE,
    CHAT_TOOLS_SCHEMA,
    EMBEDDING_INPUT_SCHEMA,
    EMBEDDING_SIZE,
    FUNCTION_CALL_SCHEMA,
    FUNCTIONS_SCHEMA,
    LOGIT_BIAS_SCHEMA,
    MAX_BIAS,
    MAX_COMPLETION_LOGPROBS,
    MAX_N,
    MAX_PROMPTS,
    MAX_REPEAT_PENALTY,
    MAX_STOP,
    MAX_TOP_K,
    MESSAGE_SCHEMA,
    MESSAGES_BETWEEN_FIELDS,
    MESSAGES_CACHE_CONTROL,
    MESSAGES_SCHEMA,
    MESSAGES_SYSTEM_SCHEMA,
    MESSAGES_THINKING,
    MESSAGES_TOOL_CHOICE,
    MESSAGES_TOOLS_SCHEMA,
    RESPONSE_FORMAT_SCHEMA,
    RESPONSES_INPUT_SCHEMA,
    RESPONSES_TOOL_CHOICE,
    RESPONSES_TOOLS_SCHEMA,
    TEXT_FORMAT_SCHEMA,
    TOKEN_ID,
    TOKEN_KEY,
)

TokenId = Annotated[int, Field(ge=0, json_schema_extra={TOKEN_ID: True})]
LogitBias = Annotated[
    dict[
        Annotated[str, Field(pattern=TOKEN_KEY)],
        Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)],
    ],
    WithJsonSchema(LOGIT_BIAS_SCHEMA),
]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)]


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


# What llmkit.durations reads: seconds, or numbers with units (5m, 1h30m, 250ms), maybe negative.
KEEP_ALIVE_PATTERN = (
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ms|s|m|h|d))+)$"
)
# Ollama's keep_alive: how long the model stays loaded once this request is done (seconds, or a
# duration such as "5m"; 0: unload then; negative: keep it loaded).
KeepAlive = Annotated[
    float | str | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": KEEP_ALIVE_PATTERN},
                {"type": "null"},
            ]
        }
    ),
]


class StreamOptions(Body):
    """chat and completions' stream_options."""

    include_usage: bool = False


class _Common(Body):
    # The OpenAI API's ranges, which llama_cpp.server does not check.
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0, le=MAX_TOP_K)
    # No repeat penalty unless asked, as the OpenAI API and llama-server (llama_cpp.server: 1.1).
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=MAX_REPEAT_PENALTY)
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
    # vLLM's: a cached prompt serves only requests with the same salt (per client, per user), so
    # that no one learns from `cached_tokens` what another client sent.
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)
    keep_alive: KeepAlive = None


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
        list[Any] | None, WithJsonSchema({"anyOf": [CHAT_TOOLS_SCHEMA, {"type": "null"}]})
    ] = None  # type: ignore[assignment]
    tool_choice: Annotated[Any, WithJsonSchema(CHAT_TOOL_CHOICE)] = None
    functions: Annotated[list[Any] | None, WithJsonSchema(FUNCTIONS_SCHEMA)] = None  # type: ignore[assignment]
    function_call: Annotated[Any, WithJsonSchema(FUNCTION_CALL_SCHEMA)] = None
    parallel_tool_calls: Annotated[Any, WithJsonSchema({"type": ["boolean", "null"]})] = None


class CompletionRequest(_Common, CreateCompletionRequest):  # type: ignore[misc]
    model_config = ConfigDict(json_schema_extra={"anyOf": BEST_OF_SCHEMA})  # type: ignore[dict-item]

    # Several prompts, each × n: a bounded list (the engine bounds prompts × n by its capacity).
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
        | list[TokenId]
        | Annotated[list[TokenIds], Field(max_length=MAX_PROMPTS)]
    ) = ""  # type: ignore[assignment]
    # Alternatives per token, as the OpenAI API's legacy completions (at most 5).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    # n choices, each its own: best_of may only say the same (1 or n; BEST_OF_SCHEMA, and in code).
    best_of: int | None = Field(default=1, ge=1, le=MAX_N)
    # Fill-in-the-middle is not supported: no suffix, or an empty one.
    suffix: str | None = Field(default=None, max_length=0)


class LoadRequest(Body):
    """The body of POST /v1/models/{id}/load (optional): how long it stays once idle."""

    keep_alive: KeepAlive = None


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
    input: Annotated[Any, WithJsonSchema(EMBEDDING_INPUT_SCHEMA)]
    encoding_format: Literal["float", "base64"] = "float"
    # At most the model's embedding size (checked by the embedder, stated in the schema).
    dimensions: int | None = Field(default=None, ge=1, json_schema_extra={EMBEDDING_SIZE: True})
    user: str | None = None  # OpenAI's end-user id: accepted, changes nothing
    keep_alive: KeepAlive = None

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


# -- the Responses API ---------------------------------------------------------------------------


def only(*values: Any) -> Any:
    """A field's schema that admits only `values` (and null): what this server can honour of a
    field it otherwise refuses by name, with a reason, in refuse_unsupported."""
    return WithJsonSchema({"enum": [*values, None]})


# Unknown fields are kept so that each is refused by name (with a hint), in code; the schema
# says they are refused.
_REFUSED_BY_NAME = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})


class ResponsesStreamOptions(Body):
    """The Responses API's stream_options."""

    include_obfuscation: Annotated[bool | None, only(False)] = None


class TextConfig(Body):
    model_config = _REFUSED_BY_NAME  # refused by name in response_format_for

    format: Annotated[dict[str, Any] | None, WithJsonSchema(TEXT_FORMAT_SCHEMA)] = None
    verbosity: Annotated[str | None, only("medium")] = None


class ResponsesRequest(Body):
    """The body of POST /v1/responses: the fields this server honours or knowingly refuses."""

    # Between the fields, what JSON Schema can say: a tool_choice but none needs tools offered
    # (that it names one of them is checked in code only).
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "additionalProperties": False,
            "if": {
                "required": ["tool_choice"],
                "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}},
            },
            "then": {
                "required": ["tools"],
                "properties": {"tools": {"type": "array", "minItems": 1}},
            },
        },
    )

    model: str | None = None
    keep_alive: KeepAlive = None
    input: Annotated[str | list[dict[str, Any]], WithJsonSchema(RESPONSES_INPUT_SCHEMA)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Unset, the chat route's defaults apply (as they do for the same model there).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    text: TextConfig | None = None
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    # Function tools, as llmkit.tools enforces them for chat completions.
    tools: Annotated[
        list[Any] | None, WithJsonSchema({"anyOf": [RESPONSES_TOOLS_SCHEMA, {"type": "null"}]})
    ] = None
    tool_choice: Annotated[str | dict[str, Any] | None, WithJsonSchema(RESPONSES_TOOL_CHOICE)] = (
        None
    )
    parallel_tool_calls: bool | None = None
    # Accepted only with the values that mean "nothing stored": refused otherwise.
    store: Annotated[bool | None, only(False)] = None
    background: Annotated[bool | None, only(False)] = None
    previous_response_id: Annotated[str | None, only("")] = None
    conversation: Annotated[Any, WithJsonSchema({"type": "null"})] = None
    include: Annotated[
        list[str] | None,
        WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}),
    ] = None
    truncation: Annotated[Literal["auto", "disabled"] | None, only("disabled")] = None
    # Labels that change nothing about the answer: echoed back.
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # llmkit finds the longest cached prefix by itself
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)  # as chat's
    # llmkit's own sampling options, as /v1/chat/completions takes them.
    seed: int | None = None
    stop: Stop | None = None
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=MAX_REPEAT_PENALTY)
    min_tokens: int | None = Field(default=None, ge=0)


# -- Anthropic's Messages API --------------------------------------------------------------------


class MessagesPrompt(Body):
    """The body of POST /v1/messages/count_tokens: what the prompt is made of."""

    model_config = ConfigDict(
        extra="allow",  # refused by name, in code (llmkit.server.messages)
        json_schema_extra={"additionalProperties": False, **MESSAGES_BETWEEN_FIELDS},
    )

    # With one model served, any name reaches it, as on the OpenAI routes.
    model: str | None = None
    keep_alive: KeepAlive = None
    # Their blocks are checked in code (to_chat), which names the wrong one exactly.
    messages: Annotated[list[Any], Field(min_length=1), WithJsonSchema(MESSAGES_SCHEMA)]
    system: Annotated[str | list[Any] | None, WithJsonSchema(MESSAGES_SYSTEM_SCHEMA)] = None
    tools: Annotated[
        list[Any] | None, WithJsonSchema({"anyOf": [MESSAGES_TOOLS_SCHEMA, {"type": "null"}]})
    ] = None
    tool_choice: Annotated[dict[str, Any] | None, WithJsonSchema(MESSAGES_TOOL_CHOICE)] = None
    thinking: Annotated[dict[str, Any] | None, WithJsonSchema(MESSAGES_THINKING)] = None
    # Automatic prompt caching: accepted, changes nothing (llmkit reuses cached prefixes anyway).
    cache_control: Annotated[dict[str, Any] | None, WithJsonSchema(MESSAGES_CACHE_CONTROL)] = None


class MessagesRequest(MessagesPrompt):
    """The body of POST /v1/messages: the prompt, and how to answer it."""

    max_tokens: int = Field(ge=1)  # required, as Anthropic requires it
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP)
    # Anthropic's range (its temperature is at most 1). Unset, the chat route's defaults apply.
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None  # a label (user_id): accepted, changes nothing
