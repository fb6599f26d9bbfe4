"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, on the engine
/v1/chat/completions uses.

A Messages request becomes a ChatRequest (`system` a system message first, text blocks joined as
chat's text parts are, an assistant's `tool_use` blocks its tool_calls, `tool_result` blocks
role-tool messages; `tools` chat's function tools, `tool_choice` auto/any/tool/none chat's
auto/required/named/none, `disable_parallel_tool_use` parallel_tool_calls false), so prompts,
sampling, grammars, tool calling (llmkit.tools: the same validation, rendering, grammar and
parser) and the engine are exactly the chat route's. The answer (llmkit.server.message_events)
is a message of content blocks, or Anthropic's event stream.

What this server cannot honour exactly is a 400 naming the parameter, never ignored: image and
document blocks (no vision), thinking (no model here has a reasoning format), server tools (web
search, code execution, ...) and Anthropic-defined client tools (bash, text editor, computer),
a last assistant message (prefill), and any field this route does not know. `cache_control` is
accepted and changes nothing: llmkit reuses the longest cached prefix of every prompt by itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from llmkit.engine import Choice
from llmkit.errors import BadRequest
from llmkit.server.bodies import ChatRequest, MessagesPrompt, MessagesRequest
from llmkit.server.choices import choices_for, tools_of
from llmkit.server.load import Served
from llmkit.server.message_events import MessageShaper
from llmkit.server.registry import registry_of
from llmkit.server.respond import respond
from llmkit.tools.request import ToolRequest


async def create(request: Request, body: MessagesRequest) -> Any:
    """POST /v1/messages: run one Messages request as the chat completion it translates to."""
    chat = to_chat(body)
    registry = registry_of(request)
    served = await registry.acquire(request, chat.model, body.keep_alive)
    # The tools' schemas, the template and the tokens: off the event loop, as for chat.
    tools, found = await served.work(choices, chat, served)
    shaper = MessageShaper(
        registry.reply_name(body.model, served),
        len(found[0].prompt),
        body.max_tokens,
        body.stop_sequences or [],
        served.family if tools else None,
    )
    return await respond(request, served, found, shaper, body.stream)


async def count_tokens(request: Request, body: MessagesPrompt) -> dict[str, Any]:
    """POST /v1/messages/count_tokens: the prompt's length as /v1/messages would render it."""
    chat = to_chat(body)
    served = await registry_of(request).acquire(request, chat.model, body.keep_alive)
    _, found = await served.work(choices, chat, served)
    return {"input_tokens": len(found[0].prompt)}


_HINTS = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}


def to_chat(body: MessagesPrompt) -> ChatRequest:
    """The chat completion request that computes this message; a BadRequest for what can't be
    (but for its tools, which tools_for validates)."""
    refuse_unsupported(body)
    choice, parallel = chat_tool_choice(body.tool_choice)
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages_for(body),
        "tools": chat_tools(body.tools),
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
    }
    if isinstance(body, MessagesRequest):
        fields["max_completion_tokens"] = body.max_tokens
        fields["stop"] = body.stop_sequences
        for name in ("temperature", "top_p", "top_k"):
            if getattr(body, name) is not None:
                fields[name] = getattr(body, name)
    return ChatRequest(**fields)


def refuse_unsupported(body: MessagesPrompt) -> None:
    """A 400 for every field set to something this server would otherwise have to ignore."""
    thinking = body.thinking
    if thinking is not None and (thinking.get("type") != "disabled" or len(thinking) > 1):
        raise BadRequest(
            "thinking is not supported: the served model has no reasoning format "
            "(leave thinking unset, or {type: disabled})",
            "thinking",
        )
    for name in body.model_extra or {}:
        hint = f" (use {_HINTS[name]})" if name in _HINTS else ""
        raise BadRequest(f"{name} is not supported by this server's /v1/messages{hint}", name)


