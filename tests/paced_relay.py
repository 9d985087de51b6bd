"""A TCP relay that sends what its upstream answers at most C bytes/s in total: a shared NIC, made in a test.

The supernode's own limiter (``--cdn-rate-limit``) also tells the scheduler C; to check that the scheduler
finds C by itself, the limit has to come from outside, as the benchmark's tc does in a private namespace.
This relay does it on loopback without privileges: it listens on an address of its own and forwards to
where the supernode really listens. A dfget fetches CDN pieces from the address it reached the supernode's
API at, so a test relays the API port there too, unpaced. Every connection's
downstream bytes draw on one token bucket, in chunks, so connections share C as flows through a link do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

_CHUNK = 16 * 1024


class _Bucket:
    """Tokens (bytes) at ``rate`` per second, at most ``burst`` held; ``take`` waits for its share in turn."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


class PacedRelay:
    """Listens on ``host:port`` and relays each connection to ``upstream``; replies paced to ``rate`` in total
    (None: not paced, a plain relay)."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int], rate: float | None) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self._bucket = _Bucket(rate, burst=4 * _CHUNK) if rate else None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        """Bytes relayed downstream so far."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer, paced=False), self._pipe(up_reader, writer, paced=True))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, paced: bool) -> None:
        while data := await reader.read(_CHUNK):
            if paced:
                if self._bucket is not None:
                    await self._bucket.take(len(data))
                self.sent += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


@contextlib.asynccontextmanager
async def paced_relay(
    host: str, port: int, upstream: tuple[str, int], rate: float | None = None,
) -> AsyncIterator[PacedRelay]:
    relay = PacedRelay(host, port, upstream, rate)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
