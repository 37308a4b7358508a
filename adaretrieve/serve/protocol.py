"""uvicorn's h11 protocol with a read timeout: a client has ``read_timeout`` seconds from the moment the
server waits for its request (the connection opens, or the previous response ends) until the whole
request, headers and body, has arrived; past it the connection is closed.

uvicorn times out only an idle keep-alive connection (after a response). A client that sends half its
headers, or its headers and half a body, and then stalls was held open for ever, each holding a
descriptor and an h11 buffer: enough of them exhaust the server (slowloris). A request whose body is
being read by the app when the timer fires sees a disconnect; nothing is answered on that connection.

    uvicorn.run(app, http="adaretrieve.serve.protocol:TimedH11Protocol")   # what `adaretrieve serve` does
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0  # a 4 MiB body (the limit) needs ~140 KB/s to arrive in time
IMPORT_PATH = "adaretrieve.serve.protocol:TimedH11Protocol"


class TimedH11Protocol(H11Protocol):
    read_timeout: float = READ_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        timer, self._read_timer = getattr(self, "_read_timer", None), None
        if timer is not None:
            timer.cancel()

    def _waiting_for_request(self) -> bool:
        """True while the client's request has not wholly arrived (no headers yet, or part of its body)."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_request():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next request cycle
        if self._waiting_for_request() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing() and self._waiting_for_request():
            log.info("closing a connection from %s: its request did not arrive within %.0f s", self.client, self.read_timeout)
            self.transport.close()
