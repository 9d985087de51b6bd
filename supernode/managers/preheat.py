"""Preheat: put files and image layers into the CDN before the first dfget asks for them.

:class:`PreheatManager` keeps the preheat records: it creates, joins, lists, deletes and collects them,
runs each one's job within the bounds below, and walks an image into one record per blob. The work
inside one record's job lives apart, so that this module is only about which records exist and run:
a file or a blob is fetched into the CDN by :mod:`supernode.managers.preheat_fetch`, exactly as the
first dfget register of its URL would fetch it; an image's manifests come from its registry through
:mod:`supernode.managers.registry_client`; the record itself is in :mod:`supernode.managers.preheat_record`.

An *image* preheat reads a registry v2 manifest (following an index to its platform manifests),
authenticates as ``docker pull`` does, and starts one file preheat per blob (config and layers), each
a record of its own (``children``) whose task ID is the plain blob URL's, which is what dfget and
dfdaemon register later. The parent fails as soon as one child fails and succeeds when all have.
Layer bytes are checked against their manifest digest after the CDN has them.

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
import enum
import logging
import time
from collections import Counter
from collections.abc import Iterable

from dfwire.ids import preheat_id
from dfwire.registry import Descriptor, ImageRef, Platform, RegistryError, parse_manifest_url

from ..cdn.source import TlsOptions
from ..cdn.store import CacheStore
from ..config import Settings
from ..errors import DfCode, DfError, not_found
from ..metrics import Metrics
from ..preheat_models import PreheatCreateRequest, PreheatStatus, PreheatType
from .preheat_fetch import PreheatFetcher
from .preheat_record import Preheat, PreheatFailed
from .registry_client import RegistryClient
from .task import TaskManager

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What ``POST /preheats`` did; the API turns it into 201, 200 or 208."""

    CREATED = "created"
    """A new preheat, or a new attempt of a FAILED one (or of one whose cached content is gone)."""
    RUNNING = "running"
    """The same preheat is already waiting or running: joined, nothing new started."""
    DONE = "done"
    """The same preheat already succeeded and its content is still cached."""


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
        self._fetcher = PreheatFetcher(tasks=tasks, metrics=metrics)
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
                    await self._fetcher.fetch(record)
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

    # ------------------------------------------------------------------ cached results

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
