"""The llguidance grammar that enforces a tool request: which calls, how many, each tool's schema.

The calls are written exactly as the family writes them (key order and spacing fixed), the
arguments constrained by the tool's JSON schema (llmkit.grammar's bounds and whitespace). In
`auto` mode the text runs free until the family's trigger, and only then is it constrained (a
lazy lexeme: the free text may not contain the trigger, so the calls must follow it).

With a response format beside the tools (`request.content`), `auto` is an alternation instead:
the calls, or content that satisfies the format (no free text before the calls, which would
break the format); the generic family answers it as `{"response": <the content>}`. Calls only
for `required` or a named tool, as without a format.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from llmkit.errors import BadRequest
from llmkit.grammar import enforced_schema
from llmkit.tools.family import GENERIC, Family
from llmkit.tools.request import ToolRequest

NAME_KEY = '{"name"'
RESPONSE_KEY = '{"response": '
JSON_STRING = r'/"(\\([\"\\\/bfnrt]|u[a-fA-F0-9]{4})|[^\"\\\x00-\x1F\x7F])*"/'


def _literal(text: str) -> str:
    return json.dumps(text)  # a lark string literal: JSON's escapes


def _json(schema: dict[str, Any]) -> str:
    """A lark rule's body: JSON that satisfies the schema (llmkit.grammar's bounds and spacing)."""
    return "%json " + enforced_schema(schema)


def _regex_escape(text: str) -> str:
    # regex-syntax's escapes; a backslash before < or > would be a word boundary there.
    return "".join(f"\\{c}" if c in r"\.+*?()|[]{}^$#&-~" else c for c in text)


def calls_grammar(family: Family, request: ToolRequest) -> str:
    """The lark grammar (llguidance) of an answer that honours the request."""
    lines = ["%llguidance {}"]
    fns, rests = [], []
    for i, tool in enumerate(request.callable):
        rest = f': "{tool.name}", "{family.arguments_key}": '
        lines.append(f"rest{i}: {_literal(rest)} args{i} {_literal('}')}")
        lines.append(f"args{i}: {_json(tool.parameters)}")
        fns.append(f"{_literal('{')} {_literal(NAME_KEY[1:])} rest{i}")
        rests.append(f"rest{i}")
    lines.append(f"fn: {' | '.join(fns)}")
    lines.append(f"call: {_literal(family.open)} fn {_literal(family.close)}")
    more = f"({_literal(family.join)} call)*" if request.parallel else ""
    tail = _literal(family.end) if family.end else ""
    start, trigger = family.start, family.trigger
    calls = f"{_literal(start) if start else ''} call {more} {tail}"
    if request.mode == "auto" and request.content is not None:
        lines.append(f"content: {_json(request.content)}")
        if family is GENERIC:
            lines.append(f"response: {_literal(RESPONSE_KEY)} content {_literal('}')}")
            lines.append(f"start: {calls} | response")
        else:
            lines.append(f"start: {calls} | content")
    elif request.mode == "auto" and family is GENERIC:
        lines.append(f"response: {_literal(RESPONSE_KEY)} STRING {_literal('}')}")
        lines.append(f"STRING: {JSON_STRING}")
        lines.append(f"start: {calls} | response")
    elif request.mode == "auto":
        # Free text that never contains the trigger; or text up to the first trigger (a lazy
        # lexeme) and then the calls, constrained. The trigger begins start + open + the call.
        lines.append(f"FREE: /(?s:.*)/ & ~/(?s:.*){_regex_escape(trigger)}(?s:.*)/")
        lines.append(f"head[lazy]: /(?s:.*){_regex_escape(trigger)}/")
        before = start + family.open
        if before:
            lines.append(f"first: {_literal(before[len(trigger) :])} fn {_literal(family.close)}")
        else:  # the trigger is the call's own beginning, {"name"
            lines.append(f"first: ({' | '.join(rests)}) {_literal(family.close)}")
        lines.append(f"start: FREE | head first {more} {tail}")
    else:
        lines.append(f"start: {calls}")
    try:
        grammar = llguidance.grammar_from("lark", "\n".join(lines))
    except ValueError as exc:
        raise BadRequest(f"the tools' schemas cannot be enforced: {exc}", param="tools") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise BadRequest(f"the tools' schemas cannot be enforced: {error}", param="tools")
    return grammar
