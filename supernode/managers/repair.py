"""Act on dfget's reports of bad pieces served by the CDN (spec §5.8).

A client that got a missing file or an MD5 mismatch from the supernode tells us; if the cache file is
really gone or really corrupt, the task is dropped with its files, so the next registration fetches
the source again instead of serving bad bytes forever. Checks run off the request path, at most one
per task at a time, and a task is not rechecked within a few seconds of the last check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

from dfwire.ids import is_super_cid
from dfwire.pieces import parse_range

from ..errors import DfError
from ..models import PieceErrorRequest, PieceErrorType
from .task import TaskManager

log = logging.getLogger(__name__)

_DEDUPE_SECONDS = 3.0
_MAX_PENDING = 100


class PieceRepair:
    def __init__(self, tasks: TaskManager) -> None:
        self.tasks = tasks
        self._busy: dict[str, float] = {}
        self._jobs: set[asyncio.Task[None]] = set()

    def report(self, req: PieceErrorRequest) -> None:
        """Queue a check when the bad piece came from the CDN; other sources are blacklisted by the pull loop."""
        if not is_super_cid(req.dst_pid, self.tasks.settings.advertise_ip):
            return
        task = self.tasks.tasks.get(req.task_id)
        now = time.monotonic()
        if task is None or self._busy.get(task.id, 0.0) > now or len(self._jobs) >= _MAX_PENDING:
            return
        self._busy[task.id] = now + 3600.0
        job = asyncio.create_task(self._check(req))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _check(self, req: PieceErrorRequest) -> None:
        try:
            if await asyncio.to_thread(self._cache_is_bad, req):
                log.warning("cache of task %s is bad (%s on %s): dropping it", req.task_id, req.error_type,
                            req.range)
                await self.tasks.delete(req.task_id, full=True)
        except (DfError, OSError, ValueError) as exc:
            log.info("piece error report for task %s not actionable: %s", req.task_id, exc)
        finally:
            self._busy[req.task_id] = time.monotonic() + _DEDUPE_SECONDS

    def _cache_is_bad(self, req: PieceErrorRequest) -> bool:
        task = self.tasks.get(req.task_id)
        path = self.tasks.cdn.store.data_path(task.id)
        if req.error_type == PieceErrorType.FILE_NOT_EXIST:
            return not path.is_file()
        if req.error_type != PieceErrorType.FILE_MD5_NOT_MATCH:
            return False
        piece = parse_range(req.range)
        expected = task.piece_md5(piece.piece_num)
        if not expected:
            return False
        length = int(expected.rpartition(":")[2])
        with open(path, "rb") as fh:
            block = os.pread(fh.fileno(), length, piece.piece_num * task.piece_size)
        return f"{hashlib.md5(block).hexdigest()}:{len(block)}" != expected

    async def close(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
