"""OpenAI request bodies: validated, then turned into the engine's choices (one per prompt × n).

Whatever the engine cannot honour is a 400 that says so, never silently ignored.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import llama_cpp
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

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
NEVER = 2**62  # a min_tokens no generation reaches: the end-of-generation tokens stay banned


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
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
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(_Common, CreateChatCompletionRequest):  # type: ignore[misc]
    messages: list[dict[str, Any]] = Field(min_length=1)  # type: ignore[assignment]
    response_format: dict[str, Any] | None = None  # type: ignore[assignment]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Validated by llmkit.tools.request, which names the wrong parameter exactly.
    tools: list[Any] | None = None  # type: ignore[assignment]
    tool_choice: Any = None
    functions: list[Any] | None = None  # type: ignore[assignment]
    function_call: Any = None
    parallel_tool_calls: Any = None


def tools_of(body: ChatRequest) -> ToolRequest | None:
    """The request's tools and what tool_choice demands; None when no tool is offered."""
    return tool_request(
        body.tools, body.tool_choice, body.functions, body.function_call, body.parallel_tool_calls
    )


class CompletionRequest(_Common, CreateCompletionRequest):  # type: ignore[misc]
    prompt: str | list[str] | list[int] | list[list[int]] = ""  # type: ignore[assignment]


class EmbeddingRequest(BaseModel):
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
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "array", "items": {"type": "integer"}},
                    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                ]
            }
        ),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
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


_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


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
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of text parts",
                param=f"messages[{i}].content",
            )
        elif content is None and role != "assistant":
            raise BadRequest(f"messages[{i}].content is missing", param=f"messages[{i}].content")
        out.append(
            {**message, "role": "system" if role == "developer" else role, "content": content}
        )
    return out


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
        out[token] = max(-100.0, min(100.0, float(bias)))
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
        legacy = body.functions is not None
        prompt = tool_prompt(llama, template, messages, tools, legacy)
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
            raise BadRequest("the prompt is empty", param="prompt")
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
