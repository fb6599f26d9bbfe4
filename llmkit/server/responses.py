"""POST /v1/responses: OpenAI's Responses API, stateless, on the engine /v1/chat/completions uses.

A Responses request becomes a ChatRequest (`instructions` a system message first, `input` the
messages, `max_output_tokens` the token limit, `text.format` the response_format, the flat
function `tools` chat's nested ones), so prompts, sampling, grammars, tool calling (llmkit.tools:
the same validation, rendering, grammar and parser) and the engine are exactly the chat route's.
The answer is output items in the shapes the openai SDK parses (an assistant message, and a
`function_call` item for each call), and a stream is the SDK's event sequence.

Nothing is stored. What needs a response kept on the server (`previous_response_id`,
`store: true`, `background`, `conversation`, item references) and what this server does not do
(hosted tools, reasoning, images and files, logprobs) is a 400 naming the parameter, never
ignored; so is any field this route does not know.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from llmkit.engine import Choice
from llmkit.errors import BadRequest
from llmkit.server.bodies import ChatRequest, ResponsesRequest, TextConfig
from llmkit.server.choices import choices_for, tools_of
from llmkit.server.errors import openai_error
from llmkit.server.load import Served
from llmkit.server.registry import registry_of
from llmkit.server.respond import respond
from llmkit.server.response_events import ResponsesShaper
from llmkit.server.schemas import RESPONSES_ROLES, RESPONSES_TEXT_PARTS
from llmkit.tools.request import MAX_TOOLS, ToolRequest


async def create(request: Request, body: ResponsesRequest) -> Any:
    """POST /v1/responses: run one Responses request as the chat completion it translates to."""
    chat = to_chat(body)
    registry = registry_of(request)
    served = await registry.acquire(request, chat.model, body.keep_alive)
    # The tools' schemas, the template and the tokens: off the event loop, as for chat.
    tools, found = await served.work(choices, chat, served)
    family = served.family if tools else None
    shaper = ResponsesShaper(body, chat, registry.reply_name(body.model, served), tools, family)
    return await respond(request, served, found, shaper, body.stream)


async def stored(response_id: str) -> Any:
    """GET or DELETE /v1/responses/{id}: a clear 404, as this server keeps no response."""
    return openai_error(
        404,
        f"no response {response_id!r}: this server stores no responses",
        code="response_not_found",
    )


async def stored_part(response_id: str, part: str) -> Any:
    """/v1/responses/{id}/cancel and /input_items: the same 404."""
    return await stored(response_id)


# Why a field that would need state or a feature this server lacks is refused.
_STATELESS = "this server stores no responses; send the whole conversation in `input`"
_HINTS = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
}
_EXTENSIONS = ("seed", "stop", "top_k", "min_p", "repeat_penalty", "min_tokens", "cache_salt")


def to_chat(body: ResponsesRequest) -> ChatRequest:
    """The chat completion request that computes this response; a BadRequest for what can't be
    (but for its tools, which tools_for validates)."""
    refuse_unsupported(body)
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages_for(body),
        "max_completion_tokens": body.max_output_tokens,
        "response_format": response_format_for(body.text),
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    for name in ("temperature", "top_p", *_EXTENSIONS):
        if getattr(body, name) is not None:
            fields[name] = getattr(body, name)
    return ChatRequest(**fields)


def refuse_unsupported(body: ResponsesRequest) -> None:
    """A 400 for every field set to something this server would otherwise have to ignore."""
    if body.previous_response_id:
        raise BadRequest(
            f"previous_response_id is not supported: {_STATELESS}", "previous_response_id"
        )
    if body.store:
        raise BadRequest(
            "store=true is not supported: this server stores no responses (leave store unset or false)",
            "store",
        )
    if body.background:
        raise BadRequest(
            "background responses are not supported: this server stores no responses", "background"
        )
    if body.conversation is not None:
        raise BadRequest(f"conversation is not supported: {_STATELESS}", "conversation")
    if body.include:
        raise BadRequest(
            f"include: this server has nothing more to include ({body.include[0]!r})", "include"
        )
    if body.truncation == "auto":
        raise BadRequest(
            "truncation=auto is not supported: an input longer than the context is a 400",
            "truncation",
        )
    if body.stream_options and body.stream_options.include_obfuscation:
        raise BadRequest(
            "stream_options.include_obfuscation is not supported (leave it unset or false)",
            "stream_options.include_obfuscation",
        )
    for name in body.model_extra or {}:
        hint = f" (use {_HINTS[name]})" if name in _HINTS else ""
        raise BadRequest(f"{name} is not supported by this server's /v1/responses{hint}", name)


# The Responses API's function tool, flat: chat's has name, description and parameters nested
# under `function`. `strict` or not, the grammar enforces the schema: never looser than asked.
_FUNCTION_KEYS = ("type", "name", "description", "parameters", "strict")


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """The function tools in chat's shape, for llmkit.tools to validate (None: none offered).

    An empty list offers nothing, as the OpenAI API takes it."""
    if not tools:
        return None
    if len(tools) > MAX_TOOLS:
        raise BadRequest(f"tools takes at most {MAX_TOOLS} tools", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object", where)
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(
                f"{where} has type {kind!r}: this server calls function tools only "
                "(no hosted tools: web_search, file_search, computer, mcp, …)",
                f"{where}.type",
            )
        if "function" in tool:
            raise BadRequest(
                f"{where}.function: the Responses API's function tools are flat "
                "({type: function, name, description, parameters}), not chat's",
                f"{where}.function",
            )
        for key, value in tool.items():
            if key not in _FUNCTION_KEYS and value is not None:
                raise BadRequest(f"{where}.{key} is not supported by this server", f"{where}.{key}")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise BadRequest(f"{where}.strict must be a boolean", f"{where}.strict")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        if function.get("parameters") is None:  # the SDK's FunctionTool: no parameters
            function.pop("parameters", None)
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    """`tool_choice` in chat's shape: the strings as they are, a named function nested."""
    if not isinstance(choice, dict):
        return choice  # "auto", "none", "required" or None; llmkit.tools refuses the rest
    kind = choice.get("type")
    if kind == "allowed_tools":
        raise BadRequest(
            "tool_choice allowed_tools is not supported: offer only those tools in `tools`",
            "tool_choice",
        )
    if kind != "function":
        raise BadRequest(
            f"tool_choice has type {kind!r}: this server calls function tools only", "tool_choice"
        )
    name = choice.get("name")
    if not isinstance(name, str):
        raise BadRequest("tool_choice must name a function: {type: function, name}", "tool_choice")
    return {"type": "function", "function": {"name": name}}