def _keys(block: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a key this server does not know (unless null: as good as absent)."""
    for key, value in block.items():
        if key not in known and value is not None:
            raise BadRequest(f"{where}.{key} is not supported by this server", f"{where}.{key}")


_TEXT_KEYS = ("type", "text", "cache_control")
_REFUSED_BLOCKS = {
    "image": "this model takes text only (no image blocks)",
    "document": "this model takes text only (no document blocks)",
    "thinking": "the served model has no reasoning format",
    "redacted_thinking": "the served model has no reasoning format",
    "server_tool_use": "this server runs no server tools",
    "web_search_tool_result": "this server runs no server tools",
}


def _refused(kind: Any, where: str, takes: str) -> BadRequest:
    reason = _REFUSED_BLOCKS.get(str(kind), f"this message takes {takes} blocks")
    return BadRequest(f"{where} has type {kind!r}: {reason}", where)


def _text(block: Any, where: str) -> str:
    """A text block's text (its other keys checked)."""
    if not isinstance(block, dict) or block.get("type") != "text":
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        raise _refused(kind, where, "text")
    _keys(block, _TEXT_KEYS, where)
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{where}.text must be a string", f"{where}.text")
    return text


def system_text(system: str | list[Any] | None) -> str | None:
    """`system` as one text: its blocks joined as chat's text parts are (nothing between)."""
    if system is None or isinstance(system, str):
        return system
    return "".join(_text(block, f"system[{j}]") for j, block in enumerate(system))


def messages_for(body: MessagesPrompt) -> list[dict[str, Any]]:
    """`system` and `messages` as chat messages: the system message first; an assistant's
    tool_use blocks its tool_calls; a user's tool_result blocks role-tool messages, in order."""
    out: list[dict[str, Any]] = []
    system = system_text(body.system)
    if system is not None:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with a role and content", where)
        _keys(message, ("role", "content"), where)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise BadRequest(
                f"{where}.role must be 'user' or 'assistant', not {role!r} "
                "(the system prompt is the top-level `system`)",
                f"{where}.role",
            )
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise BadRequest(
                f"{where}.content must be a string or a list of blocks", f"{where}.content"
            )
        elif role == "assistant":
            out.append(_assistant(content, f"{where}.content"))
        else:
            out.extend(_user(content, f"{where}.content"))
    last = body.messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        raise BadRequest(
            f"messages[{len(body.messages) - 1}]: the last message is the assistant's; "
            "continuing it (prefill) is not supported: end with the user's message",
            f"messages[{len(body.messages) - 1}]",
        )
    return out


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    """An assistant's blocks as one chat message: its text, then its calls."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        if isinstance(block, dict) and block.get("type") == "tool_use":
            _keys(block, ("type", "id", "name", "input", "cache_control"), here)
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            for key, value in (("id", call_id), ("name", name)):
                if not isinstance(value, str) or not value:
                    raise BadRequest(f"{here}.{key} must be a non-empty string", f"{here}.{key}")
            if not isinstance(arguments, dict):
                raise BadRequest(f"{here}.input must be an object", f"{here}.input")
            function = {"name": name, "arguments": json.dumps(arguments)}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif isinstance(block, dict) and block.get("type") == "text":
            texts.append(_text(block, here))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise _refused(kind, here, "text and tool_use")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return message


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """A user's blocks as chat messages, in order: its text, and a role-tool one per result."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]"
        if isinstance(block, dict) and block.get("type") == "tool_result":
            if texts:
                out.append({"role": "user", "content": "".join(texts)})
                texts = []
            out.append(_result(block, here))
        elif isinstance(block, dict) and block.get("type") == "text":
            texts.append(_text(block, here))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise _refused(kind, here, "text and tool_result")
    if texts or not out:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool_result block as chat's role-tool message."""
    _keys(block, ("type", "tool_use_id", "content", "is_error", "cache_control"), where)
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_use_id must be a non-empty string", f"{where}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(_text(part, f"{where}.content[{k}]") for k, part in enumerate(content))
    else:
        raise BadRequest(
            f"{where}.content must be a string or a list of text blocks", f"{where}.content"
        )
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise BadRequest(f"{where}.is_error must be a boolean", f"{where}.is_error")
    if is_error:  # chat templates have no error flag: the model reads it in the result
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """The client tools in chat's shape, for llmkit.tools to validate (None: none offered)."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object", where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(
                f"{where}.type is {kind!r}: this server calls client tools with an "
                "input_schema only (no server tools such as web search or code execution, "
                "and no Anthropic-defined tools such as bash or the text editor)",
                f"{where}.type",
            )
        _keys(tool, ("type", "name", "description", "input_schema", "cache_control"), where)
        if "input_schema" not in tool:
            raise BadRequest(f"{where}.input_schema is required", f"{where}.input_schema")
        function = {
            "name": tool.get("name"),
            "description": tool.get("description"),
            "parameters": tool["input_schema"],
        }
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    """`tool_choice` as chat's tool_choice and parallel_tool_calls."""
    if choice is None:
        return None, None
    kind = choice.get("type")
    known = {"auto": "auto", "any": "required", "tool": None, "none": "none"}
    if not isinstance(kind, str) or kind not in known:  # (a dict is no key: a 400, not a 500)
        raise BadRequest(
            f"tool_choice.type must be auto, any, tool or none, not {kind!r}", "tool_choice.type"
        )
    keys = ("type",) if kind == "none" else ("type", "disable_parallel_tool_use")
    _keys(choice, (*keys, "name") if kind == "tool" else keys, "tool_choice")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise BadRequest(
            "tool_choice.disable_parallel_tool_use must be a boolean",
            "tool_choice.disable_parallel_tool_use",
        )
    parallel = None if disable is None else not disable
    if kind != "tool":
        return known[kind], parallel
    name = choice.get("name")
    if not isinstance(name, str):
        raise BadRequest("tool_choice must name a tool: {type: tool, name}", "tool_choice.name")
    return {"type": "function", "function": {"name": name}}, parallel


def tools_for(chat: ChatRequest) -> ToolRequest | None:
    """The tool request llmkit.tools makes of the chat request, its errors in this route's names."""
    try:
        return tools_of(chat)
    except BadRequest as exc:
        raise _renamed(exc) from None


def choices(chat: ChatRequest, served: Served) -> tuple[ToolRequest | None, list[Choice]]:
    """The tool request and choices_for's choices, with errors naming this route's parameters
    instead of the chat route's (the tools' schemas compiled here: off the event loop)."""
    tools = tools_for(chat)
    try:
        return tools, choices_for(chat, served, tools)[0]
    except BadRequest as exc:
        raise _renamed(exc) from None


# chat's tools[i].function.name is tools[i].name here, its parameters tools[i].input_schema.
_NESTED = re.compile(r"(tools\[\d+\])\.function\.(\w+)")


def _nested(match: re.Match[str]) -> str:
    key = match.group(2)
    return f"{match.group(1)}.{'input_schema' if key == 'parameters' else key}"


def _renamed(exc: BadRequest) -> BadRequest:
    """A chat route's BadRequest as this route names the parameters."""
    message, param = str(exc), exc.param or ""
    if param.startswith(("messages", "prompt")):
        param = "messages"
    elif param == "stop":
        message, param = message.replace("stop", "stop_sequences", 1), "stop_sequences"
    elif param == "parallel_tool_calls":
        param = "tool_choice.disable_parallel_tool_use"
    elif param.startswith("tools"):
        message, param = _NESTED.sub(_nested, message), _NESTED.sub(_nested, param)
    return BadRequest(message, param or None)
