"""Requests → prompt tokens, with llama_cpp's own chat templates and tokenizer.

The chat template is llama_cpp's: the handler it would use for this model (a named chat format or
the GGUF's Jinja template) is called with a stand-in for the model that records the prompt tokens
and stop strings the handler would generate from, instead of generating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
import llama_cpp
from llama_cpp import llama_chat_format

from llmkit.errors import BadRequest


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


# Chat formats whose llama_cpp formatter drops system messages, silently. Their models' own
# templates put the system text at the start of the first user turn: so does llmkit.
_SYSTEM_INTO_FIRST_USER = {"gemma"}


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with the system ones' text put before the first user message's."""
    system = "\n\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for i, message in enumerate(rest):
        if message["role"] == "user":
            rest[i] = {**message, "content": f"{system}\n\n{message['content'] or ''}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


# What a chat template raises for messages it cannot render: the request's fault, a 400.
TEMPLATE_ERRORS = (
    ValueError,
    TypeError,
    jinja2.TemplateError,
    MemoryError,
    OverflowError,
    RecursionError,
)


def chat_prompt(llama: llama_cpp.Llama, messages: list[dict[str, Any]]) -> Prompt:
    """The prompt llama_cpp would build for these messages with this model's chat template."""
    if llama.chat_handler is None and llama.chat_format in _SYSTEM_INTO_FIRST_USER:
        messages = fold_system(messages)
    handler = (
        llama.chat_handler
        or llama._chat_handlers.get(llama.chat_format or "")
        or llama_chat_format.get_chat_completion_handler(llama.chat_format or "")
    )
    try:
        handler(llama=_Recorder(llama), messages=messages)  # type: ignore[arg-type]
    except _Rendered as rendered:
        kwargs = rendered.kwargs
    except TEMPLATE_ERRORS as exc:
        # The template's own raise_exception (roles that must alternate, say) raises ValueError;
        # a template that cannot render these messages raises jinja2's errors; one that loops or
        # multiplies by what the messages say, MemoryError or OverflowError (the sandbox's range).
        raise BadRequest(
            f"the model's chat template refused these messages: {exc}", param="messages"
        ) from None
    else:  # pragma: no cover - every text handler ends in create_completion
        raise RuntimeError("the chat handler did not produce a prompt")
    stop = kwargs.get("stop") or []
    return Prompt(tokens=list(kwargs["prompt"]), stop=[stop] if isinstance(stop, str) else stop)


def text_prompt(llama: llama_cpp.Llama, prompt: str | list[int]) -> Prompt:
    """A completion prompt as llama_cpp tokenizes it (the model's BOS, special tokens parsed).

    An empty text is the start of a document, as the OpenAI API reads it: the model's BOS token,
    also where the model adds none to its prompts (SmolLM2's)."""
    if isinstance(prompt, str):
        tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
        if not tokens and llama.token_bos() >= 0:
            tokens = [llama.token_bos()]
        return Prompt(tokens=tokens, stop=[])
    return Prompt(tokens=list(prompt), stop=[])


def completion_prompts(
    prompt: str | list[str] | list[int] | list[list[int]], llama: llama_cpp.Llama, echo: bool
) -> tuple[list[Prompt], list[str]]:
    """The prompts, and the text each choice begins with: the prompt's own with `echo`, else ""."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt) or [""]
    n_vocab = llama.n_vocab()
    for p in items:
        if not isinstance(p, str) and not all(0 <= t < n_vocab for t in p):
            raise BadRequest(f"prompt token ids must be between 0 and {n_vocab - 1}", "prompt")
    texts = [
        ""
        if not echo
        else p
        if isinstance(p, str)
        else llama.detokenize(p).decode(errors="replace")
        for p in items
    ]
    return [text_prompt(llama, p) for p in items], texts
