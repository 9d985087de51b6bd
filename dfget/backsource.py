"""Downloading straight from the source, when the supernodes cannot serve the file (spec §3.8).

A plain GET of the raw URL with the user's headers, streamed to a temporary file beside the output
(memory stays at one chunk), paced by the same ``-s`` limit as a P2P download, checked against
``--md5`` and the announced length, and renamed over the output only when complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from .errors import Md5Mismatch, SourceError
from .progress import Progress
from .ratelimit import TokenBucket
from .storage import io_error, prepare_output, temp_path, write_all

CHUNK = 256 * 1024
WRITE_BATCH = 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a source that sends nothing for this long is failed; the whole download has --timeout


def request_headers(lines: Sequence[str]) -> CIMultiDict[str]:
    """``--header 'Name: value'`` lines as request headers (repeated names are sent repeatedly)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return headers


async def download_from_source(session: aiohttp.ClientSession, *, url: str, headers: Sequence[str], output: Path,
                               sign: str, md5: str, limiter: TokenBucket, progress: Progress) -> tuple[int, str]:
    """Fetch ``url`` into ``output``; return its length and MD5. Raises ``SourceError``, ``Md5Mismatch``, ..."""
    prepare_output(output)
    temp = temp_path(output, sign, "backsource")
    digest = hashlib.md5()
    length = 0
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise io_error(f"cannot create {temp}", exc) from exc
    try:
        try:
            async with session.get(url, headers=request_headers(headers),
                                   timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT,
                                                                 sock_read=READ_TIMEOUT)) as resp:
                if resp.status >= 400:
                    raise SourceError(f"the source {url} answered HTTP {resp.status} {resp.reason or ''}".rstrip())
                expected = resp.content_length
                progress.restart(expected if expected is not None else -1)
                batch = bytearray()
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await limiter.acquire(len(chunk))
                    digest.update(chunk)
                    batch += chunk
                    length += len(chunk)
                    progress.add(len(chunk), "source")
                    if len(batch) >= WRITE_BATCH:
                        await _write(fd, bytes(batch), temp)
                        batch.clear()
                if batch:
                    await _write(fd, bytes(batch), temp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"downloading {url} failed: {exc.__class__.__name__}: {exc}") from exc
        if expected is not None and length != expected:
            raise SourceError(f"the source {url} sent {length} bytes, announced {expected}")
        real = digest.hexdigest()
        if md5 and real != md5:
            raise Md5Mismatch(f"the source file's MD5 is {real}, --md5 says {md5}")
        try:
            await asyncio.to_thread(os.fsync, fd)
            os.replace(temp, output)
        except OSError as exc:
            raise io_error(f"cannot move the download to {output}", exc) from exc
        return length, real
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


async def _write(fd: int, data: bytes, temp: Path) -> None:
    try:
        await asyncio.to_thread(write_all, fd, data)
    except OSError as exc:
        raise io_error(f"cannot write {temp}", exc) from exc