def tools_for(chat: ChatRequest) -> ToolRequest | None:
    """The tool request llmkit.tools makes of the chat request, its errors in this route's names."""
    try:
        return tools_of(chat)
    except BadRequest as exc:
        raise _renamed(exc) from None


_ITEM_HINTS = {
    "item_reference": f"item references need stored items: {_STATELESS}",
    "reasoning": "reasoning items are not supported by this server",
}


def messages_for(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages: instructions first, as a system message;
    calls passed back as an assistant message's tool_calls, their outputs as role tool."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    if not body.input:
        raise BadRequest("input must be a string or a non-empty list of messages", "input")
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")  # {"role", "content"} alone is a message
        if kind == "function_call":
            call = _call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the same turn: text, calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            continue
        if kind != "message":
            reason = _ITEM_HINTS.get(str(kind), "this server takes message and function call items")
            raise BadRequest(f"{where} has type {kind!r}: {reason}", where)
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            raise BadRequest(
                f"{where}.role must be one of {list(RESPONSES_ROLES)}, not {role!r}",
                f"{where}.role",
            )
        messages.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    return messages


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    return value


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A function_call item passed back, as chat's assistant tool call."""
    function = {"name": _string(item, "name", where), "arguments": item.get("arguments")}
    if not isinstance(function["arguments"], str):
        raise BadRequest(f"{where}.arguments must be a JSON string", f"{where}.arguments")
    return {"id": _string(item, "call_id", where), "type": "function", "function": function}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of input_text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind not in RESPONSES_TEXT_PARTS:
            raise BadRequest(
                f"{where}[{j}] has type {kind!r}: this model takes text only", f"{where}[{j}]"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
        texts.append(text)
    return "".join(texts)


def response_format_for(text: TextConfig | None) -> dict[str, Any] | None:
    """`text.format` as the chat route's response_format (None for free text)."""
    if text is None:
        return None
    for name in text.model_extra or {}:
        raise BadRequest(f"text.{name} is not supported by this server", f"text.{name}")
    if text.verbosity not in (None, "medium"):  # medium is the default: no instruction at all
        raise BadRequest("text.verbosity is not supported by this server", "text.verbosity")
    spec = {"type": "text"} if text.format is None else text.format  # {} has no type: refused
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest(
                "text.format.schema must be a JSON schema object", "text.format.schema"
            )
        # strict or not, the schema is enforced by the grammar: never looser than asked.
        named = {"name": spec.get("name"), "schema": schema, "strict": spec.get("strict")}
        return {"type": "json_schema", "json_schema": named}
    raise BadRequest(
        f"text.format.type must be text, json_object or json_schema, not {kind!r}",
        "text.format.type",
    )


def choices(chat: ChatRequest, served: Served) -> tuple[ToolRequest | None, list[Choice]]:
    """The tool request and choices_for's choices, with errors naming this route's parameters
    instead of the chat route's."""
    tools = tools_for(chat)
    try:
        return tools, choices_for(chat, served, tools)[0]
    except BadRequest as exc:
        raise _renamed(exc) from None


_NESTED = re.compile(r"(tools\[\d+\])\.function\b")  # chat's tools[i].function.name: tools[i].name


def _renamed(exc: BadRequest) -> BadRequest:
    """A chat route's BadRequest as this route names the parameters."""
    message, param = str(exc), exc.param or ""
    if param == "response_format":
        message, param = message.replace("response_format", "text.format", 1), "text.format"
    elif param.startswith(("messages", "prompt")):
        param = "input"
    elif param.startswith("tools"):
        message, param = _NESTED.sub(r"\1", message), _NESTED.sub(r"\1", param)
    return BadRequest(message, param or None)
