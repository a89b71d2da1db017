"""uvicorn's httptools protocol with what it lacks against slow or hostile clients.

uvicorn 0.54 times out only idle keep-alive connections: a connection that sends nothing, or
trickles its request line and headers a byte at a time (slowloris), is held open for ever, and
httptools puts no bound on the size of the headers. This subclass adds, per request:

- a header timeout (`header_timeout_s`): from the connection's start, or a request's first byte,
  until its headers are complete; past it the client gets 408 and the connection is closed;
- a header size bound (MAX_HEADER_BYTES): above it, 431 and the connection is closed.

A body trickled too slowly is cut off one layer up, where the body is read before any parsing
(shared/admission.py: `body_timeout_s` -> 408). Written by hand because uvicorn has no such
settings and no maintained ASGI server we use offers them as options.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import Counter
from uvicorn._types import ASGI3Application, HTTPResponseBodyEvent, HTTPResponseStartEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from shared.admission import Door, door_of
from shared.settings import get_settings

log = logging.getLogger("vidrec.server")

MAX_HEADER_BYTES = 64 * 1024
CUT_OFF = Counter("vidrec_connections_cut_total",
                  "Connections closed for slow (408) or oversized (431) request headers.",
                  ["reason"])


def _status_only(status: int, reason: str) -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .encode("ascii"))


class HeadersTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # None: VIDREC_HEADER_TIMEOUT_S. A class attribute, not an argument, because uvicorn builds
    # the protocol itself (and, with --workers, in another process, from its import path).
    header_timeout_s: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # uvicorn's signature, passed on
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None:
            self.header_timeout_s = get_settings().header_timeout_s
        self._header_timeout_s: float = self.header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._headers_too_large = False
        self._door: Door | None = door_of(self.app)

    # -- header timeout ----------------------------------------------------------------------
    # uvicorn's own override narrows asyncio.Protocol's BaseTransport the same way (and ignores
    # the same check)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()  # no-op when the connection's own timer still runs

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        CUT_OFF.labels("header_timeout").inc()
        if self.cycle is None or self.cycle.response_complete:  # nothing of ours half-written
            self.transport.write(_status_only(408, "Request Timeout"))
        self.transport.close()

    # -- refusal at the door (shared/admission.py Door) ---------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        door = self._door
        if (door is not None and not cycle.flow.write_paused
                and door.refuses(cycle.scope["method"], cycle.scope["path"])):
            self._refuse_now(cycle, door)
            return
        super()._start_asgi_task(cycle, app)

    @staticmethod
    def _refuse_now(cycle: RequestResponseCycle, door: Door) -> None:
        """Write the 503 through the request's own cycle (keep-alive, default headers and the
        next pipelined request handled as for any answer), synchronously: its send only awaits
        when the transport's buffer is full, which the caller ruled out."""
        headers, body = door.answer()
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 503,
                                         "headers": headers}
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body}
        for message in (start, end):
            step = cycle.send(message)
            try:
                step.send(None)
            except StopIteration:
                continue
            step.close()  # pragma: no cover - cannot happen with the buffer not paused
            raise RuntimeError("refusal at the door blocked on a full write buffer")

    # -- header size -------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_large = True
            raise HeadersTooLarge  # httptools stops parsing; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if not self._headers_too_large:
            super().send_400_response(msg)
            return
        CUT_OFF.labels("headers_too_large").inc()
        self._cancel_header_timer()
        self.transport.write(_status_only(431, "Request Header Fields Too Large"))
        self.transport.close()
