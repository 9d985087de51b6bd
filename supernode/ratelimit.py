"""A token bucket shared by everything that must stay under one byte rate.

The CDN's origin traffic is capped at ``max_bandwidth - system_bandwidth`` in total, not per task, so
all downloads draw from one bucket; the download port's egress (``cdn_rate_limit``) is one bucket for
all connections in the same way (:mod:`supernode.cdn.egress`). Waiting is proportional to the deficit,
so a burst of small chunks costs no more wake-ups than one large read. Waiters hold the lock while
they sleep, so they are served in arrival order (asyncio's lock is FIFO).
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)
