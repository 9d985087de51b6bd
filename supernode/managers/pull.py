"""The pull loop: what dfget v1's ``/peer/task`` (and the REST piece endpoints) do with a client's piece report.

A pull reads straight through: the report is checked against the task and recorded in the progress state
in one call (:meth:`~supernode.progress.ProgressState.update_piece`), then the scheduler hands out the next
pieces (:func:`~supernode.scheduler.schedule`) and they become the addresses dfget fetches from. A pull
that would answer 602 ("wait"), or find the client at its flow limit, is held while nothing changes in the
task (:mod:`supernode.changes`).

Kept apart from the task manager, which owns the task and client records and their lifecycle (register,
admit, delete, GC): a pull reads those records and moves a client's status on, but never creates or
removes one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from dfwire.ids import cdn_http_path, is_super_cid, super_cid
from dfwire.pieces import parse_range, piece_count, piece_range

from ..changes import TaskChanges
from ..config import Settings
from ..errors import DfCode, DfError, invalid, not_found
from ..metrics import Metrics
from ..models import CdnStatus, DfgetTaskStatus, FinishData, PieceInfo, PieceResult, PieceTaskItem
from ..peers import Peer, PeerRegistry
from ..progress import PieceStatus, ProgressState
from ..scheduler import Assignment, schedule
from ..tasks import Client, ClientStatus, Task
from .task import TaskManager

log = logging.getLogger(__name__)

_RESULT_STATUS = {PieceResult.SUCCESS: PieceStatus.SUCCESS, PieceResult.SEMISUC: PieceStatus.SEMISUC,
                  PieceResult.FAILED: PieceStatus.FAILED}


_HELD_CODES = (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE)
"""The answers a held pull waits out: nothing to hand out yet, or the client runs all it may."""


def _client_key(task_id: str, cid: str) -> str:
    """The :class:`~supernode.changes.TaskChanges` key of one client's own piece reports."""
    return f"{task_id}/{cid}"


def _as_wait(exc: DfError) -> DfError:
    return exc if exc.code == DfCode.PEER_WAIT else DfError(DfCode.PEER_WAIT, exc.context)


@dataclass(frozen=True)
class Finished:
    """The client holds every piece: answer 600 with the file's length and raw MD5."""

    data: FinishData


