"""Requests → prompt tokens, with llama_cpp's own chat templates and tokenizer.

The chat template is llama_cpp's: the handler it would use for this model (a named chat format or
the GGUF's Jinja template) is called with a stand-in for the model that records the prompt tokens
and stop strings the handler would generate from, instead of generating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format


@dataclass
class Prompt:
    tokens: list[int]
    stop: list[str]  # the template's own stop strings (end of turn)


class _Rendered(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs


class _Recorder:
    """Looks enough like a Llama for a chat handler: tokenizes for real, records instead of generating."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self.verbose = False

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._llama.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Rendered(kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)


def chat_prompt(llama: llama_cpp.Llama, messages: list[dict[str, Any]]) -> Prompt:
    """The prompt llama_cpp would build for these messages with this model's chat template."""
    handler = (
        llama.chat_handler
        or llama._chat_handlers.get(llama.chat_format or "")
        or llama_chat_format.get_chat_completion_handler(llama.chat_format or "")
    )
    try:
        handler(llama=_Recorder(llama), messages=messages)  # type: ignore[arg-type]
    except _Rendered as rendered:
        kwargs = rendered.kwargs
    else:  # pragma: no cover - every text handler ends in create_completion
        raise RuntimeError("the chat handler did not produce a prompt")
    stop = kwargs.get("stop") or []
    return Prompt(tokens=list(kwargs["prompt"]), stop=[stop] if isinstance(stop, str) else stop)


def text_prompt(llama: llama_cpp.Llama, prompt: str | list[int]) -> Prompt:
    """A completion prompt as llama_cpp tokenizes it (the model's BOS, special tokens parsed)."""
    if isinstance(prompt, str):
        return Prompt(tokens=llama.tokenize(prompt.encode(), add_bos=True, special=True), stop=[])
    return Prompt(tokens=list(prompt), stop=[])
