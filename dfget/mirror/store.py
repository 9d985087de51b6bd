"""The node's blobs: the verified ones on disk, and the ones in flight that later requests join.

Layout under ``{home}/mirror``: ``blobs/sha256/<hex>`` holds blobs whose digest was checked here;
``incoming/`` holds the outputs of dfget runs until their digest is checked (a mismatch deletes
them). A second request for a blob in flight joins the same :class:`BlobDownload` instead of
starting another swarm download, as containerd does when two images share a layer.

The verified blobs are kept up to a size limit: when a new one pushes the total over it, the least
recently used ones (by modification time, which a cache hit refreshes) are deleted. The uploader
keeps serving a deleted blob's pieces until its own expiry (its file is a hard link of the same data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from .blobs import BlobDownload, BlobRequest
from .metrics import MirrorMetrics

log = logging.getLogger(__name__)


class BlobStore:
    def __init__(self, root: Path, metrics: MirrorMetrics, *, limit: int) -> None:
        self.root = root
        self.limit = limit
        self.blobs = root / "blobs" / "sha256"
        self.incoming = root / "incoming"
        self.metrics = metrics
        self._inflight: dict[str, BlobDownload] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        #: Blobs whose copy in the swarm did not match their digest: the next pull goes to the registry.
        self.swarm_refused: set[str] = set()
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def cached(self, digest: str) -> Path | None:
        """The verified local copy of ``digest``, if the node has one."""
        path = self.blobs / digest.removeprefix("sha256:")
        return path if path.is_file() else None

    def used(self, path: Path) -> None:
        """A cache hit: the blob becomes the most recently used."""
        with contextlib.suppress(OSError):
            os.utime(path)

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in self.blobs.iterdir():
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.limit:
                return
            if path == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                log.info("evicted blob sha256:%s (%d bytes) from the node's cache", path.name, size)

    def incoming_path(self, digest: str) -> Path:
        return self.incoming / digest.removeprefix("sha256:")

    def inflight(self, digest: str) -> BlobDownload | None:
        return self._inflight.get(digest)

    def start(self, request: BlobRequest) -> BlobDownload:
        """The download of ``request.digest``: the one in flight, or a new one started now."""
        running = self._inflight.get(request.digest)
        if running is not None:
            return running
        download = BlobDownload(request, on_done=self._done)
        self._inflight[request.digest] = download
        job = asyncio.create_task(download.run(), name=f"mirror-blob-{request.digest[7:19]}")
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return download

    async def _done(self, download: BlobDownload) -> None:
        digest = download.request.digest
        self._inflight.pop(digest, None)
        outcome = download.outcome
        self.metrics.record(outcome, complete=download.complete, size=download.size)
        if not download.complete and download.published is not None:
            log.warning("blob %s: the swarm's copy is bad; its next pull comes from the registry", digest)
            self.swarm_refused.add(digest)
        published = download.published
        if published is None:
            return
        try:
            if download.complete:
                kept = self.blobs / digest.removeprefix("sha256:")
                await asyncio.to_thread(os.replace, published, kept)
                await asyncio.to_thread(os.utime, kept)
                await asyncio.to_thread(self._evict, kept)
            else:
                await asyncio.to_thread(published.unlink, True)
        except OSError as exc:
            log.warning("cannot keep blob %s: %s", digest, exc)

    async def close(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        for job in list(self._jobs):
            with contextlib.suppress(asyncio.CancelledError):
                await job
