"""Fill the piece cache from the origin, once per task, and keep it trustworthy.

The key decision of this module: the length probe *is* the download. Register sends one GET to the
origin (conditional when a finished copy is on disk, ranged when an interrupted one can be resumed)
and the body of that same response is streamed into pieces. The origin therefore serves a task's
bytes once, and callers serialise :meth:`CdnManager.prepare` per task so that concurrent registrants
never trigger a second fetch.

This module sequences the work; what an origin answer or a ``.meta`` allows is decided in
:mod:`supernode.cdn.validators`, the data file's pieces are written and checked by :mod:`supernode.cdn.datafile`,
and :mod:`supernode.cdn.store` keeps the files.

Invariants:
- a piece is announced to the scheduler (``cdn_piece_done``) only after its wrapped bytes are written
  and its MD5 is recorded, so a peer may fetch it at once;
- ``.md5`` is written, and ``.meta`` says ``success``, only after the whole-file length and MD5 checks
  pass; a cache hit re-verifies every piece against ``.md5`` before anything is served;
- a failed download keeps ``finish=false`` in ``.meta`` when it can be resumed (the origin went away),
  and is discarded when the content itself was wrong (length or MD5 mismatch);
- a resumed download only continues bytes the origin vouches for: ``If-Range`` is sent, and a 206 whose
  ``Content-Range`` or validators do not match the interrupted download is thrown away;
- the bytes stream through: a download holds a few pieces' worth of memory at most, and a cache check
  reads one piece at a time, whatever the file size;
- a blocking write in a worker thread is always waited for (``finish_in_thread``), even when the download
  is cancelled, so its file descriptor is never closed (and reused) under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable

import aiohttp

from dfwire.pieces import HEAD_SIZE, WRAP_SIZE, data_size

from ..cdn.datafile import Partial, finish_in_thread, open_data, scan_partial, seal_piece, verify_cache
from ..cdn.source import SourceClient
from ..cdn.store import CacheMeta, CacheStore
from ..cdn.validators import (
    can_resume,
    content_length,
    continues,
    has_header,
    http_date,
    http_date_ms,
    if_range,
    meta_matches,
    unchanged,
)
from ..changes import TaskChanges
from ..errors import DfCode, DfError, SourceNotFound
from ..metrics import Metrics
from ..models import CdnStatus
from ..progress import ProgressState
from ..ratelimit import TokenBucket
from ..security import SourceNotAllowed
from ..tasks import Task

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class _Fail(Exception):
    """A download failure; ``resumable`` keeps the partial data for a ranged retry."""

    def __init__(self, reason: str, kind: str, *, resumable: bool) -> None:
        super().__init__(reason)
        self.kind = kind
        self.resumable = resumable


def _now_ms() -> int:
    return int(time.time() * 1000)


class CdnManager:
    def __init__(self, *, store: CacheStore, source: SourceClient, progress: ProgressState, metrics: Metrics,
                 rate: int, changes: TaskChanges, piece_size: Callable[[int], int]) -> None:
        self.store = store
        self.changes = changes
        self.source = source
        self.progress = progress
        self.metrics = metrics
        self._bucket = TokenBucket(rate, burst=max(rate // 4, 4 * _CHUNK))
        self._downloads: dict[str, asyncio.Task[None]] = {}
        # The size of a new task's pieces (``Settings.piece_size_for``), decided when the origin first
        # answers with a length; a cached or resumed task keeps the size its data file was cut in.
        self._piece_size = piece_size

    async def prepare(self, task: Task) -> None:
        """Make ``task``'s content available; return once the origin has answered.

        On return the task is SUCCESS (cache hit) or RUNNING (a background download fills the cache).
        Raises ``DfError`` (URL_NOT_REACHABLE or AUTHENTICATION_REQUIRED) when the origin refuses, or
        SYSTEM_ERROR when the cache cannot be read or written; ``task`` is then FAILED with the reason.
        """
        self.metrics.cdn_trigger_total.inc()
        try:
            try:
                await self._prepare(task)
            except OSError as exc:
                raise DfError(DfCode.SYSTEM_ERROR, f"taskID: {task.id}", f"cache access failed: {exc}") from exc
        except DfError as exc:
            self.metrics.cdn_trigger_failed_total.inc()
            task.cdn_status = CdnStatus.FAILED
            task.fail_reason = exc.msg
            raise

    async def _prepare(self, task: Task) -> None:
        """One request to the origin: conditional (finished cache), ranged (resume) or plain.

        The cache is verified *before* it is revalidated, so a corrupt cache costs one plain fetch and
        a 200 to the conditional request can be streamed at once. A second request is sent only when
        the origin answers a resume with a range that does not continue the interrupted download.
        """
        spec = task.spec
        meta = await asyncio.to_thread(self.store.read_meta, spec.task_id)
        if meta is not None and not meta_matches(meta, spec):
            meta = None
        cached: list[str] | None = None
        if meta is not None and meta.finish and meta.success and (meta.etag or meta.last_modified):
            cached = await asyncio.to_thread(verify_cache, self.store, spec.task_id, meta)
            if cached is None:
                self.metrics.cdn_cache_verify_failed_total.inc()
                log.warning("cache of task %s failed verification, fetching again", task.id)
                await asyncio.to_thread(self.store.delete, task.id)
                meta = None
        partial: Partial | None = None
        if meta is not None and cached is None and can_resume(meta, spec.headers):
            partial = await asyncio.to_thread(scan_partial, self.store, spec.task_id, meta)
            if not partial.pieces:
                partial = None
        headers = dict(spec.headers)
        if cached is not None and meta is not None:
            if meta.etag:
                headers["If-None-Match"] = meta.etag
            if meta.last_modified:
                headers["If-Modified-Since"] = http_date(meta.last_modified)
        elif partial is not None and meta is not None:
            headers["Range"] = f"bytes={partial.pieces * data_size(meta.piece_size)}-"
            headers["If-Range"] = if_range(meta)
        resp = await self._open(task, headers)
        try:
            if cached is not None and meta is not None and unchanged(resp.status, resp.headers, meta):
                resp.release()
                await self._serve_from_cache(task, meta, cached)
                return
            if partial is not None and meta is not None and resp.status != 200:
                if resp.status == 206 and continues(resp.headers, meta, partial.pieces * data_size(meta.piece_size)):
                    self._start(task, resp, meta.http_file_len, meta.piece_size, partial, meta)
                    return
                if resp.status in (206, 416):
                    log.info("task %s: the origin cannot continue the interrupted download (HTTP %d %s), "
                             "fetching it whole", task.id, resp.status, resp.headers.get("Content-Range", ""))
                    resp.release()
                    resp = await self._open(task, dict(spec.headers))
            if resp.status in (200, 206):
                if resp.status == 206 and not has_header(spec.headers, "Range"):
                    raise DfError(DfCode.URL_NOT_REACHABLE, f"url: {spec.raw_url}",
                                  "source answered 206 to a request without Range")
                length = content_length(resp.headers)
                self._start(task, resp, length, self._piece_size(length), None, None)
                return
            raise self._refusal(task, resp.status)
        except BaseException:
            resp.release()
            raise

    async def _open(self, task: Task, headers: dict[str, str]) -> aiohttp.ClientResponse:
        url = task.spec.raw_url
        try:
            return await self.source.open(url, headers)
        except TimeoutError:
            raise DfError(DfCode.URL_NOT_REACHABLE, f"url: {url}", "source did not answer in time") from None
        except SourceNotAllowed as exc:
            raise DfError(DfCode.SOURCE_NOT_ALLOWED, f"url: {url}", str(exc)) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DfError(DfCode.URL_NOT_REACHABLE, f"url: {url}", f"source unreachable: {exc}") from None

    def _refusal(self, task: Task, status: int) -> DfError:
        url = task.spec.raw_url
        if status in (401, 403, 407):
            self.metrics.task_failed("source_auth")
            return DfError(DfCode.AUTHENTICATION_REQUIRED, f"url: {url}", f"source answered HTTP {status}")
        reason = "source_not_found" if status in (404, 410) else "source_error"
        self.metrics.task_failed(reason)
        context, msg = f"taskID: {task.id}, url: {url}", f"url not reachable: source answered HTTP {status}"
        if status in (404, 410):
            return SourceNotFound(context, msg)
        return DfError(DfCode.URL_NOT_REACHABLE, context, msg)

    async def _serve_from_cache(self, task: Task, meta: CacheMeta, md5s: list[str]) -> None:
        """Adopt a finished cache entry whose pieces were verified against ``.md5``."""
        task.http_file_length = meta.http_file_len
        task.piece_size = meta.piece_size
        task.file_length = meta.file_length
        task.real_md5 = meta.real_md5
        task.piece_md5s = md5s
        task.cdn_status = CdnStatus.SUCCESS
        for n in range(len(md5s)):
            self.progress.cdn_piece_done(task.id, n)
        self.progress.cdn_complete(task.id)
        self.changes.notify(task.id)
        now = _now_ms()
        meta.interval = now - meta.access_time if meta.access_time else 0
        meta.access_time = now
        await asyncio.to_thread(self.store.write_meta, meta)
        self.metrics.cdn_cache_hit_total.inc()

    def _start(self, task: Task, resp: aiohttp.ClientResponse, length: int, piece_size: int,
               partial: Partial | None, meta: CacheMeta | None) -> None:
        task.http_file_length = length
        task.piece_size = piece_size
        task.cdn_status = CdnStatus.RUNNING
        task.piece_md5s = list(partial.piece_md5s) if partial else []
        task.fail_reason = ""
        for n in range(len(task.piece_md5s)):
            self.progress.cdn_piece_done(task.id, n)
        self.changes.notify(task.id)
        now = _now_ms()
        fresh_meta = CacheMeta(
            task_id=task.id, url=task.spec.task_url, piece_size=piece_size, http_file_len=length,
            biz_id=task.spec.identifier, access_time=now,
            interval=(now - meta.access_time) if meta and meta.access_time else 0, md5=task.spec.md5,
            last_modified=meta.last_modified if partial and meta else http_date_ms(resp.headers.get("Last-Modified")),
            etag=meta.etag if partial and meta else resp.headers.get("ETag", ""),
        )
        job = asyncio.create_task(self._download(task, resp, fresh_meta, partial), name=f"cdn-{task.id[:12]}")
        self._downloads[task.id] = job
        job.add_done_callback(lambda _: self._downloads.pop(task.id, None) if self._downloads.get(task.id) is job
                              else None)

    async def _download(self, task: Task, resp: aiohttp.ClientResponse, meta: CacheMeta,
                        partial: Partial | None) -> None:
        self.metrics.cdn_download_total.inc()
        started = time.monotonic()
        fd = -1
        try:
            await asyncio.to_thread(self.store.write_meta, meta)
            fd = await finish_in_thread(open_data, self.store, task.id, partial, task.piece_size, abandon=os.close)
            await self._stream(task, resp, fd, meta, partial or Partial())
        except asyncio.CancelledError:
            raise
        except _Fail as exc:
            await self._fail(task, meta, str(exc), exc.kind, resumable=exc.resumable)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            await self._fail(task, meta, f"source transfer failed: {exc or type(exc).__name__}", "source_error",
                             resumable=True)
        except OSError as exc:
            await self._fail(task, meta, f"cache write failed: {exc}", "disk", resumable=False)
        except Exception as exc:  # never leave a task RUNNING (clients would wait forever)
            log.exception("task %s: unexpected error while fetching", task.id)
            await self._fail(task, meta, f"internal error: {exc!r}", "other", resumable=False)
        else:
            log.info("task %s fetched: %d bytes in %.2fs", task.id, task.http_file_length,
                     time.monotonic() - started)
        finally:
            resp.release()
            if fd >= 0:
                os.close(fd)

    async def _stream(self, task: Task, resp: aiohttp.ClientResponse, fd: int, meta: CacheMeta,
                      partial: Partial) -> None:
        """Cut the body into pieces; each piece is sealed and written by a worker thread.

        Bytes are copied once, from the socket buffer into a piece-sized frame. While a worker hashes
        and writes one frame, the loop fills the other, so receiving never waits for the disk unless
        the disk is slower than the origin. Writes are strictly ordered (the raw MD5 depends on it).
        """
        piece_size = task.piece_size
        per = data_size(piece_size)
        frames = [bytearray(piece_size), bytearray(piece_size)]
        frame, filled, piece, received = frames[0], 0, partial.pieces, 0
        writing: asyncio.Task[None] | None = None

        async def seal(data_len: int) -> None:
            nonlocal writing, frame, filled, piece
            if writing is not None:
                await writing
            writing = asyncio.create_task(self._write_piece(task, fd, piece, frame, data_len, partial.raw_md5))
            frame = frames[1] if frame is frames[0] else frames[0]
            filled = 0
            piece += 1

        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                await self._bucket.acquire(len(chunk))
                received += len(chunk)
                self.metrics.source_bytes_total.inc(len(chunk))
                self.metrics.cdn_download_size_bytes_total.inc(len(chunk))
                with memoryview(chunk) as view:
                    while view:
                        take = min(per - filled, len(view))
                        frame[HEAD_SIZE + filled:HEAD_SIZE + filled + take] = view[:take]
                        filled += take
                        view = view[take:]
                        if filled == per:
                            await seal(per)
            if filled or piece == 0:
                await seal(filled)
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                # A piece already received is still written, so a resume does not fetch it again. The
                # error that got us here is the one to report; the write's own outcome is only consumed.
                await asyncio.wait({writing})
                if not writing.cancelled():
                    writing.exception()
        expected = task.http_file_length - partial.pieces * per
        if task.http_file_length >= 0 and received != expected:
            raise _Fail(f"source sent {received} of {expected} bytes", "length_mismatch", resumable=True)
        real_md5 = partial.raw_md5.hexdigest()
        if task.spec.md5.strip() and task.spec.md5.strip().lower() != real_md5:
            raise _Fail(f"md5 mismatch: expected {task.spec.md5}, source content has {real_md5}", "md5_mismatch",
                        resumable=False)
        if task.http_file_length < 0:
            task.http_file_length = partial.pieces * per + received
        length = task.http_file_length
        file_length = max(length, 0) + WRAP_SIZE * piece
        await asyncio.to_thread(self.store.write_md5s, task.id, task.piece_md5s, real_md5)
        meta.http_file_len = length
        meta.file_length = file_length
        meta.real_md5 = real_md5
        meta.finish = meta.success = True
        await asyncio.to_thread(self.store.write_meta, meta)
        task.file_length = file_length
        task.real_md5 = real_md5
        task.cdn_status = CdnStatus.SUCCESS
        self.progress.cdn_complete(task.id)
        self.changes.notify(task.id)  # clients holding every piece can finish now

    async def _write_piece(self, task: Task, fd: int, piece_num: int, frame: bytearray, data_len: int,
                           raw_md5: hashlib._Hash) -> None:
        md5_text = await finish_in_thread(seal_piece, fd, piece_num, frame, data_len, task.piece_size,
                                           raw_md5)
        task.piece_md5s.append(md5_text)
        self.progress.cdn_piece_done(task.id, piece_num)
        self.changes.notify(task.id)

    async def _fail(self, task: Task, meta: CacheMeta, reason: str, kind: str, *, resumable: bool) -> None:
        """Keep what a later ranged request can continue, drop the rest, *then* publish FAILED.

        FAILED is set last: it lets the next register fetch again, and that fetch must not race
        with this cleanup (a late ``delete`` would remove the new download's files).
        """
        log.warning("task %s failed: %s", task.id, reason)
        with contextlib.suppress(OSError):
            if resumable and meta.http_file_len > 0 and if_range(meta):
                await asyncio.to_thread(self.store.write_meta, meta)
            else:
                await asyncio.to_thread(self.store.delete, task.id)
        task.fail_reason = reason
        task.cdn_status = CdnStatus.FAILED
        self.progress.cdn_piece_failed(task.id, len(task.piece_md5s))
        self.changes.notify(task.id)
        self.metrics.cdn_download_failed_total.inc()
        self.metrics.task_failed(kind)

    async def stop(self, task_id: str) -> None:
        job = self._downloads.pop(task_id, None)
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    async def close(self) -> None:
        for task_id in list(self._downloads):
            await self.stop(task_id)
