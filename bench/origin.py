"""A benchmark origin: one generated file behind a GLOBAL rate limit, counting every byte it sends.

All connections draw from one token bucket of ``--rate`` bytes per second, so N clients together get
S, as behind a real uplink. The file's bytes are generated from a fixed pattern (nothing is held in
memory but the pattern), ranges are honoured (single ``bytes=`` ranges), HEAD answers the length.

``GET /stats`` returns ``{"bytes_sent", "requests", "full_transfers", "size", "rate"}`` as JSON;
``POST /stats/reset`` zeroes the counters. Run standalone (the swarm runner does)::

    python bench/origin.py --size 64M --rate 20M --port 0     # prints "origin listening on PORT"

or embed :class:`Origin` in a process of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import sys
import time

from aiohttp import web

CHUNK = 64 * 1024
_PERIOD = 1_000_003  # prime, so no two pieces of a file have the same bytes
_PATTERN = bytes((i * 131 + (i >> 8) * 7) & 0xFF for i in range(_PERIOD))
_DOUBLE = memoryview(_PATTERN + _PATTERN)


def parse_rate(text: str) -> int:
    """``20M`` / ``512K`` / ``1G`` / plain bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def content(offset: int, length: int) -> bytes:
    """``length`` bytes of the generated file starting at ``offset``."""
    out = bytearray()
    while length > 0:
        start = offset % _PERIOD
        take = min(length, _PERIOD)
        out += _DOUBLE[start:start + take]
        offset += take
        length -= take
    return bytes(out)


def file_md5(size: int) -> str:
    digest = hashlib.md5()
    for offset in range(0, size, 1 << 22):
        digest.update(content(offset, min(1 << 22, size - offset)))
    return digest.hexdigest()


class GlobalBucket:
    """One token bucket for every connection: waiters queue on a lock, so the rate is shared fairly."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class Origin:
    """Serves ``/file.bin`` (any path, in fact) of ``size`` bytes at ``rate`` bytes/s in total."""

    def __init__(self, size: int, rate: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.size = size
        self.rate = rate
        self.host = host
        self.port = port
        self.bucket = GlobalBucket(rate, burst=CHUNK * 2)
        self.bytes_sent = 0
        self.requests = 0
        self.full_transfers = 0
        self._runner: web.AppRunner | None = None

    def stats(self) -> dict[str, int]:
        return {"bytes_sent": self.bytes_sent, "requests": self.requests, "full_transfers": self.full_transfers,
                "size": self.size, "rate": self.rate}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.bytes_sent = self.requests = self.full_transfers = 0
        return web.json_response(self.stats())

    def _range(self, header: str | None) -> tuple[int, int] | None:
        if header is None:
            return 0, self.size - 1
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if match is None or match.groups() == ("", ""):
            return None
        first_text, last_text = match.groups()
        if first_text == "":
            return max(self.size - int(last_text), 0), self.size - 1
        first = int(first_text)
        last = min(int(last_text), self.size - 1) if last_text else self.size - 1
        return (first, last) if first <= last and first < self.size else None

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        span = self._range(request.headers.get("Range"))
        if span is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{self.size}"})
        first, last = span
        length = last - first + 1
        headers = {"Content-Length": str(length), "Accept-Ranges": "bytes", "ETag": f'"bench-{self.size}"',
                   "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", "Content-Type": "application/octet-stream"}
        status = 200
        if "Range" in request.headers:
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{self.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        offset, end = first, last + 1
        while offset < end:
            take = min(CHUNK, end - offset)
            await self.bucket.take(take)
            await resp.write(content(offset, take))
            self.bytes_sent += take
            offset += take
        if first == 0 and end == self.size:
            self.full_transfers += 1
        await resp.write_eof()
        return resp


async def _serve(size: int, rate: int, host: str, port: int) -> None:
    origin = Origin(size, rate, host, port)
    await origin.start()
    print(f"origin listening on {origin.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print(json.dumps(origin.stats()), file=sys.stderr, flush=True)
        await origin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_rate, default=parse_rate("64M"), help="file size (default 64M)")
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("20M"),
                        help="total rate over all connections, bytes/s (default 20M)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    args = parser.parse_args()
    if not args.host.startswith("127."):
        parser.error("the benchmark origin only binds loopback addresses")
    asyncio.run(_serve(args.size, args.rate, args.host, args.port))


if __name__ == "__main__":
    main()