class PullLoop:
    """Piece reports in, pieces out, for every client the task manager knows."""

    def __init__(self, *, settings: Settings, tasks: TaskManager, peers: PeerRegistry, progress: ProgressState,
                 metrics: Metrics, super_peer: Peer, changes: TaskChanges) -> None:
        self.settings = settings
        self.tasks = tasks
        self.peers = peers
        self.progress = progress
        self.metrics = metrics
        self.super_peer = super_peer
        self.changes = changes

    # ------------------------------------------------------------------ /peer/task

    async def pull_held(self, task_id_: str, cid: str, *, status: DfgetTaskStatus | None,
                        result: PieceResult | None, piece_range_text: str,
                        dst_cid: str) -> list[PieceTaskItem] | Finished | None:
        """One ``/peer/task`` call: record the reported piece, then hand out more.

        Returns the pieces to fetch, :class:`Finished`, or ``None`` for a FINISHED report. Raises
        ``DfError`` with PEER_WAIT (602), PEER_CONTINUE (601 without data; only with ``pull_hold`` 0),
        CDN_FAIL, ...

        A 602 is held back for up to ``pull_hold`` seconds while nothing changes. Each change of the task
        (see :mod:`supernode.changes`) schedules again, so a waiting client gets its pieces the moment
        they can be handed out instead of after its back-off. While other pulls wait, this one joins them
        rather than going first, and they are served fewest pieces first. The report the pull carries is
        recorded once, before any waiting. dfget gives the request 5 s.

        A client that runs all the pieces it may is held too, until a report of its own frees a slot,
        and answered 602 if the hold ends first, never 601 without data. Go dfget pulls again only when one
        of its pieces ends, and what the supernode counts as running may already have ended: Go dfget
        reports a piece in the next pull and again (``/peer/piece/suc``) once its writer has stored it; it
        merges pulls while pieces end close together, and its writer falls behind on a busy machine. So the
        last pieces it ran can both be told only by writer reports still to come, and a 601 without data
        left such a client with nothing running and no pull to send: it sat until its 60 s timeout, then
        fetched the file from the origin (seen in one of three 32-peer swarms on two cores).
        """
        reported = self._report(task_id_, cid, status=status, result=result, piece_range_text=piece_range_text,
                                dst_cid=dst_cid)
        if reported is None:
            return None
        hold = self.settings.pull_hold
        if hold > 0 and self.changes.waiting(task_id_):
            self.changes.notify(task_id_)  # this pull joins the held ones, in their order
            verdict = DfError(DfCode.PEER_WAIT, f"taskID: {task_id_}, clientID: {cid}: waiting for a source")
        else:
            try:
                return self._next(*reported)
            except DfError as exc:
                if exc.code not in _HELD_CODES or hold <= 0:
                    raise
                verdict = exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while (remaining := deadline - loop.time()) > 0:
            # a client at its limit can only be helped by a report of its own: it waits on that alone, so
            # a swarm of clients at their limits does not schedule them all again on every report
            if verdict.code == DfCode.PEER_CONTINUE:
                woken = await self.changes.wait(_client_key(task_id_, cid), remaining)
            else:
                woken = await self.changes.wait(task_id_, remaining,
                                                priority=self.progress.client_done_count(task_id_, cid))
            if not woken:
                break
            try:
                return self._next(self.tasks.get(task_id_), self.tasks.client(task_id_, cid))
            except DfError as exc:
                if exc.code not in _HELD_CODES:
                    raise
                verdict = exc
        raise _as_wait(verdict)

    def _report(self, task_id_: str, cid: str, *, status: DfgetTaskStatus | None, result: PieceResult | None,
                piece_range_text: str, dst_cid: str) -> tuple[Task, Client] | None:
        """Record what a ``/peer/task`` call reports; the task and client to schedule, None when it finished."""
        client = self.tasks.client(task_id_, cid)
        task = self.tasks.get(task_id_)
        task.access_time = time.time()
        if status is None or result is None:
            raise invalid(f"failed to convert piece result ({result or ''}) dfgetTaskStatus ({status or ''})")
        if status == DfgetTaskStatus.FINISHED:
            self.tasks.set_client_status(client, ClientStatus.SUCCESS if result == PieceResult.SUCCESS
                                         else ClientStatus.FAILED)
            return None
        if status == DfgetTaskStatus.STARTED:
            if client.status == ClientStatus.WAITING:
                self.tasks.set_client_status(client, ClientStatus.RUNNING)
        else:
            piece_num = self._piece_num(task, piece_range_text)
            piece_status = _RESULT_STATUS.get(result)
            if piece_status is None:
                raise invalid(f"pieceResult: {result}")
            self._record(task, client, self._dst_pid(task, dst_cid), piece_num, piece_status)
        return task, client

    def report_success(self, task_id_: str, cid: str, dst_cid: str, piece_range_text: str) -> None:
        """``/peer/piece/suc``: the client holds the piece; both the source and the client must be known."""
        task = self.tasks.get(task_id_)
        dst_pid = self._dst_pid(task, dst_cid)
        if dst_pid is None:
            raise not_found(f"failed to get key {dst_cid}@{task_id_}")
        client = self.tasks.client(task_id_, cid)
        self._record(task, client, dst_pid, self._piece_num(task, piece_range_text), PieceStatus.SUCCESS)

    def service_down(self, task_id_: str, cid: str) -> None:
        """``/peer/service/down``: the client's uploader is gone, so its peer serves nobody from now on."""
        client = self.tasks.client(task_id_, cid)
        peer = self.peers.get(client.peer_id)
        if peer.service_down_time is not None:
            raise invalid(f"peer {peer.id} is already down")
        self.tasks.mark_service_down(client)

    # ------------------------------------------------------------------ REST piece API

    def pull_pieces(self, task_id_: str, client_id: str, *, num: int, status: DfgetTaskStatus,
                    result: PieceResult, piece_range_text: str, dst_pid: str) -> list[PieceInfo]:
        """REST ``GET /tasks/{id}/pieces``: as ``/peer/task``, with peer IDs instead of CIDs."""
        task = self.tasks.get(task_id_)
        client = self.tasks.client(task_id_, client_id)
        if status == DfgetTaskStatus.RUNNING and piece_range_text:
            piece_status = _RESULT_STATUS.get(result)
            if piece_status is None:
                raise invalid(f"pieceResult {result} with dfgetTaskStatus RUNNING")
            self._record(task, client, dst_pid or None, self._piece_num(task, piece_range_text), piece_status)
        if status == DfgetTaskStatus.FINISHED:
            self.tasks.set_client_status(client, ClientStatus.SUCCESS if result == PieceResult.SUCCESS
                                         else ClientStatus.FAILED)
            return []
        if status == DfgetTaskStatus.STARTED and client.status == ClientStatus.WAITING:
            self.tasks.set_client_status(client, ClientStatus.RUNNING)
        try:
            answer = self._next(task, client, limit=num)
        except DfError as exc:
            if exc.code in (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE):
                return []
            raise
        if isinstance(answer, Finished):
            return []
        return [self._piece_info(task, item) for item in answer]

    def update_piece(self, task_id_: str, piece_range_text: str, *, client_id: str, dst_pid: str,
                     result: PieceResult) -> None:
        """REST ``PUT /tasks/{id}/pieces/{range}``."""
        task = self.tasks.get(task_id_)
        client = self.tasks.client(task_id_, client_id)
        if dst_pid != self.super_peer.id and self.peers.find(dst_pid) is None:
            raise not_found(f"peer {dst_pid}")
        piece_status = _RESULT_STATUS.get(result)
        if piece_status is None:
            raise invalid(f"pieceStatus {result} cannot be recorded")
        self._record(task, client, dst_pid, self._piece_num(task, piece_range_text), piece_status)

    def finish(self, task_id_: str, peer_id: str) -> None:
        """REST ``PUT /tasks/{id}``: the peer has the whole task."""
        task = self.tasks.get(task_id_)
        cid = self.tasks.peer_cid(task.id, peer_id)
        if cid is None:
            raise not_found(f"peer {peer_id} has no download of task {task_id_}")
        self.tasks.set_client_status(self.tasks.client(task.id, cid), ClientStatus.SUCCESS)

    # ------------------------------------------------------------------ a report in

    @staticmethod
    def _piece_num(task: Task, text: str) -> int:
        """The piece a reported range names; only ranges the supernode hands out are accepted.

        A range must be exactly one piece of this task (``n*pieceSize``-``(n+1)*pieceSize-1``) that can
        exist: below the piece count when the length is known, else below what the CDN has sealed. A
        client could otherwise report (and make the scheduler record, and later hand out) any number of
        pieces that do not exist.
        """
        try:
            piece = parse_range(text)
        except ValueError:
            raise invalid(f"pieceRange: {text}") from None
        size = task.piece_size
        if piece.length != size or piece.start % size:
            raise invalid(f"pieceRange: {text} is not a piece of task {task.id} (piece size {size})")
        known = piece_count(task.http_file_length, size) if task.http_file_length >= 0 else 0
        limit = max(known, len(task.piece_md5s))
        if piece.piece_num >= limit:
            raise invalid(f"pieceRange: {text}: task {task.id} has no piece {piece.piece_num}")
        return piece.piece_num

    def _dst_pid(self, task: Task, dst_cid: str) -> str | None:
        """The PID of the source a report names by its CID; None when it names none, or one not known."""
        if not dst_cid:
            return None
        if is_super_cid(dst_cid, self.settings.advertise_ip):
            return self.super_peer.id
        dst = self.tasks.clients.get((dst_cid, task.id))
        return dst.peer_id if dst is not None else None

    def _record(self, task: Task, client: Client, dst_pid: str | None, num: int, status: PieceStatus) -> None:
        """Record one piece outcome for ``client``; counts served bytes the first time a piece succeeds."""
        client.assigned.pop(num, None)
        # the size is a throughput sample only on the client's first report that it holds the piece, and
        # that is the report update_piece answers True to, the one the bytes are counted for
        size = self._piece_bytes(task, num)
        capacity = self.progress.rates.cdn.measured
        first = self.progress.update_piece(task.id, client.cid, dst_pid or "", num, status, time.monotonic(),
                                           size=size)
        if self.progress.rates.cdn.measured != capacity:
            log.log(logging.DEBUG if capacity else logging.INFO, "CDN port capacity measured: %.1f MiB/s",
                    self.progress.rates.cdn.measured / 1024**2)
        self.changes.notify(task.id)
        self.changes.notify(_client_key(task.id, client.cid))
        if first:
            self.metrics.piece_served("cdn" if dst_pid == self.super_peer.id else "peer", size)
            if dst_pid == self.super_peer.id:
                self.metrics.pieces_downloaded_size_bytes_total.inc(size)

    @staticmethod
    def _piece_bytes(task: Task, num: int) -> int:
        md5_text = task.piece_md5(num)
        tail = md5_text.rpartition(":")[2]
        return int(tail) if tail.isdigit() else task.piece_size

    # ------------------------------------------------------------------ pieces out

    def _next(self, task: Task, client: Client, limit: int | None = None) -> list[PieceTaskItem] | Finished:
        if task.cdn_status == CdnStatus.FAILED:
            raise DfError(DfCode.CDN_FAIL, f"task {task.id}: {task.fail_reason}")
        if task.cdn_status == CdnStatus.WAITING:
            raise DfError(DfCode.PEER_WAIT, f"task {task.id} is waiting for the CDN")
        done = self.progress.client_done_count(task.id, client.cid)
        if task.cdn_status == CdnStatus.SUCCESS and task.piece_total and done >= task.piece_total:
            self.tasks.set_client_status(client, ClientStatus.SUCCESS)
            if not client.serves:
                self.tasks.mark_service_down(client)
            return Finished(FinishData(file_length=task.file_length, md5=task.real_md5))
        self._expire_assignments(task, client)
        started = time.perf_counter()
        try:
            assignments = schedule(self.progress, task.id, client.cid, now=time.monotonic(), limit=limit)
        finally:
            peer = self.peers.find(client.peer_id)
            self.metrics.schedule_duration_milliseconds.labels(peer=peer.ip if peer else "").observe(
                (time.perf_counter() - started) * 1000)
        now = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("schedule %s (%d done, CDN load %d): %s", client.cid, done,
                      self.progress.super_load(task.id, now),
                      " ".join(f"{a.piece_num}<-{a.dst_pid}" for a in assignments))
        client.assigned.update((a.piece_num, now) for a in assignments)
        items = [item for a in assignments if (item := self._item(task, client, a)) is not None]
        if not items:
            raise DfError(DfCode.PEER_WAIT, f"task {task.id}: no piece available")
        return items

    def _expire_assignments(self, task: Task, client: Client) -> None:
        """Take back pieces the client was given long ago and never reported.

        A client that lost a piece (a crash of its fetcher, a report lost on the way) would otherwise
        hold a download slot and a source's upload slot forever, and get 602 for good once its slots
        are all taken. The deadline is dfget's own piece timeout (``pieceSize / minRate + 10 s``, minRate
        64 KiB/s by default) plus a margin; nobody is blamed for an expiry.
        """
        s = self.settings
        deadline = time.monotonic() - (task.piece_size / s.client_min_rate + s.piece_timeout_margin)
        stale = [num for num, at in client.assigned.items() if at < deadline]
        if not stale:
            return
        self.progress.take_back(task.id, client.cid, stale, time.monotonic())
        for num in stale:
            del client.assigned[num]

    def _item(self, task: Task, client: Client, a: Assignment) -> PieceTaskItem | None:
        """Where dfget fetches an assigned piece from; None when its source peer is gone meanwhile."""
        if a.dst_pid == self.super_peer.id:
            cid, path = super_cid(self.settings.advertise_ip, task.id), cdn_http_path(task.id)
            ip, port = client.super_node_ip or self.settings.advertise_ip, self.settings.download_port
        else:
            source_cid = self.tasks.peer_cid(task.id, a.dst_pid)
            source = self.tasks.clients.get((source_cid, task.id)) if source_cid else None
            peer = self.peers.find(a.dst_pid)
            if source is None or peer is None:
                return None
            cid, path, ip, port = source.cid, source.path, peer.ip, peer.port
        return PieceTaskItem(range=piece_range(a.piece_num, task.piece_size), piece_num=a.piece_num,
                             piece_size=task.piece_size, piece_md5=task.piece_md5(a.piece_num), cid=cid,
                             peer_ip=ip, peer_port=port, path=path)

    def _piece_info(self, task: Task, item: PieceTaskItem) -> PieceInfo:
        pid = self.super_peer.id if is_super_cid(item.cid, self.settings.advertise_ip) else \
            self.tasks.clients[(item.cid, task.id)].peer_id
        return PieceInfo(pid=pid, path=item.path, peer_ip=item.peer_ip, peer_port=item.peer_port,
                         piece_md5=item.piece_md5, piece_range=item.range, piece_size=item.piece_size)
