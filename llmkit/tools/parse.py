"""Generated text → content and tool calls, as it streams.

The parser is fed the text of one choice piece by piece and says what may be sent: content (text
that may still be the start of the trigger is held back), the start of each call (its name) and
its arguments, fragment by fragment, as they are written. The same parser reads a whole answer at
the end, and recorded outputs of real models (spacing and key order as they come: a call whose
name follows its arguments is reported once it is complete).

With a response format beside the tools (ToolRequest.content) an answer is either calls or JSON
content, from its first character: the parser tells which from the beginning, and passes content
through whole (a `"name"` key inside it is not a call).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from llmkit.tools.family import GENERIC, LLAMA3, Family
from llmkit.tools.request import ToolRequest

_HEADER = re.compile(
    r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
_RESPONSE = re.compile(r'\{\s*"response"\s*:\s*"')
_RESPONSE_VALUE = re.compile(r'\{\s*"response"\s*:\s*')
# A JSON string's body, as far as it is complete (no half escape), and a UTF-16 high surrogate
# escape at its end.
_STRING_BODY = re.compile(r'(?:[^"\\]|\\u[0-9a-fA-F]{4}|\\[^u])*')
_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}$")
_WRAPPER_END = re.compile(r"\s*(?:\}\s*)?$")  # what may be the end of {"response": ...}
_CALLS = re.compile(r'\{\s*"tool_calls?"\s*:\s*')
# What may stand between calls: tags, separators, whitespace.
_BETWEEN = re.compile(
    r"(?:\s|<tool_call>|</tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>|<\|eom_id\|>|[\[\],;])*"
)


@dataclass
class Call:
    name: str
    arguments: str = ""
    complete: bool = False


@dataclass
class Event:
    """One thing to send: content text, a new call (index, name), or arguments for a call."""

    kind: str  # "content", "call" or "arguments"
    text: str = ""
    index: int = 0


@dataclass
class CallParser:
    family: Family
    # The answer is calls or JSON content (a response format beside the tools), and these are
    # the tools it may call.
    json_content: bool = False
    names: tuple[str, ...] = ()
    calls: list[Call] = field(default_factory=list)
    content: str = ""
    _buf: str = ""  # text received and not yet consumed
    _mode: str = "text"  # text, calls, arguments, response, done
    _depth: int = 0
    _in_string: bool = False
    _escape: bool = False

    def __post_init__(self) -> None:
        if self.family is GENERIC:
            self._mode = "generic"
        elif self.json_content:
            self._mode = "which"

    @classmethod
    def of(cls, family: Family, request: ToolRequest | None) -> CallParser:
        """The parser of answers to this tool request, in this family."""
        if request is None or request.content is None:
            return cls(family)
        return cls(family, True, tuple(t.name for t in request.callable))

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        events: list[Event] = []
        while self._step(events, final=False):
            pass
        return events

    def finish(self) -> list[Event]:
        """The end of the answer: what was held back, and calls written without a tag."""
        events: list[Event] = []
        while self._step(events, final=True):
            pass
        if self._mode == "json_response":
            rest = self._buf.strip() if not self.content else self._buf.rstrip()
            self._content(events, rest[:-1].rstrip() if rest.endswith("}") else rest)
            self._buf = ""
        if self._buf and self._mode in ("text", "calls", "generic", "which", "json"):
            rest, self._buf = self._buf, ""
            if self._mode != "calls" or not self.calls:
                self._content(events, rest)
        self._mode = "done"
        return events

    def _content(self, events: list[Event], text: str) -> None:
        if text:
            self.content += text
            events.append(Event("content", text))

    def _step(self, events: list[Event], final: bool) -> bool:
        """Consume what can be consumed; True if something was (call again)."""
        buf = self._buf
        if self._mode == "text":
            trigger = self.family.trigger
            at = buf.find(trigger) if trigger else -1
            if self.family is LLAMA3:  # its calls may also start after <|python_tag|>
                tag = buf.find("<|python_tag|>")
                at = tag if tag >= 0 and (at < 0 or tag < at) else at
                if at < 0 and buf.lstrip().startswith("{") and final:
                    at = buf.index("{")
            if at >= 0:
                self._content(events, buf[:at])
                self._buf, self._mode = buf[at:], "calls"
                return True
            keep = 0 if final else _held_back(buf, [trigger, "<|python_tag|>"] if trigger else [])
            self._content(events, buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        if self._mode == "which":
            return self._which(final)
        if self._mode == "json":
            self._content(events, buf)
            self._buf = ""
            return False
        if self._mode == "json_response":
            if not self.content:  # the space after "response": may come in a later piece
                buf = buf.lstrip()
            wrapper = _WRAPPER_END.search(buf)
            keep = len(buf) - wrapper.start() if wrapper else 0
            self._content(events, buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        if self._mode == "generic":
            stripped = buf.lstrip()
            if not stripped:
                return False
            if self.json_content and (m := _RESPONSE_VALUE.match(stripped)) is not None:
                self._buf, self._mode = stripped[m.end() :], "json_response"
                return True
            if (m := _RESPONSE.match(stripped)) is not None:
                self._buf, self._mode = stripped[m.end() :], "response"
                return True
            if (m := _CALLS.match(stripped)) is not None:
                self._buf, self._mode = stripped[m.end() :], "calls"
                return True
            if not stripped.startswith("{") or len(stripped) > 24 or final:
                self._mode = "text"  # not the generic JSON: plain text
                self.family = Family("plain", False, "", "", "", "", "", "", "")
                return True
            return False
        if self._mode == "response":
            return self._response(events, final)
        if self._mode == "calls":
            skip = _BETWEEN.match(buf)
            start = skip.end() if skip else 0
            if start >= len(buf) or buf[start] != "{":
                self._buf = buf[start:]
                return False
            m = _HEADER.match(buf, start)
            name = _json_string(m.group(1)) if m is not None else None
            if m is not None and name is not None:
                self.calls.append(Call(name))
                events.append(Event("call", self.calls[-1].name, len(self.calls) - 1))
                self._buf, self._mode = buf[m.end() :], "arguments"
                self._depth, self._in_string, self._escape = 0, False, False
                return True
            try:  # another key order: wait for the whole object
                obj, end = json.JSONDecoder().raw_decode(buf, start)
            except ValueError:
                return False
            name = obj.get("name") if isinstance(obj, dict) else None
            args = obj.get("arguments", obj.get("parameters", {})) if isinstance(obj, dict) else {}
            if not isinstance(name, str):
                self._buf = buf[end:]
                return True
            arguments = args if isinstance(args, str) else json.dumps(args)
            self.calls.append(Call(name, arguments, True))
            index = len(self.calls) - 1
            events += [Event("call", name, index), Event("arguments", arguments, index)]
            self._buf = buf[end:]
            return True
        if self._mode == "arguments":
            return self._arguments(events)
        return False

    def _which(self, final: bool) -> bool:
        """Calls or JSON content? Calls begin exactly as the family writes one of the tools."""
        stripped = self._buf.lstrip()
        heads = [
            f'{self.family.start}{self.family.open}{{"name": "{name}", "{self.family.arguments_key}": '
            for name in self.names
        ]
        if any(stripped.startswith(head) for head in heads):
            self._mode = "calls"
            return True
        if not final and any(head.startswith(stripped) for head in heads):
            return False  # not told yet
        self._mode = "json"
        return True

    def _arguments(self, events: list[Event]) -> bool:
        """Stream the arguments object until its closing brace, then drop the call's own '}'."""
        buf, call = self._buf, self.calls[-1]
        i = 0
        while i < len(buf) and not call.complete:
            c = buf[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    call.complete = True
            i += 1
        piece = buf[:i].lstrip() if not call.arguments else buf[:i]
        if piece:
            call.arguments += piece
            events.append(Event("arguments", piece, len(self.calls) - 1))
        self._buf = buf[i:]
        if not call.complete:
            return False
        # The rest of the call object: an "id" (Mistral) and the closing brace.
        m = re.match(r'\s*(?:,\s*"id"\s*:\s*"[^"]*"\s*)?\}', self._buf)
        if m is None:
            if len(self._buf) < 40:
                return False
        else:
            self._buf = self._buf[m.end() :]
        self._mode = "calls"
        return True

    def _response(self, events: list[Event], final: bool) -> bool:
        """The generic family's {"response": "..."}: the string's text, decoded as it comes.

        Only what arrived since the last piece is looked at (an escape cut in two waits for its
        end), so a long answer costs in proportion to its length, not to its length squared."""
        buf = self._buf
        body = _STRING_BODY.match(buf)
        end = body.end() if body else 0  # complete characters and escapes
        closed = end < len(buf) and buf[end] == '"'
        if not closed and not final and _HIGH_SURROGATE.search(buf, 0, end):
            end -= 6  # half of a UTF-16 pair: wait for the other half
        if end:
            self._content(events, json.loads(f'"{buf[:end]}"', strict=False))
        if closed:
            self._buf, self._mode = "", "done"
        else:
            self._buf = buf[end:]
        return False


def _json_string(body: str) -> str | None:
    """A JSON string's body decoded; None when it is not valid JSON (a model wrote `"a\\q"`)."""
    try:
        return str(json.loads(f'"{body}"'))
    except ValueError:
        return None


def _held_back(text: str, triggers: list[str]) -> int:
    """The length of the longest tail of text that begins a trigger."""
    longest = 0
    for trigger in triggers:
        for k in range(min(len(trigger) - 1, len(text)), longest, -1):
            if text.endswith(trigger[:k]):
                longest = k
                break
    return longest


def parse(family: Family, text: str, request: ToolRequest | None = None) -> CallParser:
    """A whole answer, parsed."""
    parser = CallParser.of(family, request)
    parser.feed(text)
    parser.finish()
    return parser
