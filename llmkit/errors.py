"""The exceptions a user can act on: the CLI prints their message as one line and exits 1; the
server answers a BadRequest with a 400."""

from __future__ import annotations


class LlmkitError(Exception):
    """A failure the user can fix; its message is the whole explanation."""


class UnknownModel(LlmkitError):
    """A model reference that names nothing llmkit can find."""


class DownloadError(LlmkitError):
    """The Hub could not give us the file."""


class ChecksumMismatch(LlmkitError):
    """A downloaded file is not the file it claims to be; it has been removed."""


class NotEnoughSpace(LlmkitError):
    """The disk or the memory cannot hold what was asked for."""


class OfflineError(LlmkitError):
    """The model is not in the store and the network may not be used."""


class ServerUnreachable(LlmkitError):
    """No llmkit (or other OpenAI-compatible) server answers at the URL."""


class BadRequest(Exception):
    """A request the server cannot honour as sent: answered with a 400 and this message."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
