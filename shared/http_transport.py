"""A lean httpx transport for the gateway's calls to its own services.

The service clients (FeatureStoreClient, RetrievalClient, RankingClient) are httpx clients;
httpx's default transport (httpcore) spends about 0.6 ms of CPU per request on a 2-core box,
which at four calls per recommendation is most of what running the services apart costs. This
transport does the same job in a fraction of that: keep-alive HTTP/1.1 connections from a
per-origin pool, the request written in one go, the response parsed by httptools (the parser
uvicorn uses), content-length or chunked.

It handles what the internal API needs and nothing more: plain http:// (https:// and proxies
go through httpx's default transport, see `transport_for`), bodies already in memory.
Failures map to httpx's own exceptions, so the clients' error handling is unchanged:

    cannot connect                 -> httpx.ConnectError / httpx.ConnectTimeout
    no (complete) answer in time   -> httpx.ReadTimeout
    connection broken mid-answer   -> httpx.ReadError
    malformed answer               -> httpx.RemoteProtocolError

A pooled connection the server has closed while idle fails before any byte of an answer comes
back; the request is then sent once more on a new connection (the server never saw it).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import httptools
import httpx

MAX_IDLE_PER_ORIGIN = 32
READ_CHUNK = 65536


class _Answer:
    """httptools callbacks: collects one response."""

    __slots__ = ("parser", "headers", "body", "complete", "got_bytes", "keep_alive", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.got_bytes = False
        self.keep_alive = False
        self.status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # read here: the parser forgets both once the message is complete
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle: int = MAX_IDLE_PER_ORIGIN) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Conn]] = defaultdict(list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}:// is not handled here",
                                            request=request)
        origin = (url.host, url.port or 80)
        timeouts = request.extensions.get("timeout", {})
        payload = _serialise(request, await request.aread())
        conn = self._pooled(origin)
        if conn is not None:
            try:
                return await self._exchange(request, origin, conn, payload, timeouts, True)
            except _Stale:
                pass  # the server closed it while idle: it never saw this request
        conn = await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(request, origin, conn, payload, timeouts, False)
        except _Stale as exc:
            raise httpx.ReadError("server closed the connection without answering",
                                  request=request) from exc

    def _pooled(self, origin: tuple[str, int]) -> _Conn | None:
        idle = self._idle[origin]
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _connect(self, request: httpx.Request, origin: tuple[str, int],
                       timeout: float | None) -> _Conn:
        try:
            async with asyncio.timeout(timeout):
                return _Conn(*await asyncio.open_connection(*origin))
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {origin} timed out",
                                       request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {origin}: {exc}", request=request) from exc

    async def _exchange(self, request: httpx.Request, origin: tuple[str, int], conn: _Conn,
                        payload: bytes, timeouts: dict[str, Any], reused: bool) -> httpx.Response:
        answer = _Answer()
        try:
            async with asyncio.timeout(timeouts.get("read")):
                conn.writer.write(payload)
                while not answer.complete:
                    data = await conn.reader.read(READ_CHUNK)
                    if not data:
                        raise ConnectionResetError("connection closed by the server")
                    answer.got_bytes = True
                    answer.parser.feed_data(data)
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout("no complete answer in time", request=request) from exc
        except httptools.HttpParserError as exc:
            conn.close()
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}", request=request) from exc
        except OSError as exc:
            conn.close()
            if reused and not answer.got_bytes:
                raise _Stale() from exc
            raise httpx.ReadError(f"connection broken: {exc!r}", request=request) from exc
        if answer.keep_alive and len(self._idle[origin]) < self.max_idle:
            self._idle[origin].append(conn)
        else:
            conn.close()
        return httpx.Response(answer.status, headers=answer.headers,
                              content=b"".join(answer.body), request=request)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
            idle.clear()


def _serialise(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path  # path and query, already percent-encoded
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
    # no accept-encoding: the answer then comes uncompressed, which is what this parser returns
    lines.extend(b"%s: %s" % (name, value) for name, value in request.headers.raw
                 if name.lower() != b"accept-encoding")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def transport_for(base_url: str) -> httpx.AsyncBaseTransport | None:
    """The lean transport for plain http:// services; None (httpx's default) otherwise."""
    return LeanTransport() if base_url.startswith("http://") else None
