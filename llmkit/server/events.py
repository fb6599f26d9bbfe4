"""What the shapers of the two APIs that stream named events (Responses, Messages) share: the
event's framing, ids, and a tool request's answer read into text and calls as it streams.

With tools, the text is parsed as chat's is (llmkit.tools.parse). Text that is only whitespace is
held back until it is known whether a call follows: a call drops it, other text opens the answer's
text part with it (a block, an item: each API opens its own).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from llmkit.engine import Delta
from llmkit.tools.parse import CallParser

COMPACT = (",", ":")  # JSON separators for the stream's events


def named_event(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with a name."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=COMPACT)}\n\n".encode()


def new_id(prefix: str, hex_digits: int = 32) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:hex_digits]}"


class CallEvents:
    """A tool request's deltas into an API's events: the shaper says how a call, its arguments
    and the text open or grow; this reads the deltas and holds back whitespace before a call."""

    parser: CallParser | None

    def __init__(self) -> None:
        self._pending = ""  # whitespace before the first part: text only if no call follows

    def _parsed(self, delta: Delta) -> bytes:
        """The events for one delta of a tool request."""
        assert self.parser is not None
        events = self.parser.feed(delta.text)
        if delta.finish_reason is not None:
            events += self.parser.finish()
            self._ended(delta)
        out = []
        for e in events:
            if e.kind == "content":
                out.append(self._content(e.text))
            elif e.kind == "call":
                self._pending = ""
                out.append(self._call_opened(e.index))
            else:
                out.append(self._arguments(e.index, e.text))
        if delta.finish_reason is not None and not self._answered():  # no call: the answer is text
            out.append(self._text(self._pending))
        return b"".join(out)

    def _content(self, text: str) -> bytes:
        grown = self._text_grown(text)
        if grown is not None:
            return grown
        self._pending += text
        if not self._pending.strip():  # held back: it may be only what precedes a call
            return b""
        return self._text(self._pending)

    def _text(self, text: str) -> bytes:
        """Open the answer's text part with this text (what was held back included)."""
        self._pending = ""
        return self._text_opened(text)

    # What each API says ---------------------------------------------------------------------

    def _ended(self, delta: Delta) -> None:
        raise NotImplementedError

    def _answered(self) -> bool:
        """Whether any part (text or call) is open or done."""
        raise NotImplementedError

    def _call_opened(self, index: int) -> bytes:
        """Close what is open; open the parser's call `index`."""
        raise NotImplementedError

    def _arguments(self, index: int, text: str) -> bytes:
        raise NotImplementedError

    def _text_grown(self, text: str) -> bytes | None:
        """Add text to the open text part; None when no text part is open."""
        raise NotImplementedError

    def _text_opened(self, text: str) -> bytes:
        """Close what is open; open a text part with this text."""
        raise NotImplementedError
