"""A small TCP proxy for fault injection: put it between a service and its dependency (Redis,
the ranking service) and make the link slow (a delay per chunk) or flaky (connections dropped).

    with FaultProxy(upstream_port) as proxy:       # proxy.port forwards to upstream_port
        proxy.slow(0.05, 0.5)                      # each chunk waits 50-500 ms, both ways
        proxy.flaky(0.1)                           # and 10% of chunks close the connection
        proxy.heal()                               # back to a plain pipe

Written here because the faults must be switched on and off mid-test while traffic flows, at
the TCP level, without root (toxiproxy is a separate Go server; tc/netem needs root).
It runs its own event loop in a thread; the settings are read per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from types import TracebackType

CHUNK = 65536


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.delay = (0.0, 0.0)
        self.drop = 0.0
        self._rng = random.Random(5)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- faults ------------------------------------------------------------------------------
    def slow(self, low_s: float, high_s: float) -> None:
        self.delay = (low_s, high_s)

    def flaky(self, drop_probability: float) -> None:
        self.drop = drop_probability

    def heal(self) -> None:
        self.delay, self.drop = (0.0, 0.0), 0.0

    def cut_all(self) -> None:
        """Close every open connection now (clients reconnect through the proxy)."""
        self._loop.call_soon_threadsafe(self._close_all)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            self._close_all()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- piping ------------------------------------------------------------------------------
    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(CHUNK):
                low, high = self.delay
                if high > 0:
                    await asyncio.sleep(self._rng.uniform(low, high))
                if self.drop and self._rng.random() < self.drop:
                    break
                writer.write(chunk)
                await writer.drain()
        writer.close()
