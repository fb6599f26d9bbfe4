"""llmkit: run a large language model on your own machine behind an OpenAI-compatible API.

Public API: `llmkit.serve(model)` (a server in a child process, yielding an OpenAI client) and
`llmkit.ChatSession` (a conversation with any OpenAI-compatible server).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["serve", "ChatSession", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `llmkit --help` does not pay for openai and httpx.
    if name == "serve":
        from llmkit.launcher import serve

        return serve
    if name == "ChatSession":
        from llmkit.client import ChatSession

        return ChatSession
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
