"""One blob on its way to this node, and every runtime request reading it while it arrives.

The bytes go to one file. Through the swarm, that is the dfget run's piece file: each verified
piece is reported here (:class:`~dfget.storage.PieceWatcher`) and extends the contiguous prefix
readers may send. When the swarm fails or stalls, the rest comes from the registry, from the end
of that prefix on (a ``Range`` request), into the same file, so a reader that already sent part of
the layer just carries on.

Invariants:
- a reader sends only bytes that are in the verified prefix, and never the blob's last byte before
  the whole blob matched its digest: a runtime cannot receive a complete blob with a wrong digest
  (a mismatch cuts its connection instead, and the copy is not kept);
- the file descriptor stays open until the download is over and its last reader has left, so the
  dfget run may rename or delete its file at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DownloadConfig
from ..core import DfgetRun
from ..errors import DfgetError
from ..progress import Progress
from .upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
HASH_STEP = 4 * CHUNK
WATCH_INTERVAL = 1.0


class BlobFailed(Exception):
    """The blob cannot be delivered (the registry failed too, or the digest does not match)."""


class Via(enum.StrEnum):
    SWARM = "swarm"
    REGISTRY = "registry"


@dataclass
class Outcome:
    """How a download ended, for the metrics and the log."""

    via: Via = Via.SWARM
    peer_bytes: int = 0
    cdn_bytes: int = 0
    registry_bytes: int = 0
    fallback: str = ""  # why the registry was asked ("" when it was not)
    error: str = ""


class _Log:
    """A dfget run's notices (migrations, back-source reasons) go to the mirror's log."""

    def write(self, text: str, /) -> int:
        if text.strip():
            log.info("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        return None


@dataclass
class BlobRequest:
    """Everything needed to fetch one blob, from the swarm or the registry."""

    digest: str
    size: int
    path: str  # /v2/<name>/blobs/<digest> on the registry
    scope: str
    authorization: str  # what the registry accepted (the runtime's, or the node's): the supernode sends it too
    download: DownloadConfig | None  # None: no supernode configured, straight to the registry
    stall_timeout: float
    upstream: Upstream
    scratch: Path  # where the mirror makes its own file when the swarm never opened one
    swarm_refused: bool = False  # no swarm: its copy of this blob failed the digest check before
    extra: dict[str, str] = field(default_factory=dict)


class BlobDownload:
    """The shared state of one blob in flight; :meth:`run` fetches it, :meth:`send` streams it to a reader."""

    def __init__(self, request: BlobRequest, *, on_done: Callable[[BlobDownload], Awaitable[None]]) -> None:
        self.request = request
        self.size = request.size
        self.outcome = Outcome()
        self.complete = False
        self.failed = ""
        self._on_done = on_done
        self._fd = -1
        self._ranges: dict[int, int] = {}
        self.available = 0  # [0, available) is verified and on disk
        self._sha = hashlib.sha256()
        self._hashed = 0
        self._readers = 0
        self._finished = False
        self._hash_stop = False
        self._progress_at = time.monotonic()
        self._wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.published: Path | None = None  # the dfget run's verified output, when the swarm delivered

    # ------------------------------------------------------------------ PieceWatcher

    def opened(self, path: Path) -> None:
        if self._fd < 0:
            self._fd = os.open(path, os.O_RDWR)
        else:  # a second file of the same blob: pieces are written there from now on
            fd, self._fd = self._fd, os.open(path, os.O_RDWR)
            os.close(fd)
            self.reset()

    def verified(self, offset: int, length: int) -> None:
        self._ranges[offset] = max(self._ranges.get(offset, 0), offset + length)
        end = self.available
        while end in self._ranges:
            end = self._ranges.pop(end)
        if end != self.available:
            self.available = end
            self._progress_at = time.monotonic()
            self._wake()

    def reset(self) -> None:
        self._ranges.clear()
        self.available = 0
        self._wake()

    def _wake(self) -> None:
        if not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = asyncio.get_running_loop().create_future()

    async def _changed(self) -> None:
        await self._wakeup

    # ------------------------------------------------------------------ fetching

    async def run(self) -> None:
        """Fetch the blob (swarm first), verify it; never raises: readers see ``failed``."""
        hasher = asyncio.create_task(self._hash_progress(), name=f"mirror-hash-{self.request.digest[7:19]}")
        try:
            if self.request.download is not None:
                await self._from_swarm(self.request.download)
            elif self.request.swarm_refused:
                self.outcome.fallback = "the swarm's copy did not match the digest before"
            else:
                self.outcome.fallback = "no supernode configured"
            if self.available < self.size:
                self.outcome.via = Via.REGISTRY
                log.warning("blob %s: from the registry from byte %d (%s)", self.request.digest, self.available,
                            self.outcome.fallback)
                await self._from_registry()
            self._hash_stop = True
            self._wake()
            await hasher
            await self._verify()
        except (BlobFailed, OSError, UpstreamError) as exc:
            self.failed = self.outcome.error = str(exc)
            log.error("blob %s failed: %s", self.request.digest, exc)
        finally:
            self._hash_stop = True
            hasher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hasher
            self._finished = True
            self._wake()
            await self._on_done(self)
            self._close_if_unused()

    async def _from_swarm(self, config: DownloadConfig) -> None:
        progress = Progress(stream=_Log())
        dfget = DfgetRun(config, progress, watcher=self)
        job = asyncio.create_task(dfget.execute(), name=f"mirror-p2p-{self.request.digest[7:19]}")
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=WATCH_INTERVAL)
                if not job.done() and time.monotonic() - self._progress_at > self.request.stall_timeout:
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError, DfgetError):
                        await job
                    self.outcome.fallback = f"the swarm sent nothing for {self.request.stall_timeout:g}s"
                    return
            result = job.result()
        except DfgetError as exc:
            self.outcome.fallback = f"the swarm failed: {exc}"
            return
        except Exception as exc:  # whatever goes wrong in the swarm, the registry still has the blob
            log.exception("blob %s: the dfget run failed unexpectedly", self.request.digest)
            self.outcome.fallback = f"the swarm failed: {exc.__class__.__name__}: {exc}"
            return
        finally:
            if not job.done():
                job.cancel()
                with contextlib.suppress(BaseException):
                    await job
            self.outcome.peer_bytes = progress.counts["peer"]
            self.outcome.cdn_bytes = progress.counts["supernode"]
        if result.length != self.size:
            self.outcome.fallback = f"the swarm delivered {result.length} bytes, the registry has {self.size}"
            self.reset()
            return
        self.published = Path(result.output)

    async def _from_registry(self) -> None:
        req = self.request
        if self._fd < 0:
            req.scratch.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=req.scratch, prefix=".registry-")
            os.unlink(name)  # only this download reads it: it goes when the descriptor is closed
            self._fd = fd
        start = self.available
        headers = {**req.extra, **({"Authorization": req.authorization} if req.authorization else {})}
        if start:
            headers["Range"] = f"bytes={start}-"
        async with req.upstream.request("GET", req.path, headers, scope=req.scope) as (resp, _):
            if resp.status == 206 and start:
                skip = 0
            elif resp.status == 200:
                skip = start
            else:
                raise BlobFailed(f"the registry answered the blob with HTTP {resp.status}")
            offset = start
            async for chunk in resp.content.iter_chunked(CHUNK):
                data = memoryview(chunk)
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                if not data:
                    continue
                if offset + len(data) > self.size:
                    raise BlobFailed(f"the registry sent more than the {self.size} bytes it announced")
                await asyncio.to_thread(_pwrite_all, self._fd, data, offset)
                self.outcome.registry_bytes += len(data)
                offset += len(data)
                self.verified(offset - len(data), len(data))
        if self.available < self.size:
            raise BlobFailed(f"the registry sent {self.available} of {self.size} bytes")

    async def _verify(self) -> None:
        """Hash what was not hashed yet (readers hash nothing); the digest decides whether the last byte goes."""
        fd = self._fd
        while self._hashed < self.size:
            block = await asyncio.to_thread(os.pread, fd, min(HASH_STEP, self.size - self._hashed), self._hashed)
            if not block:
                raise BlobFailed(f"the blob file ends at {self._hashed} of {self.size} bytes")
            self._sha.update(block)
            self._hashed += len(block)
        got = "sha256:" + self._sha.hexdigest()
        if got != self.request.digest:
            raise BlobFailed(f"digest mismatch: the bytes received hash to {got}")
        self.complete = True

    async def _hash_progress(self) -> None:
        """Hash the verified prefix while the blob arrives, so that the check at the end has little left."""
        while not self._hash_stop:
            if self._hashed < min(self.available, self.size) and self._fd >= 0:
                end = min(self.available, self._hashed + HASH_STEP)
                block = await asyncio.to_thread(os.pread, self._fd, end - self._hashed, self._hashed)
                if block and not self._hash_stop:
                    self._sha.update(block)
                    self._hashed += len(block)
                continue
            await self._changed()

    # ------------------------------------------------------------------ reading

    async def send(self, write: Callable[[bytes], Awaitable[None]]) -> int:
        """Write the whole blob through ``write`` as it becomes sendable; ``BlobFailed`` when it cannot be."""
        self._readers += 1
        sent = 0
        try:
            while sent < self.size:
                limit = self.size if self.complete else min(self.available, self.size - 1)
                if sent < limit:
                    block = await asyncio.to_thread(os.pread, self._fd, min(CHUNK, limit - sent), sent)
                    if not block:
                        raise BlobFailed(f"the blob file ends at {sent} bytes")
                    await write(block)
                    sent += len(block)
                    continue
                if self.failed:
                    raise BlobFailed(self.failed)
                if self._finished and not self.complete:
                    raise BlobFailed("the download ended without the blob")
                await self._changed()
            return sent
        finally:
            self._readers -= 1
            self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self._finished and self._readers == 0 and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
