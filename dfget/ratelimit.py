"""A token bucket that paces byte streams, shared by everything that must stay under one rate.

dfget keeps two of them, never the same one: the download limit ``-s`` is one bucket per dfget run,
and the upload limit ``--totallimit`` is one bucket in the node's uploader shared by every upload.
The bucket is a virtual clock: each caller reserves the time its bytes take at ``rate`` and sleeps
until then, so concurrent streams share the rate fairly without a lock or a background task.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``rate`` bytes per second with ``burst`` seconds of credit after idle time; 0 means unlimited."""

    def __init__(self, rate: int, *, burst: float = 0.25) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._rate = rate
        self._burst = burst
        self._free_at = 0.0

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, rate: int) -> None:
        """Change the rate for the bytes reserved from now on (the uploader's ``/check`` can set it)."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._rate = rate

    def reserve(self, size: int, now: float) -> float:
        """Reserve ``size`` bytes at time ``now``; return how long the caller must wait before using them."""
        if self._rate <= 0 or size <= 0:
            return 0.0
        self._free_at = max(self._free_at, now - self._burst) + size / self._rate
        return max(0.0, self._free_at - now)

    async def acquire(self, size: int) -> None:
        delay = self.reserve(size, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
