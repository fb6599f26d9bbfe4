"""The models a server serves, found by a request's `model`, and whether the server is draining.

Routes find it on the app (`registry_of(request)`). With one model served, any name reaches it:
programs written for the OpenAI API send their own model names (`gpt-3.5-turbo`).
"""

from __future__ import annotations

from fastapi import Request

from llmkit.server.load import Served


class Registry:
    """What the routes share: the served models, and the server's draining state."""

    def __init__(self, served: list[Served]) -> None:
        self.served = served
        self.draining = False  # set on SIGTERM: /ready answers 503 from then on

    @property
    def default(self) -> Served:
        return self.served[0]

    def find(self, model: str | None) -> Served:
        """The model a request names (any name, with one model served)."""
        return self.default

    def stop_generating(self) -> None:
        """Stop every engine and embedder: what still runs ends with an error (the grace period
        is over)."""
        for served in self.served:
            served.engine.close()
            served.embedder.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop and free every model (once the server no longer serves)."""
        for served in self.served:
            served.close(timeout)


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry
