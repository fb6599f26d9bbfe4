"""How a model writes tool calls, told from its chat template's text (as llama.cpp's common/chat.cpp does).

A family fixes the text around each call, the trigger that starts calls in free text, and the key
the arguments go under. Templates with no tool support get the generic family: a system
instruction and a JSON answer, `{"tool_calls": [...]}`, `{"tool_call": {...}}` or
`{"response": "..."}` (llama-server's approach).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    native: bool  # the template itself renders `tools` and tool messages
    trigger: str  # the text that starts the calls in free text ("" for generic: all JSON)
    start: str  # before the first call (it begins with the trigger, or the call does)
    open: str  # before each call object
    close: str  # after each call object
    join: str  # between two calls
    end: str  # after the last call
    arguments_key: str = "arguments"

    def text(self, calls: list[tuple[str, str]]) -> str:
        """How this family writes these calls (name, arguments JSON): what the grammar allows."""
        objects = [
            f'{self.open}{{"name": "{name}", "{self.arguments_key}": {arguments}}}{self.close}'
            for name, arguments in calls
        ]
        return self.start + self.join.join(objects) + self.end


HERMES = Family("hermes", True, "<tool_call>", "", "<tool_call>\n", "\n</tool_call>", "\n", "")
LLAMA3 = Family("llama3", True, '{"name"', "", "", "", "\n", "", arguments_key="parameters")
MISTRAL = Family("mistral", True, "[TOOL_CALLS]", "[TOOL_CALLS][", "", "", ", ", "]")
GENERIC = Family("generic", False, "", '{"tool_calls": [', "", "", ", ", "]}")

FAMILIES = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}


def detect(template: str | None) -> Family:
    """The family of a chat template's text; generic when it does not render tools."""
    if not template or "tools" not in template:
        return GENERIC
    if "<tool_call>" in template:
        return HERMES  # Hermes 2 Pro, Qwen 2.5 and the many ChatML templates that copied them
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|start_header_id|>" in template and (
        "ipython" in template or "<|python_tag|>" in template
    ):
        return LLAMA3
    return GENERIC
