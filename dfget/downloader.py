"""The P2P pull loop of one dfget run (spec §3.4-§3.7): ask the supernode, fetch, report, repeat.

One coroutine talks to the supernode; each piece the supernode hands out runs as its own task and
leaves exactly one result in a queue, which drives the next ``/peer/task``. Reactions to every code
follow dfget 1.0.6: 601 starts pieces, 602/603 back off (waking early when a piece finishes), 600
finishes, anything else - or a supernode that cannot be reached - migrates the download to the next
supernode on the ring, keeping the pieces already held when the piece size stays the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from dfwire import pieces

from .errors import DfgetError, P2PError, RegisterError
from .locator import Node
from .piece_fetch import PieceFetcher, PieceOutcome
from .progress import Progress
from .protocol import Code, PieceResult, TaskStatus, is_supernode_cid
from .register import Registration
from .storage import PieceFile
from .supernode_api import ApiError, FinishData, PieceTask, ResultInfo, SupernodeApi

log = logging.getLogger(__name__)

QUEUE_POLL = 2.0  # re-send the latest pull after this long without a piece result
WAIT_FIRST, WAIT_MAX = 0.05, 0.4  # back-off after a 602, doubled each time, with jitter (dfget: 0.8)
REPORT_ATTEMPTS = 3
FAIL_DELAY = 0.02  # dfget queues a failed piece 20 ms after the failure
#: Codes after which the loop carries on with this supernode; any other code migrates.
_WAIT_CODES = {Code.PEER_WAIT, Code.PEER_LIMITED}

Registrar = Callable[[set[Node]], Awaitable[Registration]]
"""Registers the run again, with any supernode but the given ones (used to migrate)."""


@dataclass(frozen=True)
class _Item:
    """A ``/peer/task`` to send: the news about one piece (or none, for the first pull)."""

    status: TaskStatus
    result: PieceResult
    range: str = ""
    dst_cid: str = ""
    #: The supernode already knows (``/peer/piece/suc`` answered 611): this pull may be merged into the next.
    reported: bool = False


_START = _Item(TaskStatus.START, PieceResult.INVALID)


def _again(item: _Item) -> _Item:
    """What to send when the last pull must be repeated (after a wait, or two quiet seconds).

    A success may be told twice (the supernode ignores the repeat), a failure may not: each report
    counts against the source and the client, and enough of them blacklist both. The first pull's
    form (status 700) asks for pieces without news.
    """
    return _START if item.result == PieceResult.FAIL else item


@dataclass
class P2PResult:
    registration: Registration
    length: int  # raw bytes of the file
    md5: str  # the raw file's MD5 announced by the supernode ("" if it sent none)
    piece_failures: int
    migrations: int


@dataclass
class _State:
    queue: asyncio.Queue[_Item | DfgetError] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)  # piece number -> data bytes


class P2PDownloader:
    """Downloads one registered task through the supernodes until a 600 answer; raises ``DfgetError``."""

    def __init__(self, *, api: SupernodeApi, registration: Registration, registrar: Registrar, cid: str,
                 target: PieceFile, fetcher: PieceFetcher, progress: Progress) -> None:
        self._api = api
        self.registration = registration
        self._registrar = registrar
        self._cid = cid
        self._target = target
        self._fetcher = fetcher
        self._progress = progress
        self._state = _State()
        self._failed_nodes: set[Node] = set()
        self.piece_failures = 0
        self.migrations = 0

    async def run(self) -> P2PResult:
        try:
            return await self._loop()
        finally:
            await self._stop_pieces()

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> P2PResult:
        latest = _START
        self._state.queue.put_nowait(latest)
        wait = WAIT_FIRST
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives with the result, and a cancelled run must stop.
            try:
                async with asyncio.timeout(QUEUE_POLL):
                    got = await self._state.queue.get()
            except TimeoutError:
                got = None
                latest = _again(latest)
            if isinstance(got, DfgetError):
                raise got
            if got is not None:
                latest = got
                # As dfget: a reported success need not be pulled on its own while more news is queued or
                # more than two pieces still run. A piece held from before a migration is only ever told by
                # its pull, so that one is always sent (else the supernode would wait for it forever).
                if got.reported and (not self._state.queue.empty() or len(self._state.running) > 2):
                    continue
            sent = time.monotonic()
            try:
                answer = await self._pull(latest)
            except ApiError as exc:
                latest = await self._migrate(str(exc))
                continue
            if answer.code in _WAIT_CODES:
                # The back-off counts from when the pull was sent: a supernode that held the 602 until
                # something changed (ours does) has made this client wait already. News that arrived
                # meanwhile is pulled at once.
                pause = wait * random.uniform(1.0, 2.0) - (time.monotonic() - sent)
                wait = min(wait * 2, WAIT_MAX)
                if self._state.queue.empty():
                    if pause > 0:
                        self._state.wake.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(pause):
                                await self._state.wake.wait()
                    if self._state.queue.empty():
                        self._state.queue.put_nowait(_again(latest))
                continue
            wait = WAIT_FIRST
            if answer.code == Code.PEER_CONTINUE:
                self._start_pieces(answer)
            elif answer.code == Code.PEER_FINISH:
                return await self._finish(answer)
            elif answer.code != Code.SUCCESS:
                latest = await self._migrate(f"{self.registration.node} answered /peer/task with {answer.describe()}")

    async def _pull(self, item: _Item) -> ResultInfo:
        reg = self.registration
        return await self._api.pull_piece_task(
            reg.node, src_cid=self._cid, dst_cid=item.dst_cid, piece_range=item.range, result=item.result,
            status=item.status, task_id=reg.task_id)

    # ------------------------------------------------------------------ pieces

    def _start_pieces(self, answer: ResultInfo) -> None:
        """601: one task per piece neither held nor running; pieces already held are reported again."""
        if answer.data is None:
            return  # 601 without data: enough pieces run already
        if not isinstance(answer.data, list):
            raise P2PError(f"{self.registration.node}: 601 data is not a list: {answer.data!r:.300}")
        for item in answer.data:
            try:
                task = PieceTask.model_validate(item)
            except ValidationError as exc:
                log.warning("ignoring malformed piece task %r: %s", item, exc.errors(include_url=False))
                continue
            if task.piece_size != self.registration.piece_size:
                log.warning("ignoring piece task with piece size %d, registered %d", task.piece_size,
                            self.registration.piece_size)
                continue
            if task.piece_num in self._state.held:
                self._state.queue.put_nowait(_Item(TaskStatus.RUNNING, PieceResult.SEMISUC, task.range, task.cid))
            elif task.range not in self._state.running:
                self._state.running[task.range] = asyncio.create_task(self._piece(task))

    async def _piece(self, task: PieceTask) -> None:
        """Fetch one piece and leave exactly one result (or a fatal error) in the queue."""
        result: _Item | DfgetError
        started = time.monotonic()
        try:
            outcome = await self._fetcher.fetch(task, self.registration.file_length)
            log.debug("piece %d from %s:%d %s: %s in %.3fs", task.piece_num, task.peer_ip, task.peer_port, task.cid,
                      f"{outcome.data_bytes} bytes" if outcome.ok else "failed", time.monotonic() - started)
            result = await (self._succeeded(task, outcome) if outcome.ok else self._failed(task, outcome))
        except DfgetError as exc:
            result = exc
        finally:
            self._state.running.pop(task.range, None)
        self._state.queue.put_nowait(result)
        self._state.wake.set()

    async def _succeeded(self, task: PieceTask, outcome: PieceOutcome) -> _Item:
        self._state.held[task.piece_num] = outcome.data_bytes
        self._target.verified(task.piece_num * pieces.data_size(task.piece_size), outcome.data_bytes)
        self._progress.add(outcome.data_bytes, "supernode" if is_supernode_cid(task.cid) else "peer")
        reported = await self._report_success(task)
        return _Item(TaskStatus.RUNNING, PieceResult.SEMISUC, task.range, task.cid, reported=reported)

    async def _report_success(self, task: PieceTask) -> bool:
        """``/peer/piece/suc``, tried up to three times like dfget; the pull that follows carries it too."""
        reg = self.registration
        for attempt in range(REPORT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0.05, 0.55))
            try:
                answer = await self._api.report_piece_success(
                    reg.node, task_id=reg.task_id, cid=self._cid, dst_cid=task.cid, piece_range=task.range)
            except ApiError as exc:
                log.warning("piece %d report failed: %s", task.piece_num, exc)
                continue
            if answer.code == Code.PIECE_REPORTED:
                return True
            log.warning("piece %d report answered %s", task.piece_num, answer.describe())
        return False

    async def _failed(self, task: PieceTask, outcome: PieceOutcome) -> _Item:
        self.piece_failures += 1
        log.warning("piece %d from %s failed: %s", task.piece_num, task.cid, outcome.error)
        if outcome.error_type:
            reg = self.registration
            try:
                await self._api.report_piece_error(
                    reg.node, task_id=reg.task_id, piece_range=task.range, src_cid=self._cid, dst_cid=task.cid,
                    dst_ip=task.peer_ip, real_md5=outcome.real_md5, expected_md5=outcome.expected_md5,
                    error_type=outcome.error_type)
            except ApiError as exc:
                log.warning("piece error report failed: %s", exc)
        await asyncio.sleep(FAIL_DELAY)
        return _Item(TaskStatus.RUNNING, PieceResult.FAIL, task.range, task.cid)

    async def _stop_pieces(self) -> None:
        tasks = list(self._state.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._state.running.clear()

    # ------------------------------------------------------------------ migration and finish

    async def _migrate(self, why: str) -> _Item:
        """Register again with the next supernode; restart the pull loop there (status 700)."""
        old = self.registration
        self._failed_nodes.add(old.node)
        log.warning("migrating away from %s: %s", old.node, why)
        await self._stop_pieces()
        self._state = _State(held=self._state.held)
        try:
            new = await self._registrar(self._failed_nodes)
        except RegisterError as exc:
            raise P2PError(f"{why}; no other supernode took over: {exc}") from exc
        if new.piece_size != old.piece_size:
            log.info("piece size changed from %d to %d: starting over", old.piece_size, new.piece_size)
            self._state.held.clear()
            await self._target.reset()
            self._progress.restart(new.file_length)
        self.registration = new
        self.migrations += 1
        self._progress.notice(f"migrated from supernode {old.node} to {new.node} ({why})")
        self._state.queue.put_nowait(_START)
        return _START

    async def _finish(self, answer: ResultInfo) -> P2PResult:
        """600: every piece is held; check that they add up to one file before anything is published."""
        try:
            finish = FinishData.model_validate(answer.data or {})
        except ValidationError as exc:
            raise P2PError(f"malformed 600 answer: {answer.data!r:.300}") from exc
        await self._stop_pieces()
        reg = self.registration
        held = self._state.held
        if finish.file_length > 0:
            count = math.ceil(finish.file_length / reg.piece_size)
            length = finish.file_length - pieces.WRAP_SIZE * count
        else:
            count = max(held) + 1 if held else 0
            length = sum(held.values())
        if sorted(held) != list(range(count)) or sum(held.values()) != length:
            raise P2PError(f"{reg.node} says the download is complete, but the pieces held "
                           f"({len(held)} of {count}) do not make up {length} bytes")
        if reg.file_length >= 0 and length != reg.file_length:
            raise P2PError(f"the pieces make up {length} bytes, the source has {reg.file_length}")
        return P2PResult(reg, length, finish.md5, self.piece_failures, self.migrations)
