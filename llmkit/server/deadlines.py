"""A deadline for each request to arrive whole, as HAProxy's `timeout http-request`.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that never
sends a request, nor a request head or body that never ends: each holds a socket (and a file
descriptor) for good, and a few hundred of them take the server away from everyone. Here a
connection gets `seconds` from when it opens, or from the end of its last response, to send one
whole request, head and body; past that it is answered 408 (when nothing is sent yet) and closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_TIMED_OUT_BODY = (
    b'{"error":{"message":"the request did not arrive in time","type":"invalid_request_error",'
    b'"param":null,"code":"request_timeout"}}'
)
# Their side of the connection while a request is still arriving (h11's states).
_ARRIVING = (h11.IDLE, h11.SEND_BODY)


def deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, with a deadline of `seconds` for each request to arrive."""

    class Deadlines(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state not in _ARRIVING:  # the request is in: the app has it
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets its own time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expired(self) -> None:
            self.deadline = None
            if self.transport.is_closing() or self.conn.their_state not in _ARRIVING:
                return
            if self.cycle is None or self.cycle.response_complete:  # nothing answered yet
                self.transport.write(_TIMED_OUT % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY))
            self.transport.close()  # the app, if it waits for the body, sees a disconnect

    return Deadlines
