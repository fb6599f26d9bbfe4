"""Requests → prompt tokens, with llama_cpp's own chat templates and tokenizer.

The chat template is llama_cpp's: the handler it would use for this model (a named chat format or
the GGUF's Jinja template) is called with a stand-in for the model that records the prompt tokens
and stop strings the handler would generate from, instead of generating.

A text too long for the context is refused before it is tokenized (TextLimit): llama.cpp's
tokenizer takes time superlinear in the special tokens a text holds (34 s for 1.26 MB of ChatML).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import jinja2
import llama_cpp
from llama_cpp import llama_chat_format

from llmkit.engine.jobs import PromptTooLong
from llmkit.errors import BadRequest


@dataclass
class Prompt:
    tokens: list[int]
    stop: list[str]  # the template's own stop strings (end of turn)


@dataclass(frozen=True)
class TextLimit:
    """The most text a prompt can be: `tokens` (the slot's context) of at most `token_bytes` bytes
    each. A longer text is more tokens than the context holds, and would be refused once
    tokenized, after seconds or minutes of llama.cpp's time: it is refused before."""

    tokens: int
    token_bytes: int

    def check(self, text: bytes, param: str) -> None:
        if len(text) > self.tokens * self.token_bytes:
            raise BadRequest(
                f"the prompt is {len(text)} bytes, more than this server's context holds "
                f"({self.tokens} tokens of at most {self.token_bytes} bytes each)",
                param=param,
            )

    def check_tokens(self, tokens: int, param: str) -> None:
        """Refuse a prompt too long in tokens as the engine would, but at once: a request's
        other prompts are not tokenized (each up to the bytes `check` lets through: seconds)."""
        if tokens >= self.tokens:
            raise BadRequest(str(PromptTooLong.of(tokens, self.tokens)), param=param)


def longest_token_bytes(model: llama_cpp.llama_model_p) -> int | None:
    """The most bytes of text one token of this model's vocabulary stands for when a text is
    tokenized; None where a token count bounds no text's length.

    Byte-level BPE gives each byte of the text one character of a token's text, which its piece
    decodes back to: a token stands for its piece. SentencePiece writes a space as "▁" (3 bytes)
    and takes a "▁" of the text the same way: a token stands for at most its text's bytes (a byte
    token's, <0x0A>, is longer than its byte); its piece counts too. WordPiece and Unigram put one
    unknown token for a whole word or run of unknown characters, and a token that strips the
    whitespace beside it (Phi-3's) stands for any amount of it: no bound for them. About 0.3 s
    for Gemma 3's 262,144 tokens: computed once, when the model loads."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    kind = llama_cpp.llama_vocab_type(vocab)
    if kind not in (llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE):
        return None
    strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
    buf = ctypes.create_string_buffer(1024)
    longest = 1
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if llama_cpp.llama_vocab_get_attr(vocab, token) & strips:
            return None
        piece = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        if piece < 0:  # longer than the buffer: -piece is its length
            piece = -piece
        text = len(llama_cpp.llama_vocab_get_text(vocab, token) or b"")
        longest = max(longest, piece, text if kind == llama_cpp.LLAMA_VOCAB_TYPE_SPM else 0)
    return longest


class _Rendered(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs


class _Recorder:
    """Looks enough like a Llama for a chat handler: tokenizes for real, records instead of generating."""

    def __init__(self, llama: llama_cpp.Llama, limit: TextLimit | None) -> None:
        self._llama = llama
        self._limit = limit
        self.verbose = False

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        if self._limit is not None:
            self._limit.check(text, "messages")
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


def chat_prompt(
    llama: llama_cpp.Llama, messages: list[dict[str, Any]], limit: TextLimit | None = None
) -> Prompt:
    """The prompt llama_cpp would build for these messages with this model's chat template;
    refused before it is tokenized when longer than `limit`."""
    if llama.chat_handler is None and llama.chat_format in _SYSTEM_INTO_FIRST_USER:
        messages = fold_system(messages)
    handler = (
        llama.chat_handler
        or llama._chat_handlers.get(llama.chat_format or "")
        or llama_chat_format.get_chat_completion_handler(llama.chat_format or "")
    )
    try:
        handler(llama=_Recorder(llama, limit), messages=messages)  # type: ignore[arg-type]
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


def text_prompt(
    llama: llama_cpp.Llama, prompt: str | list[int], limit: TextLimit | None = None
) -> Prompt:
    """A completion prompt as llama_cpp tokenizes it (the model's BOS, special tokens parsed).

    An empty text is the start of a document, as the OpenAI API reads it: the model's BOS token,
    also where the model adds none to its prompts (SmolLM2's)."""
    if isinstance(prompt, str):
        text = prompt.encode()
        if limit is not None:
            limit.check(text, "prompt")
        tokens = llama.tokenize(text, add_bos=True, special=True)
        if limit is not None:
            limit.check_tokens(len(tokens), "prompt")
        if not tokens and llama.token_bos() >= 0:
            tokens = [llama.token_bos()]
        return Prompt(tokens=tokens, stop=[])
    return Prompt(tokens=list(prompt), stop=[])


def completion_prompts(
    prompt: str | list[str] | list[int] | list[list[int]],
    llama: llama_cpp.Llama,
    echo: bool,
    limit: TextLimit | None = None,
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
    return [text_prompt(llama, p, limit) for p in items], texts
