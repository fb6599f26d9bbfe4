"""A request body turned into the engine's choices: its prompt rendered and tokenized, its sampling
parameters checked and built, one choice per prompt × n.

Whatever the engine cannot honour is a 400 that says so, never silently ignored.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from llmkit.engine import Choice
from llmkit.errors import BadRequest
from llmkit.grammar import format_schema, grammar_for, schema_grammar
from llmkit.logprobs import MAX_TOP
from llmkit.prompts import chat_prompt, completion_prompts
from llmkit.sampling import SamplingParams
from llmkit.server.bodies import ChatRequest, CompletionRequest
from llmkit.server.load import Served
from llmkit.server.schemas import CHAT_ROLES, MAX_COMPLETION_LOGPROBS, MAX_STOP
from llmkit.tools.constraint import calls_grammar
from llmkit.tools.render import tool_family, tool_prompt
from llmkit.tools.request import ToolRequest, tool_request

NEVER = 2**62  # a min_tokens no generation reaches: the end-of-generation tokens stay banned


def tools_of(body: ChatRequest) -> ToolRequest | None:
    """The request's tools and what tool_choice demands (and the format of content answered
    instead of calls); None when no tool is offered."""
    request = tool_request(
        body.tools, body.tool_choice, body.functions, body.function_call, body.parallel_tool_calls
    )
    schema = format_schema(body.response_format) if request is not None else None
    if request is None or schema is None:
        return request
    schema_grammar(schema)  # what llguidance cannot enforce, refused naming response_format
    return replace(request, content=schema)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten text-part lists into strings, as chat templates expect."""
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise BadRequest(
                f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}, not {role!r}",
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
    """What a tool request cannot be combined with: the grammar is the tools' (and the response
    format's, tools_of), and logprobs are not parsed into calls."""
    if body.grammar is not None:
        raise BadRequest("grammar cannot be combined with tools", param="grammar")
    if body.logprobs:
        raise BadRequest("logprobs are not supported with tools", param="logprobs")


def choices_for(
    body: ChatRequest | CompletionRequest, served: Served, tools: ToolRequest | None = None
) -> tuple[list[Choice], list[str]]:
    """The engine's choices for this request to the served model, and the text each one's
    answer begins with.

    `tools` (from tools_of) are offered through the model's chat template. A prompt's text
    longer than the model's context can hold is refused before it is tokenized."""
    _refuse_unsupported(body)
    llama, template, limit = served.llama, served.template, served.limit
    if isinstance(body, ChatRequest):
        messages = normalize_messages(body.messages)
        prompt = tool_prompt(llama, template, messages, tools, limit)
        prompts = [prompt or chat_prompt(llama, messages, limit)]
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
        prompts, texts = completion_prompts(body.prompt, llama, echo=body.echo, limit=limit)
        max_tokens = body.max_tokens
        grammar = grammar_for(None, body.grammar)
        top = completion_logprobs(body.logprobs)
        prompt_logprobs = body.echo and top is not None
        if prompt_logprobs and body.n > 1:
            # Each choice would compute the whole prompt again, with the logits of every token.
            raise BadRequest(
                "echo with logprobs takes n: 1 (the prompt's logprobs are the same in every "
                "choice; each would compute the whole prompt again)",
                param="n",
            )
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
                Choice(
                    prompt.tokens,
                    params,
                    index=p * body.n + i,
                    counts_prompt=i == 0,
                    cache_salt=(body.cache_salt or "").encode(),
                )
            )
    return choices, [texts[c.index // body.n] for c in choices]
