"""Fill the piece cache from the origin, once per task, and keep it trustworthy.

The key decision of this module: the length probe *is* the download. Register sends one GET to the
origin (conditional when a finished copy is on disk, ranged when an interrupted one can be resumed)
and the body of that same response is streamed into pieces. The origin therefore serves a task's
bytes once, and callers serialise :meth:`CdnManager.prepare` per task so that concurrent registrants
never trigger a second fetch.

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
- a blocking write in a worker thread is always waited for, even when the download is cancelled, so
  its file descriptor is never closed (and reused) under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import TypeVar

import aiohttp

from dfwire.pieces import HEAD_SIZE, TAIL_BYTE, WRAP_SIZE, data_size, piece_head, piece_md5_text, piece_size_for

from ..cdn.source import SourceClient
from ..cdn.store import CacheMeta, CacheStore
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
_T = TypeVar("_T")


class _Fail(Exception):
    """A download failure; ``resumable`` keeps the partial data for a ranged retry."""

    def __init__(self, reason: str, kind: str, *, resumable: bool) -> None:
        super().__init__(reason)
        self.kind = kind
        self.resumable = resumable


@dataclass
class _Partial:
    """What an interrupted download left on disk: complete pieces and their hashes."""

    pieces: int = 0
    piece_md5s: list[str] = field(default_factory=list)
    raw_md5: hashlib._Hash = field(default_factory=hashlib.md5)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _http_date_ms(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return 0


def _http_date(ms: int) -> str:
    return format_datetime(datetime.fromtimestamp(ms / 1000, UTC), usegmt=True)


def _content_length(resp: aiohttp.ClientResponse) -> int:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else -1


def _content_range_total(resp: aiohttp.ClientResponse) -> tuple[int, int]:
    """``(start, total)`` of a ``Content-Range: bytes a-b/total`` header, -1 where absent."""
    value = resp.headers.get("Content-Range", "")
    try:
        unit_range, _, total = value.partition("/")
        start = int(unit_range.split()[1].split("-")[0])
        return start, int(total) if total.isdigit() else -1
    except (IndexError, ValueError):
        return -1, -1


def _has_header(headers: dict[str, str], name: str) -> bool:
    return any(k.lower() == name.lower() for k in headers)


def _if_range(meta: CacheMeta) -> str:
    """The ``If-Range`` validator for resuming ``meta``'s download ("" when there is none usable).

    ``If-Range`` needs a strong comparison, so a weak ETag cannot be used; the date is the fallback.
    """
    if meta.etag and not meta.etag.startswith("W/"):
        return meta.etag
    return _http_date(meta.last_modified) if meta.last_modified else ""


async def _finish_in_thread(fn: Callable[..., _T], *args: object,
                            abandon: Callable[[_T], None] | None = None) -> _T:
    """Run blocking ``fn`` in a worker thread and wait for it to finish even if we are cancelled.

    A thread cannot be interrupted; returning early would let the caller close a file descriptor
    the thread is still writing to. On cancellation the result is handed to ``abandon`` (e.g. to
    close a descriptor that was just opened) and ``CancelledError`` is raised once the thread is done.
    """
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait({job})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if abandon is not None and job.exception() is None:
            abandon(job.result())
        raise asyncio.CancelledError
    return job.result()


class CdnManager:
    def __init__(self, *, store: CacheStore, source: SourceClient, progress: ProgressState, metrics: Metrics,
                 rate: int, changes: TaskChanges) -> None:
        self.store = store
        self.changes = changes
        self.source = source
        self.progress = progress
        self.metrics = metrics
        self._bucket = TokenBucket(rate, burst=max(rate // 4, 4 * _CHUNK))
        self._downloads: dict[str, asyncio.Task[None]] = {}

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
        if meta is not None and not self._meta_matches(meta, task):
            meta = None
        cached: list[str] | None = None
        if meta is not None and meta.finish and meta.success and (meta.etag or meta.last_modified):
            cached = await asyncio.to_thread(self._verify_cache, spec.task_id, meta)
            if cached is None:
                self.metrics.cdn_cache_verify_failed_total.inc()
                log.warning("cache of task %s failed verification, fetching again", task.id)
                await asyncio.to_thread(self.store.delete, task.id)
                meta = None
        partial: _Partial | None = None
        if meta is not None and cached is None and self._resumable(meta, task):
            partial = await asyncio.to_thread(self._scan_partial, spec.task_id, meta)
            if not partial.pieces:
                partial = None
        headers = dict(spec.headers)
        if cached is not None and meta is not None:
            if meta.etag:
                headers["If-None-Match"] = meta.etag
            if meta.last_modified:
                headers["If-Modified-Since"] = _http_date(meta.last_modified)
        elif partial is not None and meta is not None:
            headers["Range"] = f"bytes={partial.pieces * data_size(meta.piece_size)}-"
            headers["If-Range"] = _if_range(meta)
        resp = await self._open(task, headers)
        try:
            if cached is not None and meta is not None and self._unchanged(resp, meta):
                resp.release()
                await self._serve_from_cache(task, meta, cached)
                return
            if partial is not None and meta is not None and resp.status != 200:
                if resp.status == 206 and self._continues(resp, meta, partial):
                    self._start(task, resp, meta.http_file_len, meta.piece_size, partial, meta)
                    return
                if resp.status in (206, 416):
                    log.info("task %s: the origin cannot continue the interrupted download (HTTP %d %s), "
                             "fetching it whole", task.id, resp.status, resp.headers.get("Content-Range", ""))
                    resp.release()
                    resp = await self._open(task, dict(spec.headers))
            if resp.status in (200, 206):
                if resp.status == 206 and not _has_header(spec.headers, "Range"):
                    raise DfError(DfCode.URL_NOT_REACHABLE, f"url: {spec.raw_url}",
                                  "source answered 206 to a request without Range")
                length = _content_length(resp)
                self._start(task, resp, length, piece_size_for(length), None, None)
                return
            raise self._refusal(task, resp.status)
        except BaseException:
            resp.release()
            raise

    @staticmethod
    def _resumable(meta: CacheMeta, task: Task) -> bool:
        """An unfinished download of known length whose origin gave a validator usable in ``If-Range``."""
        return (not meta.finish and meta.http_file_len > 0 and bool(_if_range(meta))
                and not _has_header(task.spec.headers, "Range"))

    @staticmethod
    def _continues(resp: aiohttp.ClientResponse, meta: CacheMeta, partial: _Partial) -> bool:
        """A 206 that is exactly the rest of the interrupted download, of the same content."""
        start, total = _content_range_total(resp)
        if start != partial.pieces * data_size(meta.piece_size) or total != meta.http_file_len:
            return False
        etag = resp.headers.get("ETag")
        if etag is not None and meta.etag and etag != meta.etag:
            return False
        modified = resp.headers.get("Last-Modified")
        return modified is None or not meta.last_modified or _http_date_ms(modified) == meta.last_modified

    def _meta_matches(self, meta: CacheMeta, task: Task) -> bool:
        spec = task.spec
        if meta.task_id != spec.task_id or meta.url != spec.task_url:
            return False
        if spec.md5.strip():
            return meta.md5 == spec.md5
        return meta.biz_id == spec.identifier

    def _unchanged(self, resp: aiohttp.ClientResponse, meta: CacheMeta) -> bool:
        """304, or a 200 that carries the very validators we stored (an origin ignoring conditionals)."""
        if resp.status == 304:
            return True
        if resp.status != 200:
            return False
        length = _content_length(resp)
        if length >= 0 and length != meta.http_file_len:
            return False
        etag = resp.headers.get("ETag", "")
        modified = _http_date_ms(resp.headers.get("Last-Modified"))
        same_etag = bool(meta.etag) and etag == meta.etag
        same_date = bool(meta.last_modified) and modified == meta.last_modified
        return (same_etag or not meta.etag) and (same_date or not meta.last_modified) and (same_etag or same_date)

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
        self.changes.notify(task.id)
        now = _now_ms()
        meta.interval = now - meta.access_time if meta.access_time else 0
        meta.access_time = now
        await asyncio.to_thread(self.store.write_meta, meta)
        self.metrics.cdn_cache_hit_total.inc()

    def _verify_cache(self, task_id: str, meta: CacheMeta) -> list[str] | None:
        sealed = self.store.read_md5s(task_id)
        if sealed is None or sealed[1] != meta.real_md5:
            return None
        piece_md5s, real_md5 = sealed
        if self.store.data_size(task_id) != meta.file_length:
            return None
        raw = hashlib.md5()
        try:
            fd = os.open(self.store.data_path(task_id), os.O_RDONLY)
        except OSError:
            return None
        try:
            for n, expected in enumerate(piece_md5s):
                length_text = expected.rpartition(":")[2]
                if not length_text.isdigit() or not 0 < int(length_text) <= meta.piece_size:
                    return None
                block = os.pread(fd, int(length_text), n * meta.piece_size)
                if piece_md5_text(hashlib.md5(block).hexdigest(), len(block)) != expected:
                    return None
                raw.update(block[HEAD_SIZE:-1])
        finally:
            os.close(fd)
        return piece_md5s if raw.hexdigest() == real_md5 else None

    def _scan_partial(self, task_id: str, meta: CacheMeta) -> _Partial:
        """Complete, well-framed pieces at the start of an interrupted download.

        At least one byte is always left to fetch, so the ranged request can never be unsatisfiable
        (all full pieces of a file whose length is a multiple of the piece data size may be on disk).
        """
        partial = _Partial()
        piece_size = meta.piece_size
        per = data_size(piece_size)
        head = piece_head(per, piece_size)
        limit = (meta.http_file_len - 1) // per
        try:
            fd = os.open(self.store.data_path(task_id), os.O_RDONLY)
        except OSError:
            return partial
        try:
            while partial.pieces < limit:
                block = os.pread(fd, piece_size, partial.pieces * piece_size)
                if len(block) != piece_size or block[:HEAD_SIZE] != head or block[-1] != TAIL_BYTE:
                    return partial
                partial.piece_md5s.append(piece_md5_text(hashlib.md5(block).hexdigest(), piece_size))
                partial.raw_md5.update(block[HEAD_SIZE:-1])
                partial.pieces += 1
            return partial
        finally:
            os.close(fd)

    def _open_data(self, task_id: str, partial: _Partial | None, piece_size: int) -> int:
        """The data file to write: fresh, or the interrupted one cut back to its complete pieces."""
        if partial is None:
            return self.store.open_fresh(task_id)
        fd = self.store.open_existing(task_id)
        try:
            os.ftruncate(fd, partial.pieces * piece_size)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _start(self, task: Task, resp: aiohttp.ClientResponse, length: int, piece_size: int,
               partial: _Partial | None, meta: CacheMeta | None) -> None:
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
            last_modified=meta.last_modified if partial and meta else _http_date_ms(resp.headers.get("Last-Modified")),
            etag=meta.etag if partial and meta else resp.headers.get("ETag", ""),
        )
        job = asyncio.create_task(self._download(task, resp, fresh_meta, partial), name=f"cdn-{task.id[:12]}")
        self._downloads[task.id] = job
        job.add_done_callback(lambda _: self._downloads.pop(task.id, None) if self._downloads.get(task.id) is job
                              else None)

    async def _download(self, task: Task, resp: aiohttp.ClientResponse, meta: CacheMeta,
                        partial: _Partial | None) -> None:
        self.metrics.cdn_download_total.inc()
        started = time.monotonic()
        fd = -1
        try:
            await asyncio.to_thread(self.store.write_meta, meta)
            fd = await _finish_in_thread(self._open_data, task.id, partial, task.piece_size, abandon=os.close)
            await self._stream(task, resp, fd, meta, partial or _Partial())
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
                      partial: _Partial) -> None:
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
        file_length = max(length, 0) + 5 * piece
        await asyncio.to_thread(self.store.write_md5s, task.id, task.piece_md5s, real_md5)
        meta.http_file_len = length
        meta.file_length = file_length
        meta.real_md5 = real_md5
        meta.finish = meta.success = True
        await asyncio.to_thread(self.store.write_meta, meta)
        task.file_length = file_length
        task.real_md5 = real_md5
        task.cdn_status = CdnStatus.SUCCESS
        self.changes.notify(task.id)  # clients holding every piece can finish now

    async def _write_piece(self, task: Task, fd: int, piece_num: int, frame: bytearray, data_len: int,
                           raw_md5: hashlib._Hash) -> None:
        md5_text = await _finish_in_thread(self._seal_piece, fd, piece_num, frame, data_len, task.piece_size,
                                           raw_md5)
        task.piece_md5s.append(md5_text)
        self.progress.cdn_piece_done(task.id, piece_num)
        self.changes.notify(task.id)

    @staticmethod
    def _seal_piece(fd: int, piece_num: int, frame: bytearray, data_len: int, piece_size: int,
                    raw_md5: hashlib._Hash) -> str:
        """Frame the data in place (head, tail), hash it, write it at the piece's offset."""
        frame[:HEAD_SIZE] = piece_head(data_len, piece_size)
        frame[HEAD_SIZE + data_len] = TAIL_BYTE
        framed = memoryview(frame)[:data_len + WRAP_SIZE]
        raw_md5.update(framed[HEAD_SIZE:HEAD_SIZE + data_len])
        digest = hashlib.md5(framed).hexdigest()
        offset, view = piece_num * piece_size, framed
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        return piece_md5_text(digest, data_len + WRAP_SIZE)

    async def _fail(self, task: Task, meta: CacheMeta, reason: str, kind: str, *, resumable: bool) -> None:
        """Keep what a later ranged request can continue, drop the rest, *then* publish FAILED.

        FAILED is set last: it lets the next register fetch again, and that fetch must not race
        with this cleanup (a late ``delete`` would remove the new download's files).
        """
        log.warning("task %s failed: %s", task.id, reason)
        with contextlib.suppress(OSError):
            if resumable and meta.http_file_len > 0 and _if_range(meta):
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
