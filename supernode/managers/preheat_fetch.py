"""A file preheat's work: one URL put into the CDN exactly as the first dfget register of it would put it.

The task is admitted through :class:`~supernode.managers.task.TaskManager`, so it gets the same task ID
and the same single-origin-fetch guarantee as a register, and the fetch waits for the CDN to finish.
There is no local dfget subprocess as in the Go supernode: the supernode's own CDN is the cache dfget
reads. An image's blob (a record with ``expected``) is then checked against its manifest digest; a
mismatch deletes the cached copy, because the CDN itself stores whatever the origin sends.

This is the only part of a preheat that deals with CDN tasks and cache files, and it sees one record
at a time: which records run, wait or are joined is :mod:`supernode.managers.preheat`'s business.
It is also where a cancelled preheat lets go of the CDN: the download it started stops unless a dfget
client has joined that task, and whatever was written stays marked unfinished (``.meta`` ``finish=false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from dfwire.ids import filter_url_param, split_filter, task_id
from dfwire.pieces import unwrap
from dfwire.registry import parse_digest

from ..cdn.store import CacheStore
from ..errors import DfError
from ..metrics import Metrics
from ..models import CdnStatus
from ..tasks import Task, TaskSpec
from .preheat_record import Preheat, PreheatFailed
from .task import TaskManager

CALL_SYSTEM = "dragonfly_preheat"
_POLL_FIRST, _POLL_MAX = 0.02, 0.5


class PreheatFetcher:
    """Fetches file and layer records into the CDN through the task manager."""

    def __init__(self, *, tasks: TaskManager, metrics: Metrics) -> None:
        self.tasks = tasks
        self.metrics = metrics

    @property
    def store(self) -> CacheStore:
        return self.tasks.cdn.store

    async def fetch(self, record: Preheat) -> None:
        """Fetch one URL into the CDN through the task manager, as a dfget register would."""
        task_url = filter_url_param(record.url, split_filter(record.filter))
        headers = dict(record.headers)
        spec = TaskSpec(
            task_id=task_id(task_url, identifier=record.identifier, headers=headers),
            raw_url=record.url,
            task_url=task_url,
            identifier=record.identifier,
            headers=headers,
            call_system=CALL_SYSTEM,
            tls=record.tls,
        )
        record.task_id = spec.task_id
        try:
            task = await self._admit(spec)
        except DfError as exc:
            raise PreheatFailed(f"source refused: {exc.msg}") from None
        try:
            await self._until_fetched(task)
        except BaseException:
            await self._abandon(task)
            raise
        if record.expected is not None:
            await self._verify(record, task)
        record.bytes = max(task.http_file_length, 0)
        self.metrics.preheat_bytes_total.labels(type=record.metric_type).inc(record.bytes)

    async def _admit(self, spec: TaskSpec) -> Task:
        """Admit ``spec`` as a register does; a cancellation waits for the admission to complete.

        Admission is short (bounded by the source's header timeout) but updates several records of
        the task manager; interrupting it halfway would leave them inconsistent. Once it is done, the
        download it started is stopped if nobody else uses it.
        """
        job = asyncio.ensure_future(self.tasks.admit(spec))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            await asyncio.wait({job})
            if not job.cancelled() and job.exception() is None:
                await self._abandon(job.result())
            raise

    async def _until_fetched(self, task: Task) -> None:
        """Wait for the CDN to finish ``task``; bounded by the caller's timeout."""
        delay = _POLL_FIRST
        while True:
            if task.cdn_status == CdnStatus.SUCCESS:
                return
            if task.cdn_status in (CdnStatus.FAILED, CdnStatus.SOURCE_ERROR):
                raise PreheatFailed(f"CDN fetch failed: {task.fail_reason or 'no reason given'}")
            if self.tasks.tasks.get(task.id) is not task:
                raise PreheatFailed("the CDN task was deleted while it was being fetched")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX)

    async def _abandon(self, task: Task) -> None:
        """Stop a download this preheat started and nobody else uses; its partial cache stays unfinished."""
        if task.cdn_status == CdnStatus.RUNNING and not task.clients and self.tasks.tasks.get(task.id) is task:
            with contextlib.suppress(DfError):
                await self.tasks.delete(task.id)

    async def _verify(self, record: Preheat, task: Task) -> None:
        """The cached raw bytes must be the blob the manifest names; otherwise the copy is deleted."""
        expected = record.expected
        assert expected is not None
        algorithm, want = parse_digest(expected.digest)
        got, size = await asyncio.to_thread(self._raw_digest, task.id, algorithm)
        if got == want and (expected.size < 0 or size == expected.size):
            return
        with contextlib.suppress(DfError):
            await self.tasks.delete(task.id, full=True)
        raise PreheatFailed(
            f"digest mismatch: the registry sent {size} bytes with {algorithm}:{got}, the manifest "
            f"promises {expected.size} bytes with {expected.digest}; the cached copy was deleted"
        )

    def _raw_digest(self, tid: str, algorithm: str) -> tuple[str, int]:
        """Digest and length of a finished cache entry's raw content (the pieces unwrapped)."""
        meta = self.store.read_meta(tid)
        if meta is None or not (meta.finish and meta.success):
            raise PreheatFailed("the CDN cache entry is not complete")
        digest = hashlib.new(algorithm)
        size = 0
        with open(self.store.data_path(tid), "rb") as fh:
            for block in iter(lambda: fh.read(meta.piece_size), b""):
                try:
                    data = unwrap(block)
                except ValueError as exc:
                    raise PreheatFailed(f"the CDN cache file is corrupt: {exc}") from None
                digest.update(data)
                size += len(data)
        return digest.hexdigest(), size
