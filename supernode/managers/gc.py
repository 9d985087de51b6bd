"""The periodic garbage collectors: expired tasks, departed peers, and a full disk (spec §7).

Each loop runs on its own interval after an initial delay, survives its own errors (a GC failure is
logged and retried next period, never fatal), and stops with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ..cdn.store import CacheStore
from ..config import Settings
from ..diskgc import CacheEntry, select_disk_gc
from ..metrics import Metrics
from .task import TaskManager

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, *, settings: Settings, tasks: TaskManager, store: CacheStore, metrics: Metrics) -> None:
        self.settings = settings
        self.tasks = tasks
        self.store = store
        self.metrics = metrics
        self._loops: list[asyncio.Task[None]] = []

    def start(self) -> None:
        s = self.settings
        self._loops = [
            asyncio.create_task(self._every(s.gc_meta_interval, self.collect_meta), name="gc-meta"),
            asyncio.create_task(self._every(s.gc_disk_interval, self.collect_disk), name="gc-disk"),
        ]

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self.settings.gc_initial_delay)
        while True:
            try:
                await job()
            except Exception:
                log.exception("garbage collection failed; retrying in %.0fs", interval)
            await asyncio.sleep(max(interval, 0.1))

    async def collect_meta(self) -> None:
        now = time.time()
        tasks = await self.tasks.gc_tasks(now)
        peers = self.tasks.gc_peers(now)
        self.metrics.gc_tasks_total.inc(tasks)
        self.metrics.gc_peers_total.inc(peers)
        if tasks or peers:
            log.info("gc: %d tasks and %d peers collected", tasks, peers)

    async def collect_disk(self) -> None:
        free = await asyncio.to_thread(self.store.free_bytes)
        if free > self.settings.young_gc_threshold:
            return
        entries = await asyncio.to_thread(self._entries)
        live = set(self.tasks.tasks)
        victims = select_disk_gc(free_bytes=free, entries=entries, live_task_ids=live, now=time.time(),
                                 young_gc_threshold=self.settings.young_gc_threshold,
                                 full_gc_threshold=self.settings.full_gc_threshold,
                                 clean_ratio=self.settings.clean_ratio,
                                 interval_threshold=self.settings.interval_threshold)
        deleted = 0
        for task_id in victims:
            if task_id not in self.tasks.tasks:
                await asyncio.to_thread(self.store.delete, task_id)
                deleted += 1
        self.metrics.gc_disks_total.inc(deleted)
        self.metrics.last_gc_disks_timestamp_seconds.set(time.time())
        if deleted:
            log.info("disk gc: %d cache entries deleted (%d bytes were free)", deleted, free)

    def _entries(self) -> list[CacheEntry]:
        entries = []
        for task_id in self.store.task_ids():
            meta = self.store.read_meta(task_id)
            size = max(self.store.data_size(task_id), 0)
            access = meta.access_time / 1000 if meta else 0.0
            interval = meta.interval / 1000 if meta else 0.0
            entries.append(CacheEntry(task_id=task_id, size=size, access_time=access, interval=interval))
        return entries

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
