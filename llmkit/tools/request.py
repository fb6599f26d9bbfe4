"""What a chat request asks of tools: `tools`/`tool_choice`/`parallel_tool_calls`, or the legacy
`functions`/`function_call`, validated (a 400 naming the parameter for what is wrong)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llmkit.errors import BadRequest
from llmkit.grammar import schema_grammar

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# Tools per request, as the OpenAI API allows: each is a schema to compile and a grammar branch.
MAX_TOOLS = 128


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of an object

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's request has it (what chat templates iterate over)."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolRequest:
    """The tools offered and what `tool_choice` demands of the answer."""

    tools: list[Tool]
    mode: str  # "auto" (calls or text), "required" (at least one call) or "named"
    name: str | None = None  # the tool a named choice forces
    parallel: bool = True  # several calls allowed
    legacy: bool = False  # asked with functions/function_call: answered with message.function_call
    # The JSON schema content must satisfy when the model answers instead of calling (the
    # request's response_format); None: free text.
    content: dict[str, Any] | None = None

    @property
    def callable(self) -> list[Tool]:
        """The tools the answer may call."""
        return [t for t in self.tools if self.name is None or t.name == self.name]


def _tool(raw: Any, where: str, legacy: bool) -> Tool:
    if not legacy:
        if not isinstance(raw, dict) or raw.get("type") != "function":
            raise BadRequest(f"{where}.type must be 'function'", param=f"{where}.type")
        raw, where = raw.get("function"), f"{where}.function"
        if not isinstance(raw, dict):
            raise BadRequest(f"{where} must be an object", param=where)
    elif not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(
            f"{where}.name is required: 1 to 64 letters, digits, _ or -", param=f"{where}.name"
        )
    description = raw.get("description")
    description = "" if description is None else description
    if not isinstance(description, str):
        raise BadRequest(f"{where}.description must be a string", param=f"{where}.description")
    parameters = raw.get("parameters", NO_PARAMETERS)
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise BadRequest(
            f"{where}.parameters must be a JSON schema object with type 'object'",
            param=f"{where}.parameters",
        )
    try:
        schema_grammar(parameters)
    except BadRequest as exc:
        raise BadRequest(f"{where}.parameters: {exc}", param=f"{where}.parameters") from None
    return Tool(name, description, parameters)


def first_repeat(names: list[str]) -> int | None:
    """The index of the first name that an earlier one repeats; None when all differ."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            return i
        seen.add(name)
    return None


def tool_request(
    tools: Any, tool_choice: Any, functions: Any, function_call: Any, parallel: Any
) -> ToolRequest | None:
    """The validated tool request; None when no tool is offered (tool_choice none, or no tools)."""
    if tools is not None and functions is not None:
        raise BadRequest("give tools or the legacy functions, not both", param="functions")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("parallel_tool_calls must be a boolean", param="parallel_tool_calls")
    legacy = functions is not None
    # The other style's choice, with nothing of its own offered.
    other, other_key, needs = (
        (tool_choice, "tool_choice", "tools")
        if legacy
        else (function_call, "function_call", "functions")
    )
    if other not in (None, "none"):
        raise BadRequest(f"{other_key} needs {needs}", param=other_key)
    offered, choice = (functions, function_call) if legacy else (tools, tool_choice)
    key, choice_key = ("functions", "function_call") if legacy else ("tools", "tool_choice")
    if offered is None:
        if choice not in (None, "none"):
            raise BadRequest(f"{choice_key} needs {key}", param=choice_key)
        return None
    if not isinstance(offered, list):
        raise BadRequest(f"{key} must be a list", param=key)
    if len(offered) > MAX_TOOLS:
        raise BadRequest(f"{key} takes at most {MAX_TOOLS} tools", param=key)
    parsed = [_tool(raw, f"{key}[{i}]", legacy) for i, raw in enumerate(offered)]
    names = [t.name for t in parsed]
    repeat = first_repeat(names)
    if repeat is not None:
        raise BadRequest(f"two {key} are named {names[repeat]!r}", param=f"{key}[{repeat}]")
    allow_many = not legacy and parallel is not False
    name: str | None
    mode: str
    if choice is None or choice == "auto":
        mode, name = "auto", None
    elif choice == "none":
        return None
    elif choice == "required" and not legacy:
        mode, name = "required", None
    elif isinstance(choice, dict):
        function = choice.get("function") if not legacy else choice
        if not legacy and choice.get("type") != "function":
            raise BadRequest("tool_choice.type must be 'function'", param="tool_choice")
        asked = function.get("name") if isinstance(function, dict) else None
        if not isinstance(asked, str):
            raise BadRequest(f"{choice_key} must name a function", param=choice_key)
        name = asked
        if name not in names:
            raise BadRequest(
                f"{choice_key} names {name!r}, which is not among the {key}: {', '.join(names)}",
                param=choice_key,
            )
        mode = "named"
    else:
        allowed = "'none', 'auto'" + ("" if legacy else ", 'required'")
        raise BadRequest(
            f"{choice_key} must be {allowed} or name a function, not {choice!r}", param=choice_key
        )
    if not parsed:
        raise BadRequest(f"{key} is empty", param=key)
    return ToolRequest(parsed, mode, name, allow_many, legacy)
