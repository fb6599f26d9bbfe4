"""The prompt of a chat request with tools: the model's own Jinja template, given the tools.

Native templates get `tools` and render assistant `tool_calls` and `role: tool` messages
themselves (arguments as objects, as they expect). Templates with no tool support (the generic
family) get a system instruction describing the tools and the JSON answer, and tool calls and
results written into the conversation as JSON text.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmkit.errors import BadRequest
from llmkit.prompts import TEMPLATE_ERRORS, Prompt, TextLimit, chat_prompt
from llmkit.tools.family import GENERIC, MISTRAL, Family, detect
from llmkit.tools.request import ToolRequest


@dataclass(frozen=True)
class ChatTemplate:
    """The served model's chat template (None: a llama_cpp chat format renders instead)."""

    text: str | None
    bos: str = ""
    eos: str = ""

    @property
    def family(self) -> Family:
        return detect(self.text)


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _mistral_id(call_id: str) -> str:
    """Mistral's templates take 9 letters and digits as a call id: other ids are mapped."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def native_messages(messages: list[dict[str, Any]], family: Family) -> list[dict[str, Any]]:
    """The messages as tool-aware templates read them."""
    names: dict[str, str] = {}
    out = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            fixed = []
            for call in calls:
                function = dict(call.get("function") or {})
                function["arguments"] = _arguments_object(function.get("arguments", {}))
                call_id = str(call.get("id", ""))
                names[call_id] = str(function.get("name", ""))
                if family is MISTRAL:
                    call_id = _mistral_id(call_id)
                fixed.append({**call, "id": call_id, "type": "function", "function": function})
            message["tool_calls"] = fixed
            message["content"] = message.get("content") or ""
        elif message["role"] == "tool":
            call_id = str(message.get("tool_call_id", ""))
            message.setdefault("name", names.get(call_id, ""))
            if family is MISTRAL:
                message["tool_call_id"] = _mistral_id(call_id)
        out.append(message)
    return out


def generic_instruction(request: ToolRequest) -> str:
    """The system text that tells a model without tool support how to call the tools."""
    tools = json.dumps([t.openai()["function"] for t in request.callable], indent=2)
    if request.mode == "auto" and request.content is not None:
        how = (
            'Respond in JSON: either {"tool_calls": [{"name": TOOL, "arguments": {...}}]} to '
            'call tools, or {"response": ANSWER} to answer directly, where ANSWER is JSON that '
            f"follows this schema:\n{json.dumps(request.content)}"
        )
    elif request.mode == "auto":
        how = (
            'Respond in JSON: either {"tool_calls": [{"name": TOOL, "arguments": {...}}]} to '
            'call tools, or {"response": "your answer"} to answer directly.'
        )
    else:
        how = 'Respond in JSON: {"tool_calls": [{"name": TOOL, "arguments": {...}}]}.'
    return f"You can call these tools:\n{tools}\n{how}"


def generic_messages(messages: list[dict[str, Any]], request: ToolRequest) -> list[dict[str, Any]]:
    """The messages for a template without tool support: calls and results as JSON text."""
    out: list[dict[str, Any]] = [{"role": "system", "content": generic_instruction(request)}]
    for message in messages:
        if message["role"] == "system":
            out[0] = {"role": "system", "content": f"{message['content']}\n\n{out[0]['content']}"}
        elif message["role"] == "assistant" and message.get("tool_calls"):
            calls = [
                {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": _arguments_object((c.get("function") or {}).get("arguments")),
                }
                for c in message["tool_calls"]
            ]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls})})
        elif message["role"] in ("tool", "function"):
            result = {
                "tool_response": {"id": message.get("tool_call_id"), "content": message["content"]}
            }
            out.append({"role": "user", "content": json.dumps(result)})
        else:
            out.append(message)
    return out


def legacy_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Legacy function_call / role function messages as tool_calls / role tool ones."""
    out = []
    for i, message in enumerate(messages):
        call = message.get("function_call")
        if message["role"] == "assistant" and isinstance(call, dict):
            message = {
                **message,
                "tool_calls": [{"id": f"call_{i}", "type": "function", "function": call}],
            }
            message.pop("function_call")
        elif message["role"] == "function":
            message = {
                "role": "tool",
                "tool_call_id": f"call_{i - 1}",
                "content": message["content"],
            }
        out.append(message)
    return out


@functools.lru_cache(maxsize=8)
def _formatter(template: ChatTemplate) -> Jinja2ChatFormatter:
    """The template compiled once (Jinja compiles to Python: milliseconds a request otherwise)."""
    assert template.text is not None
    return Jinja2ChatFormatter(template.text, template.eos, template.bos)


def render_native(
    template: ChatTemplate, messages: list[dict[str, Any]], request: ToolRequest
) -> tuple[str, list[str]]:
    """The prompt text a tool-aware template makes of these messages and tools, and its stop."""
    formatter = _formatter(template)
    try:
        result = formatter(
            messages=native_messages(messages, template.family),  # type: ignore[arg-type]
            tools=[t.openai() for t in request.tools],  # type: ignore[misc]
        )
    except TEMPLATE_ERRORS as exc:
        raise BadRequest(
            f"the model's chat template refused these messages: {exc}", param="messages"
        ) from None
    stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
    return result.prompt, [s for s in stop if s]


def tool_family(template: ChatTemplate) -> Family:
    return template.family if template.text else GENERIC


def _mentions_tools(messages: list[dict[str, Any]]) -> bool:
    return any(
        m["role"] in ("tool", "function") or m.get("tool_calls") or m.get("function_call")
        for m in messages
    )


def tool_prompt(
    llama: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    request: ToolRequest | None,
    limit: TextLimit | None = None,
) -> Prompt | None:
    """The prompt for a request that offers tools or whose messages hold calls; None otherwise
    (the ordinary chat prompt then). Refused before it is tokenized when longer than `limit`."""
    # Legacy calls and results are read as tool ones also where no functions are offered.
    messages = legacy_messages(messages)
    if request is None and not _mentions_tools(messages):
        return None
    family = tool_family(template)
    if family.native:
        offered = request or ToolRequest([], "auto")
        text, stop = render_native(template, messages, offered)
        raw = text.encode()
        if limit is not None:
            limit.check(raw, "messages")
        tokens = llama.tokenize(raw, add_bos=False, special=True)
        return Prompt(tokens, stop)
    if request is None:  # tools not offered: the calls and results as text all the same
        converted = generic_messages(messages, ToolRequest([], "auto"))[1:]
        system = [m for m in messages if m["role"] == "system"]
        converted = [m for m in converted if m["role"] != "system"]
        return chat_prompt(llama, system + converted, limit)
    return chat_prompt(llama, generic_messages(messages, request), limit)
