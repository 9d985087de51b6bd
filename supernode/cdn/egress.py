"""One egress rate for the whole download port (``cdn_rate_limit``), shared by every connection.

A real supernode shares one NIC among all the peers that fetch pieces from it, so the limit is a
total, not a per-connection cap: every piece response draws from one :class:`TokenBucket`. A response
is sent in chunks, each only after its bytes were taken from the bucket, so no connection runs ahead
of the others; the bucket's lock is FIFO, so waiting connections take turns chunk by chunk (fair
shares without a scheduler). Each chunk still goes out with ``loop.sendfile`` (page cache -> socket,
no copy through Python); a loop without it (uvloop) gets ``pread`` + write for the same chunks.

Accuracy: tokens are taken before a chunk is sent and the bucket holds at most one chunk, so over any
interval ``t`` the port sends at most ``rate * t + chunk`` bytes; with chunks of ``rate / 32`` that is
within ~3 % of the limit over one second (more below 2 MiB/s, where chunks stay at 64 KiB).
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..ratelimit import TokenBucket

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 256 * 1024


def chunk_size_for(rate: int) -> int:
    """About 1/32 s of traffic per chunk: small enough for an even rate, large enough to cost little
    per byte (a 100 MiB/s limit is 400 sendfile calls a second)."""
    return min(MAX_CHUNK, max(MIN_CHUNK, rate // 32))


class EgressLimiter:
    """The download port's shared bucket and the chunked sender that draws from it."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("the egress rate must be positive (no limiter means unlimited)")
        self.rate = rate
        self.chunk = chunk_size_for(rate)
        self._bucket = TokenBucket(rate, burst=self.chunk)

    async def send(self, request: web.BaseRequest, writer: AbstractStreamWriter, fobj: IO[Any], offset: int,
                   count: int, *, zero_copy: bool) -> None:
        """Send ``count`` bytes of ``fobj`` from ``offset`` on ``request``'s connection at the shared rate.

        The response headers must already be on the wire (``StreamResponse.prepare``). Ends early, as
        aiohttp does, if the file is shorter than announced.
        """
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < count:
            size = min(self.chunk, count - sent)
            await self._bucket.acquire(size)
            if zero_copy:
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("Connection lost")
                try:
                    done = await loop.sendfile(transport, fobj, offset + sent, size)
                except NotImplementedError:  # the loop has no sendfile (uvloop): copy from here on
                    zero_copy = False
                else:
                    if done < size:
                        return
                    sent += done
                    continue
            data = await loop.run_in_executor(None, os.pread, fobj.fileno(), size, offset + sent)
            if not data:
                return
            await writer.write(data)
            sent += len(data)
        await writer.drain()
