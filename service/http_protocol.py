"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on each request head.

uvicorn closes a keep-alive connection that sends nothing, but any byte restarts that wait, and a
request head may take as long as its sender likes: a client sending a header line a byte at a time
would hold its connection for hours (the head is at most 16 KB). So each request head must arrive
whole within REQUEST_HEAD_SECONDS of the connection's opening or of the previous response; then the
body has its own deadlines (service/body_guard.py).
"""

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineProtocol(H11Protocol):
    head_seconds = 10.0  # set from REQUEST_HEAD_SECONDS by `python -m service`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head arrived (or the connection ends)
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
