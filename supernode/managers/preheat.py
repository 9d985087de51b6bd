"""Preheat: put files and image layers into the CDN before the first dfget asks for them.

A *file* preheat is exactly what the first dfget register of that URL would trigger: the task is
admitted through :class:`~supernode.managers.task.TaskManager` (so it gets the same task ID and the
same single-origin-fetch guarantee) and the preheat waits for the CDN to finish. There is no local
dfget subprocess as in the Go supernode: the supernode's own CDN is the cache dfget reads.

An *image* preheat reads a registry v2 manifest (following an index to its platform manifests),
authenticates as ``docker pull`` does, and starts one file preheat per blob (config and layers), each
a record of its own (``children``) whose task ID is the plain blob URL's, which is what dfget and
dfdaemon register later. The parent fails as soon as one child fails and succeeds when all have.
Layer bytes are checked against their manifest digest after the CDN has them; a mismatch deletes the
cached copy, because the CDN itself stores whatever the origin sends.

Invariants:
- one record per preheat ID; a record runs at most one job at a time, so a repeated request joins the
  running job instead of starting a second one (the Go supernode started another worker);
- a layer record can serve several images; it is cancelled only when no running image waits for it
  and nobody asked for it directly;
- cancelling a preheat (DELETE, timeout) stops the CDN download it started unless a dfget client has
  joined that task; whatever was written stays marked unfinished (``.meta`` ``finish=false``);
- every wait is bounded: a preheat's running time by ``preheat_timeout``, the number of running
  preheats by ``preheat_concurrency``, the layers of one image fetched at once by
  ``preheat_layer_concurrency``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

import aiohttp

from dfwire.ids import filter_url_param, preheat_id, split_filter, task_id
from dfwire.pieces import unwrap
from dfwire.registry import (
    MANIFEST_ACCEPT,
    Challenge,
    Descriptor,
    ImageRef,
    Manifest,
    ManifestKind,
    Platform,
    RegistryError,
    digest_of,
    parse_challenges,
    parse_digest,
    parse_manifest,
    parse_manifest_url,
    parse_token_answer,
    registry_error_text,
    select_manifests,
    token_request_url,
)

from ..cdn.source import TlsOptions
from ..cdn.store import CacheStore
from ..config import Settings
from ..errors import DfCode, DfError, not_found
from ..metrics import Metrics
from ..models import CdnStatus
from ..preheat_models import PreheatCreateRequest, PreheatInfo, PreheatStatus, PreheatType
from ..security import AllowListConnector, SourceAllowList
from ..tasks import Task, TaskSpec
from .task import TaskManager

log = logging.getLogger(__name__)

CALL_SYSTEM = "dragonfly_preheat"
_MANIFEST_LIMIT = 4 * 1024 * 1024
_TOKEN_LIMIT = 1024 * 1024
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
_HASH_CHUNK = 1024 * 1024


class PreheatFailed(Exception):
    """The preheat cannot succeed; the text becomes its ``errorMsg``."""


class Outcome(enum.Enum):
    """What ``POST /preheats`` did; the API turns it into 201, 200 or 208."""

    CREATED = "created"
    """A new preheat, or a new attempt of a FAILED one (or of one whose cached content is gone)."""
    RUNNING = "running"
    """The same preheat is already waiting or running: joined, nothing new started."""
    DONE = "done"
    """The same preheat already succeeded and its content is still cached."""


@dataclass(eq=False)
class Preheat:
    """One preheat record (Go's PreheatTask). Times are Unix seconds, 0 while unset."""

    id: str
    type: PreheatType
    url: str
    filter: str = ""
    identifier: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    tls: TlsOptions = field(default_factory=TlsOptions)
    expected: Descriptor | None = None
    """For an image's blob: the digest and size the manifest promises."""
    status: PreheatStatus = PreheatStatus.WAITING
    start_time: float = 0.0
    finish_time: float = 0.0
    error_msg: str = ""
    children: list[str] = field(default_factory=list)
    waiters: set[str] = field(default_factory=set)
    """Image preheats currently waiting for this record (a layer shared by several images)."""
    requested: bool = False
    """Asked for through the API, not only started as an image's layer."""
    task_id: str = ""
    """The CDN task of a file or layer preheat."""
    bytes: int = 0
    job: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metric_type(self) -> str:
        """Layers count as image bytes, whatever their own record type."""
        return PreheatType.IMAGE.value if self.expected is not None else self.type.value

    def info(self) -> PreheatInfo:
        return PreheatInfo(id=self.id, start_time=datetime.fromtimestamp(self.start_time, UTC),
                           finish_time=datetime.fromtimestamp(self.finish_time, UTC), status=self.status,
                           error_msg=self.error_msg or None, type=self.type, url=self.url,
                           children=list(self.children) or None)


def _tls_for(req: PreheatCreateRequest) -> TlsOptions:
    """The CDN's TLS options carry CAs as dfget sends them: base64 of the PEM text."""
    cas = (base64.b64encode(req.ca_cert.encode()).decode(),) if req.ca_cert else ()
    return TlsOptions(insecure=req.insecure, root_cas=cas)


class PreheatManager:
    def __init__(self, *, settings: Settings, tasks: TaskManager, metrics: Metrics) -> None:
        self.settings = settings
        self.tasks = tasks
        self.metrics = metrics
        self.records: dict[str, Preheat] = {}
        self._slots = asyncio.Semaphore(settings.preheat_concurrency)
        self._gc_loop: asyncio.Task[None] | None = None

    @property
    def store(self) -> CacheStore:
        return self.tasks.cdn.store

    # ------------------------------------------------------------------ API

    async def create(self, req: PreheatCreateRequest) -> tuple[Preheat, Outcome]:
        """Start a preheat, or return the one with the same ID (see :class:`Outcome`).

        The ID does not cover the type or the platform filter (§2.1 item 7), so a request with the
        same ID that asks for something else is refused (``DfError`` TASK_ID_DUPLICATE, 409) while
        the preheat runs, and replaces it once it has finished.
        """
        headers = dict(req.headers or {})
        platforms = tuple(dict.fromkeys(Platform.parse(p) for p in req.platforms or ()))
        pid = preheat_id(req.url, filter_text=req.filter, identifier=req.identifier, headers=headers)

        def same(record: Preheat) -> bool:
            return record.type == req.type and set(record.platforms) == set(platforms)

        record = self.records.get(pid)
        if (record is not None and record.status == PreheatStatus.SUCCESS and same(record)
                and await self._still_cached(record) and self.records.get(pid) is record
                and record.status == PreheatStatus.SUCCESS):
            record.requested = True
            return record, Outcome.DONE
        record = self.records.get(pid)  # no await from here on: decide and act in one step
        if record is not None and not record.status.finished:
            if not same(record):
                wanted = f"a {req.type} preheat" + (f" for {', '.join(map(str, platforms))}" if platforms else "")
                raise DfError(DfCode.TASK_ID_DUPLICATE, f"preheat {pid}",
                              f"preheat {pid} of {record.url} is running for another request than {wanted}; "
                              f"use another identifier")
            record.requested = True
            return record, Outcome.RUNNING
        if record is None:
            record = Preheat(id=pid, type=req.type, url=req.url)
            self.records[pid] = record
        # A new attempt takes the new request whole: a filtered query parameter (a signed URL's
        # signature) or the credentials may have changed since the failed one.
        record.type, record.url, record.filter, record.identifier = req.type, req.url, req.filter, req.identifier
        record.headers, record.platforms, record.tls, record.requested = headers, platforms, _tls_for(req), True
        self._launch(record, top=True)
        return record, Outcome.CREATED

    def get(self, pid: str) -> Preheat:
        record = self.records.get(pid)
        if record is None:
            raise not_found(f"preheat {pid}")
        return record

    def list(self) -> list[Preheat]:
        return list(self.records.values())

    async def delete(self, pid: str) -> None:
        """Forget a preheat and the layer records only it refers to; stop its work if it runs."""
        record = self.get(pid)
        del self.records[pid]
        if record.job is not None and not record.job.done():
            record.job.cancel()
            await asyncio.gather(record.job, return_exceptions=True)
        referenced = self._referenced()
        for cid in record.children:
            child = self.records.get(cid)
            if child is not None and not child.requested and cid not in referenced:
                del self.records[cid]
                if child.job is not None and not child.job.done():
                    child.job.cancel()
                    await asyncio.gather(child.job, return_exceptions=True)

    def counts(self) -> Counter[tuple[str, str]]:
        """``(type, status)`` -> number of preheats asked for through the API, for the metrics gauge."""
        return Counter((r.type.value, r.status.value) for r in self.records.values() if r.requested)

    # ------------------------------------------------------------------ lifecycle and GC

    def start(self) -> None:
        if self._gc_loop is None:
            self._gc_loop = asyncio.create_task(self._gc_every(), name="gc-preheat")

    async def stop(self) -> None:
        jobs = [j for j in (self._gc_loop, *(r.job for r in self.records.values())) if j is not None]
        self._gc_loop = None
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    async def _gc_every(self) -> None:
        interval = max(self.settings.preheat_gc_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                collected = self.collect(time.time())
            except Exception:
                log.exception("preheat garbage collection failed; retrying in %.0fs", interval)
            else:
                if collected:
                    log.info("gc: %d finished preheats collected", collected)

    def collect(self, now: float) -> int:
        """Forget preheats finished ``preheat_gc_threshold`` ago (the spec's PreheatGCThreshold).

        A layer record stays while an image that is still kept lists it, so ``children`` never
        names a record that cannot be read.
        """
        threshold = self.settings.preheat_gc_threshold
        expired = {pid for pid, r in self.records.items() if r.status.finished and now - r.finish_time >= threshold}
        kept_children = {cid for pid, r in self.records.items() if pid not in expired for cid in r.children}
        victims = expired - kept_children
        for pid in victims:
            del self.records[pid]
        return len(victims)

    def _referenced(self) -> set[str]:
        return {cid for r in self.records.values() for cid in r.children}

    # ------------------------------------------------------------------ running

    def _launch(self, record: Preheat, *, top: bool) -> None:
        record.status = PreheatStatus.WAITING
        record.start_time, record.finish_time = time.time(), 0.0
        record.error_msg, record.bytes = "", 0
        record.done = asyncio.Event()
        if record.type == PreheatType.IMAGE:
            record.children = []
        record.job = asyncio.create_task(self._run(record, top=top), name=f"preheat-{record.id[:12]}")

    async def _run(self, record: Preheat, *, top: bool) -> None:
        """One attempt of ``record``; always ends with the record SUCCESS or FAILED."""
        try:
            if top:
                async with self._slots:
                    await self._running(record)
            else:
                await self._running(record)
        except asyncio.CancelledError:
            self._finish(record, PreheatStatus.FAILED, "cancelled")
            raise
        except PreheatFailed as exc:
            self._finish(record, PreheatStatus.FAILED, str(exc))
        except Exception as exc:  # never leave a preheat RUNNING
            log.exception("preheat %s: unexpected error", record.id)
            self._finish(record, PreheatStatus.FAILED, f"internal error: {exc!r}")
        else:
            self._finish(record, PreheatStatus.SUCCESS)

    async def _running(self, record: Preheat) -> None:
        """The work, under the per-preheat timeout (time spent waiting for a slot does not count)."""
        record.status = PreheatStatus.RUNNING
        limit = self.settings.preheat_timeout
        try:
            async with asyncio.timeout(limit) as deadline:
                if record.type == PreheatType.IMAGE:
                    await self._image(record)
                else:
                    await self._leaf(record)
        except TimeoutError as exc:
            if deadline.expired():
                raise PreheatFailed(f"timeout: not finished within {limit:g}s") from None
            raise PreheatFailed(f"timed out talking to the source: {exc or type(exc).__name__}") from None

    def _finish(self, record: Preheat, status: PreheatStatus, message: str = "") -> None:
        if record.status.finished:
            return
        record.status, record.error_msg, record.finish_time = status, message, time.time()
        record.done.set()
        if record.requested:
            labels = {"type": record.type.value, "status": status.value}
            self.metrics.preheats_finished_total.labels(**labels).inc()
            self.metrics.preheat_duration_seconds.labels(**labels).observe(max(record.finish_time
                                                                               - record.start_time, 0.0))
        if status == PreheatStatus.FAILED:
            log.warning("preheat %s of %s failed: %s", record.id, record.url, message)
        else:
            log.info("preheat %s of %s succeeded in %.2fs", record.id, record.url,
                     record.finish_time - record.start_time)

    # ------------------------------------------------------------------ files and layers

    async def _leaf(self, record: Preheat) -> None:
        """Fetch one URL into the CDN through the task manager, as a dfget register would."""
        task_url = filter_url_param(record.url, split_filter(record.filter))
        headers = dict(record.headers)
        spec = TaskSpec(task_id=task_id(task_url, identifier=record.identifier, headers=headers), raw_url=record.url,
                        task_url=task_url, identifier=record.identifier, headers=headers, call_system=CALL_SYSTEM,
                        tls=record.tls)
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
        raise PreheatFailed(f"digest mismatch: the registry sent {size} bytes with {algorithm}:{got}, the manifest "
                            f"promises {expected.size} bytes with {expected.digest}; the cached copy was deleted")

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

    async def _still_cached(self, record: Preheat) -> bool:
        """A SUCCESS is only worth returning while its content is still in the cache (disk GC may evict it)."""
        leaves = [record] if record.type == PreheatType.FILE else [self.records.get(c) for c in record.children]
        task_ids = [leaf.task_id if leaf is not None else "" for leaf in leaves]
        if not task_ids or not all(task_ids):
            return False

        def complete(ids: Iterable[str]) -> bool:
            for tid in ids:
                meta = self.store.read_meta(tid)
                if meta is None or not (meta.finish and meta.success):
                    return False
            return True

        return await asyncio.to_thread(complete, task_ids)

    # ------------------------------------------------------------------ images

    async def _image(self, record: Preheat) -> None:
        try:
            ref = parse_manifest_url(record.url)
        except RegistryError as exc:
            raise PreheatFailed(str(exc)) from None
        s = self.settings
        async with RegistryClient(ref, headers=record.headers, tls=record.tls, allow=self.tasks.cdn.source.allow,
                                  connect_timeout=s.source_probe_timeout, read_timeout=s.source_read_timeout) as reg:
            blobs = await reg.resolve(record.platforms)
            record.children = [preheat_id(ref.blob_url(d.digest)) for d in blobs]
            try:
                await self._layers(record, ref, blobs, reg)
            finally:
                self._release_children(record)

    async def _layers(self, record: Preheat, ref: ImageRef, blobs: tuple[Descriptor, ...],
                      reg: RegistryClient) -> None:
        """Every blob as a child preheat, a few at a time; the first failure fails the image."""
        slots = asyncio.Semaphore(self.settings.preheat_layer_concurrency)

        async def one(blob: Descriptor) -> None:
            async with slots:
                child = await self._child(record, ref.blob_url(blob.digest), blob, reg)
                while not child.status.finished:  # a failed layer may be retried by another image meanwhile
                    await child.done.wait()
                if child.status == PreheatStatus.FAILED:
                    raise PreheatFailed(f"{child.url} {child.error_msg}")

        jobs = [asyncio.create_task(one(blob), name=f"preheat-layer-{blob.digest[7:19]}") for blob in blobs]
        try:
            finished, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_EXCEPTION)
            for job in finished:
                error = job.exception()
                if error is not None:
                    raise error
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _child(self, parent: Preheat, url: str, blob: Descriptor, reg: RegistryClient) -> Preheat:
        """The layer record for ``url``: joined when it runs or is cached, else (re)started now.

        Headers are taken right before the child starts, so a Bearer token is fresh when the CDN
        sends its request (layers wait for a slot and tokens are short-lived).
        """
        cid = preheat_id(url)
        headers = await reg.blob_headers()
        existing = self.records.get(cid)
        cached = (existing is not None and existing.status == PreheatStatus.SUCCESS
                  and await self._still_cached(existing))
        child = self.records.get(cid)  # no await from here on: check and insert in one step
        if child is not None and (not child.status.finished or (cached and child is existing)):
            child.waiters.add(parent.id)
            return child
        if child is None:
            child = Preheat(id=cid, type=PreheatType.FILE, url=url)
            self.records[cid] = child
        child.headers, child.tls, child.expected = headers, parent.tls, blob
        child.waiters.add(parent.id)
        self._launch(child, top=False)
        return child

    def _release_children(self, parent: Preheat) -> None:
        """The image no longer waits: cancel the layers that nobody else waits for or asked for."""
        for cid in parent.children:
            child = self.records.get(cid)
            if child is None:
                continue
            child.waiters.discard(parent.id)
            if not child.waiters and not child.requested and child.job is not None and not child.job.done():
                child.job.cancel()


class RegistryClient:
    """Manifests and auth for one image preheat (blobs go through the CDN, not through here).

    Authentication follows the registry's challenges: a Bearer challenge sends us to its token
    endpoint (anonymously, or with the Basic credentials given in the preheat's headers); a Basic
    challenge is answered with the given credentials. A Bearer token given in the headers is used
    as is. Tokens are renewed shortly before they expire, since the layers of a large image are
    admitted over minutes.
    """

    def __init__(self, ref: ImageRef, *, headers: dict[str, str], tls: TlsOptions, connect_timeout: float,
                 read_timeout: float, allow: SourceAllowList) -> None:
        self.ref = ref
        self._allow = allow
        self._plain = {k: v for k, v in headers.items() if k.lower() not in ("accept", "authorization")}
        self._given = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        self._auth = self._given
        self._challenge: Challenge | None = None
        self._renew_at = 0.0
        self._tls = tls
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        # The allow-list is checked on every connection, so manifest redirects and the token realm are held
        # to it as the CDN's blob fetches are.
        connector = AllowListConnector(self._allow, ssl=self._tls.ssl_context(), limit=4)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside 'async with'")
        return self._session

    async def resolve(self, platforms: tuple[Platform, ...]) -> tuple[Descriptor, ...]:
        """The blobs to preheat: an image's config and layers, or those of the chosen platforms of an index."""
        top = await self.manifest(self.ref.reference)
        if top.kind != ManifestKind.INDEX:
            return top.blobs
        try:
            chosen = select_manifests(top, list(platforms))
        except RegistryError as exc:
            raise PreheatFailed(str(exc)) from None
        blobs: dict[str, Descriptor] = {}
        for entry in chosen:
            manifest = await self.manifest(entry.digest)
            if manifest.kind == ManifestKind.INDEX:
                raise PreheatFailed(f"index {self.ref.name}:{self.ref.reference} lists another index "
                                    f"({entry.digest}); nested indexes are not supported")
            for blob in manifest.blobs:
                blobs.setdefault(blob.digest, blob)
        return tuple(blobs.values())

    async def manifest(self, reference: str) -> Manifest:
        url = self.ref.manifest_url(reference)
        status, body, content_type = await self._get(url, {"Accept": MANIFEST_ACCEPT})
        where = f"{self.ref.name}:{reference}" if ":" not in reference else f"{self.ref.name}@{reference}"
        if status == 404:
            detail = registry_error_text(body) or "HTTP 404"
            raise PreheatFailed(f"manifest {where} not found in registry {self.ref.host}: {detail}"
                                f"{await self._which_is_missing(reference)}")
        if status != 200:
            detail = registry_error_text(body) or body[:200].decode(errors="replace").strip()
            raise PreheatFailed(f"registry {self.ref.host} answered HTTP {status} for manifest {where}: {detail}")
        try:
            if ":" in reference:
                algorithm, _ = parse_digest(reference)
                actual = digest_of(body, algorithm)
                if actual != reference:
                    raise PreheatFailed(f"manifest {where} has digest {actual}: the registry sent other content")
            return parse_manifest(body, content_type)
        except RegistryError as exc:
            raise PreheatFailed(f"manifest {where} from {self.ref.host}: {exc}") from None

    async def _which_is_missing(self, reference: str) -> str:
        """Tell an unknown repository from an unknown tag: registries answer MANIFEST_UNKNOWN for both.

        One ``tags/list`` request, only after a 404; anything unexpected just adds nothing.
        """
        if ":" in reference:
            return ""
        with contextlib.suppress(aiohttp.ClientError, PreheatFailed, TimeoutError):
            status, _, _ = await self._get(f"{self.ref.base}/tags/list", {"Accept": "application/json"})
            if status == 404:
                return f" (the repository {self.ref.name} does not exist)"
            if status == 200:
                return f" (the repository {self.ref.name} exists, the tag {reference} does not)"
        return ""

    async def blob_headers(self) -> dict[str, str]:
        """Headers for the CDN's blob request: the user's own ones and current credentials."""
        await self._renew()
        headers = dict(self._plain)
        if self._auth:
            headers["Authorization"] = self._auth
        return headers

    async def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """GET with credentials, answering one 401 challenge; ``(status, body, content type)``."""
        for attempt in (1, 2):
            await self._renew()
            sent = {**self._plain, **headers, **({"Authorization": self._auth} if self._auth else {})}
            try:
                async with self.session.get(url, headers=sent) as resp:
                    if resp.status == 401 and attempt == 1:
                        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
                        await self._authenticate(challenges)
                        continue
                    if resp.status == 401:
                        raise PreheatFailed(f"registry {self.ref.host} rejected the credentials obtained from "
                                            f"{self._challenge.realm if self._challenge else 'the headers'} "
                                            f"(HTTP 401)")
                    body = await resp.content.read(_MANIFEST_LIMIT + 1)
                    if len(body) > _MANIFEST_LIMIT:
                        raise PreheatFailed(f"{url} answered more than {_MANIFEST_LIMIT} bytes: not a manifest")
                    return resp.status, body, resp.headers.get("Content-Type", "")
            except aiohttp.ClientError as exc:
                raise PreheatFailed(f"registry {self.ref.host} unreachable: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _authenticate(self, challenges: list[Challenge]) -> None:
        host = self.ref.host
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            if self._given.lower().startswith("bearer "):
                raise PreheatFailed(f"registry {host} rejected the Bearer token given in headers (HTTP 401)")
            self._challenge = bearer
            await self._fetch_token()
            return
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if basic is not None and self._given:
            raise PreheatFailed(f"registry {host} rejected the credentials given in headers (HTTP 401)")
        if basic is not None:
            raise PreheatFailed(f"registry {host} requires credentials (Basic realm {basic.realm!r}): "
                                f"give them as an Authorization header")
        raise PreheatFailed(f"registry {host} answered HTTP 401 without a usable WWW-Authenticate challenge")

    async def _renew(self) -> None:
        if self._challenge is not None and time.monotonic() >= self._renew_at:
            await self._fetch_token()

    async def _fetch_token(self) -> None:
        challenge = self._challenge
        assert challenge is not None
        try:
            url = token_request_url(challenge, self.ref.pull_scope)
        except RegistryError as exc:
            raise PreheatFailed(str(exc)) from None
        basic = self._given if self._given.lower().startswith("basic ") else ""
        who = "the credentials given in headers" if basic else "anonymous access"
        try:
            async with self.session.get(url, headers={"Authorization": basic} if basic else {}) as resp:
                body = await resp.content.read(_TOKEN_LIMIT)
                status = resp.status
        except aiohttp.ClientError as exc:
            raise PreheatFailed(f"token endpoint {challenge.realm} unreachable: {exc or type(exc).__name__}") from None
        if status in (401, 403):
            raise PreheatFailed(f"token endpoint {challenge.realm} refused {who} (HTTP {status})")
        if status != 200:
            raise PreheatFailed(f"token endpoint {challenge.realm} answered HTTP {status}")
        try:
            token, expires_in = parse_token_answer(body)
        except RegistryError as exc:
            raise PreheatFailed(f"{exc} ({challenge.realm})") from None
        self._auth = f"Bearer {token}"
        self._renew_at = time.monotonic() + expires_in - min(30.0, expires_in / 2)
