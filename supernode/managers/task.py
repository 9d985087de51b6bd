"""Tasks, clients and the pull loop: what ``/peer/registry``, ``/peer/task`` and the REST task API do.

The manager owns the task and client records and keeps three stores consistent: the records here,
the pure progress state (who holds which piece, loads, blacklists) and the CDN. Source access is
serialised per task ID (one lock each), which is what guarantees a single origin fetch per task even
when many peers register in the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

from dfwire.ids import (
    SUPER_CID_PREFIX,
    cdn_http_path,
    convert_headers,
    effective_task_url,
    filter_url_param,
    header_problem,
    is_super_cid,
    source_url_problem,
    super_cid,
    task_id,
)
from dfwire.pieces import parse_range, piece_count, piece_range

from ..cdn.source import TlsOptions
from ..changes import TaskChanges
from ..config import Settings
from ..errors import DfCode, DfError, SourceNotFound, invalid, not_found
from ..metrics import Metrics
from ..models import (
    CdnStatus,
    DfgetTaskStatus,
    FinishData,
    PieceInfo,
    PieceResult,
    PieceTaskItem,
    RegisterRequest,
    RegisterResult,
    TaskCreateRequest,
    TaskCreateResponse,
)
from ..peers import Peer, PeerRegistry
from ..progress import PieceStatus, ProgressState
from ..scheduler import Assignment, schedule
from ..tasks import Client, ClientStatus, Task, TaskSpec
from .cdn import CdnManager

log = logging.getLogger(__name__)

_RESULT_STATUS = {PieceResult.SUCCESS: PieceStatus.SUCCESS, PieceResult.SEMISUC: PieceStatus.SEMISUC,
                  PieceResult.FAILED: PieceStatus.FAILED}


@dataclass(frozen=True)
class Finished:
    """The client holds every piece: answer 600 with the file's length and raw MD5."""

    data: FinishData


class TaskManager:
    def __init__(self, *, settings: Settings, peers: PeerRegistry, progress: ProgressState, cdn: CdnManager,
                 metrics: Metrics, super_peer: Peer, changes: TaskChanges) -> None:
        self.settings = settings
        self.changes = changes
        self.peers = peers
        self.progress = progress
        self.cdn = cdn
        self.metrics = metrics
        self.super_peer = super_peer
        self.tasks: dict[str, Task] = {}
        self.clients: dict[tuple[str, str], Client] = {}
        self._cid_of: dict[tuple[str, str], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unreachable: dict[str, tuple[float, DfError]] = {}
        # The outcome of the last failed source attempt per task: registrants that were already waiting
        # for it share it instead of each trying the origin again in turn.
        self._last_failure: dict[str, tuple[float, DfError]] = {}
        self._tls_checked: set[TlsOptions] = set()

    # ------------------------------------------------------------------ registration

    async def register(self, req: RegisterRequest) -> RegisterResult:
        """Legacy register: a new peer, the task (created or joined) and the client, in one call."""
        if not req.ip:
            raise invalid("peer IP: ")
        if not req.cid:
            raise invalid("cID: ")
        if not req.path:
            raise invalid("path: ")
        self._check_client(req.cid, req.path)
        headers = convert_headers(req.headers)
        spec = self._spec(raw_url=req.raw_url, task_url=effective_task_url(req.task_url, req.raw_url), md5=req.md5,
                          identifier=req.identifier, headers=headers, call_system=req.call_system,
                          dfdaemon=req.dfdaemon, tls=TlsOptions(req.insecure, tuple(req.root_cas or ())))
        peer = self.peers.register(ip=req.ip, host_name=req.host_name or req.ip, port=req.port,
                                   version=req.version)
        serves = req.pattern != "cdn" and req.port != 0
        self.progress.add_peer(peer.id, serves=serves)
        self.metrics.peers.labels(peer=peer.ip).inc()
        try:
            task = await self.admit(spec)
        except DfError:
            self._drop_peer(peer.id)
            raise
        self._add_client(task, Client(cid=req.cid, task_id=task.id, peer_id=peer.id, path=req.path,
                                      super_node_ip=req.super_node_ip, call_system=req.call_system,
                                      serves=serves))
        return RegisterResult(task_id=task.id, file_length=task.http_file_length, piece_size=task.piece_size)

    async def create(self, req: TaskCreateRequest) -> TaskCreateResponse:
        """REST ``POST /tasks``: the peer must exist already (``POST /peers``)."""
        peer = self.peers.get(req.peer_id)
        self._check_client(req.cid, req.path or f"/peer/file/{req.cid}")
        task_url = effective_task_url(req.task_url, filter_url_param(req.raw_url, req.filter or ()))
        spec = self._spec(raw_url=req.raw_url, task_url=task_url, md5=req.md5, identifier=req.identifier,
                          headers=dict(req.headers or {}), call_system=req.call_system, dfdaemon=req.dfdaemon,
                          tls=TlsOptions())
        if not self.progress.has_peer(peer.id):
            self.progress.add_peer(peer.id, serves=peer.port != 0)
        task = await self.admit(spec)
        self._add_client(task, Client(cid=req.cid, task_id=task.id, peer_id=peer.id,
                                      path=req.path or f"/peer/file/{req.cid}", super_node_ip=req.super_node_ip,
                                      call_system=req.call_system, serves=peer.port != 0))
        return TaskCreateResponse(id=task.id, file_length=task.http_file_length, piece_size=task.piece_size)

    def _spec(self, *, raw_url: str, task_url: str, md5: str, identifier: str, headers: dict[str, str],
              call_system: str, dfdaemon: bool, tls: TlsOptions) -> TaskSpec:
        """Validate what a registrant asks the supernode to fetch, before anything is recorded or fetched.

        Malformed input is ``INVALID_VALUE`` (HTTP 400) here rather than a 607 from a failed fetch later,
        and a host outside ``source_allow`` is ``SOURCE_NOT_ALLOWED`` (HTTP 403): the supernode must not
        become a way into internal services.
        """
        problem = source_url_problem(raw_url)
        if problem:
            raise invalid(f"raw url: {raw_url!r}: {problem}")
        for name, value in headers.items():
            problem = header_problem(name, value)
            if problem:
                raise invalid(problem)
        self._check_tls(tls)
        self.cdn.source.allow.check(raw_url)
        return TaskSpec(task_id=task_id(task_url, md5=md5, identifier=identifier, headers=headers),
                        raw_url=raw_url, task_url=task_url, md5=md5, identifier=identifier, headers=headers,
                        call_system=call_system, dfdaemon=dfdaemon, tls=tls)

    @staticmethod
    def _check_client(cid: str, path: str) -> None:
        """Refuse a client that could mislead the peers it is handed to.

        Other clients fetch its pieces from ``http://{ip}:{port}{path}``: a path that does not start with
        ``/`` (``@host/x``) would send them to another host. A CID in the supernode's own ``cdnnode:`` form
        would make its pieces count as the CDN's, so a peer serving bad bytes would never be blacklisted.
        """
        if not path.startswith("/") or not path.isprintable() or any(c.isspace() for c in path):
            raise invalid(f"path: {path!r} must be an absolute URL path without spaces")
        if cid.startswith(SUPER_CID_PREFIX) or not cid.isprintable():
            raise invalid(f"cID: {cid!r} is not a client ID")

    def _check_tls(self, tls: TlsOptions) -> None:
        """A CA that cannot be loaded is the registrant's mistake (400), not an unreachable source (607)."""
        if not tls.root_cas or tls in self._tls_checked:
            return
        try:
            tls.ssl_context()
        except (ssl.SSLError, ValueError) as exc:
            raise invalid(f"rootCAs: not base64-encoded PEM or DER certificates: {exc}") from None
        if len(self._tls_checked) >= 64:
            self._tls_checked.clear()
        self._tls_checked.add(tls)

    async def admit(self, spec: TaskSpec) -> Task:
        """The live task for ``spec``: joined if it runs or succeeded, else (re)fetched, once at a time."""
        self.cdn.source.remember_tls(spec.raw_url, spec.tls)
        lock = self._locks.setdefault(spec.task_id, asyncio.Lock())
        arrived = time.monotonic()
        async with lock:
            failed = self._last_failure.get(spec.task_id)
            if failed is not None and failed[0] >= arrived:
                raise failed[1]
            task = self.tasks.get(spec.task_id)
            if task is not None and task.spec.conflicts_with(spec):
                raise DfError(DfCode.TASK_ID_DUPLICATE, spec.task_id)
            if task is not None and task.cdn_status in (CdnStatus.RUNNING, CdnStatus.SUCCESS):
                task.access_time = time.time()
                return task
            cached = self._unreachable.get(spec.task_id)
            if cached is not None and cached[0] > time.monotonic():
                error = cached[1]
                raise DfError(error.code, f"cache {error.context}", error.msg)
            fresh = task is None
            if task is None:
                task = Task(spec=spec)
            else:
                self._reset_progress(task)
            if fresh:
                self.progress.add_task(task.id, self.super_peer.id)
            try:
                await self.cdn.prepare(task)
            except DfError as exc:
                if isinstance(exc, SourceNotFound):
                    self._unreachable[spec.task_id] = (time.monotonic() + self.settings.fail_access_interval, exc)
                self._last_failure[spec.task_id] = (time.monotonic(), exc)
                if fresh:
                    self.progress.remove_task(task.id)
                raise
            if fresh:
                self.tasks[task.id] = task
                self.metrics.tasks_registered_total.inc()
            task.access_time = time.time()
            return task

    def _reset_progress(self, task: Task) -> None:
        """A failed task is fetched again: forget what its clients were told about the old attempt."""
        self.progress.remove_task(task.id)
        self.progress.add_task(task.id, self.super_peer.id)
        for cid in task.clients:
            client = self.clients.get((cid, task.id))
            if client is not None and self.progress.has_peer(client.peer_id):
                self.progress.add_client(task.id, cid, client.peer_id)

    def _add_client(self, task: Task, client: Client) -> None:
        key = (client.cid, task.id)
        old = self.clients.get(key)
        if old is not None:
            self.progress.remove_client(task.id, old.cid)
            self._count_client(old, -1)
        self.clients[key] = client
        self._cid_of[(client.peer_id, task.id)] = client.cid
        task.clients.add(client.cid)
        self.progress.add_client(task.id, client.cid, client.peer_id)
        self._count_client(client, +1)
        self.metrics.dfgettasks_registered_total.labels(callsystem=client.call_system).inc()

    def _count_client(self, client: Client, delta: int) -> None:
        self.metrics.dfgettasks.labels(callsystem=client.call_system, status=client.status.value).inc(delta)

    def _set_client_status(self, client: Client, status: ClientStatus) -> None:
        if client.status != status:
            self._count_client(client, -1)
            client.status = status
            self._count_client(client, +1)
            if status == ClientStatus.FAILED:
                self.metrics.dfgettasks_failed_total.labels(callsystem=client.call_system).inc()

    # ------------------------------------------------------------------ lookups

    def get(self, task_id_: str) -> Task:
        task = self.tasks.get(task_id_)
        if task is None:
            raise not_found(f"task {task_id_}")
        return task

    def client(self, task_id_: str, cid: str) -> Client:
        client = self.clients.get((cid, task_id_))
        if client is None:
            raise not_found(f"failed to get dfgetTask with taskID ({task_id_}) clientID ({cid})")
        return client

    def _dst_pid(self, task: Task, dst_cid: str) -> str | None:
        if not dst_cid:
            return None
        if is_super_cid(dst_cid, self.settings.advertise_ip):
            return self.super_peer.id
        dst = self.clients.get((dst_cid, task.id))
        return dst.peer_id if dst is not None else None

    # ------------------------------------------------------------------ the pull loop

    def pull(self, task_id_: str, cid: str, *, status: DfgetTaskStatus | None, result: PieceResult | None,
             piece_range_text: str, dst_cid: str) -> list[PieceTaskItem] | Finished | None:
        """One ``/peer/task`` call: record the reported piece, then hand out more.

        Returns the pieces to fetch, :class:`Finished`, or ``None`` for a FINISHED report. Raises
        ``DfError`` with PEER_WAIT (602), PEER_CONTINUE (601 without data), CDN_FAIL, ...
        """
        reported = self._report(task_id_, cid, status=status, result=result, piece_range_text=piece_range_text,
                                dst_cid=dst_cid)
        return None if reported is None else self._next(*reported)

    async def pull_held(self, task_id_: str, cid: str, *, status: DfgetTaskStatus | None,
                        result: PieceResult | None, piece_range_text: str,
                        dst_cid: str) -> list[PieceTaskItem] | Finished | None:
        """:meth:`pull`, but a 602 is held back for up to ``pull_hold`` seconds while nothing changes.

        Each change of the task (see :mod:`supernode.changes`) schedules again, so a waiting client
        gets its pieces the moment they can be handed out instead of after its back-off. While other
        pulls wait, this one joins them rather than going first, and they are served fewest pieces
        first. The report the pull carries is recorded once, before any waiting. dfget gives the
        request 5 s.
        """
        reported = self._report(task_id_, cid, status=status, result=result, piece_range_text=piece_range_text,
                                dst_cid=dst_cid)
        if reported is None:
            return None
        hold = self.settings.pull_hold
        if hold > 0 and self.changes.waiting(task_id_):
            self.changes.notify(task_id_)  # this pull joins the held ones, in their order
            waiting = DfError(DfCode.PEER_WAIT, f"taskID: {task_id_}, clientID: {cid}: waiting for a source")
        else:
            try:
                return self._next(*reported)
            except DfError as exc:
                if exc.code != DfCode.PEER_WAIT or hold <= 0:
                    raise
                waiting = exc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while (remaining := deadline - loop.time()) > 0:
            done = self.progress.client_done_count(task_id_, cid)
            if not await self.changes.wait(task_id_, remaining, priority=done):
                break
            try:
                return self._next(self.get(task_id_), self.client(task_id_, cid))
            except DfError as exc:
                if exc.code != DfCode.PEER_WAIT:
                    raise
                waiting = exc
        raise waiting

    def _report(self, task_id_: str, cid: str, *, status: DfgetTaskStatus | None, result: PieceResult | None,
                piece_range_text: str, dst_cid: str) -> tuple[Task, Client] | None:
        """Record what a ``/peer/task`` call reports; the task and client to schedule, None when it finished."""
        client = self.client(task_id_, cid)
        task = self.get(task_id_)
        task.access_time = time.time()
        if status is None or result is None:
            raise invalid(f"failed to convert piece result ({result or ''}) dfgetTaskStatus ({status or ''})")
        if status == DfgetTaskStatus.FINISHED:
            self._set_client_status(client, ClientStatus.SUCCESS if result == PieceResult.SUCCESS
                                    else ClientStatus.FAILED)
            return None
        if status == DfgetTaskStatus.STARTED:
            if client.status == ClientStatus.WAITING:
                self._set_client_status(client, ClientStatus.RUNNING)
        else:
            piece_num = self._piece_num(task, piece_range_text)
            piece_status = _RESULT_STATUS.get(result)
            if piece_status is None:
                raise invalid(f"pieceResult: {result}")
            self._update(task, client, self._dst_pid(task, dst_cid), piece_num, piece_status)
        return task, client

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

    def _update(self, task: Task, client: Client, dst_pid: str | None, num: int, status: PieceStatus) -> None:
        """Record one piece outcome for ``client``; counts served bytes the first time a piece succeeds."""
        client.assigned.pop(num, None)
        first_success = (status in (PieceStatus.SUCCESS, PieceStatus.SEMISUC)
                         and not self.progress.client_holds(task.id, client.cid, num))
        size = self._piece_bytes(task, num) if first_success else 0
        capacity = self.progress.cdn.measured
        self.progress.update_piece(task.id, client.cid, dst_pid or "", num, status, time.monotonic(), size=size)
        if self.progress.cdn.measured != capacity:
            log.log(logging.DEBUG if capacity else logging.INFO, "CDN port capacity measured: %.1f MiB/s",
                    self.progress.cdn.measured / 1024**2)
        self.changes.notify(task.id)
        if first_success:
            self.metrics.piece_served("cdn" if dst_pid == self.super_peer.id else "peer", size)
            if dst_pid == self.super_peer.id:
                self.metrics.pieces_downloaded_size_bytes_total.inc(size)

    def _piece_bytes(self, task: Task, num: int) -> int:
        md5_text = task.piece_md5(num)
        tail = md5_text.rpartition(":")[2]
        return int(tail) if tail.isdigit() else task.piece_size

    def _next(self, task: Task, client: Client, limit: int | None = None) -> list[PieceTaskItem] | Finished:
        if task.cdn_status == CdnStatus.FAILED:
            raise DfError(DfCode.CDN_FAIL, f"task {task.id}: {task.fail_reason}")
        if task.cdn_status == CdnStatus.WAITING:
            raise DfError(DfCode.PEER_WAIT, f"task {task.id} is waiting for the CDN")
        done = self.progress.client_done_count(task.id, client.cid)
        if task.cdn_status == CdnStatus.SUCCESS and task.piece_total and done >= task.piece_total:
            self._set_client_status(client, ClientStatus.SUCCESS)
            if not client.serves:
                self._service_down(client)
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
        running = self.progress.client_running(task.id, client.cid)
        for num in stale:
            del client.assigned[num]
            if num in running:
                self.progress.update_piece(task.id, client.cid, running[num], num, PieceStatus.WAITING,
                                           time.monotonic())

    def _item(self, task: Task, client: Client, a: Assignment) -> PieceTaskItem | None:
        if a.dst_pid == self.super_peer.id:
            cid, path = super_cid(self.settings.advertise_ip, task.id), cdn_http_path(task.id)
            ip, port = client.super_node_ip or self.settings.advertise_ip, self.settings.download_port
        else:
            source_cid = self._cid_of.get((a.dst_pid, task.id))
            source = self.clients.get((source_cid, task.id)) if source_cid else None
            peer = self.peers.find(a.dst_pid)
            if source is None or peer is None:
                return None
            cid, path, ip, port = source.cid, source.path, peer.ip, peer.port
        return PieceTaskItem(range=piece_range(a.piece_num, task.piece_size), piece_num=a.piece_num,
                             piece_size=task.piece_size, piece_md5=task.piece_md5(a.piece_num), cid=cid,
                             peer_ip=ip, peer_port=port, path=path)

    # ------------------------------------------------------------------ reports

    def report_success(self, task_id_: str, cid: str, dst_cid: str, piece_range_text: str) -> None:
        """``/peer/piece/suc``: the client holds the piece; both the source and the client must be known."""
        task = self.get(task_id_)
        dst_pid = self._dst_pid(task, dst_cid)
        if dst_pid is None:
            raise not_found(f"failed to get key {dst_cid}@{task_id_}")
        client = self.client(task_id_, cid)
        self._update(task, client, dst_pid, self._piece_num(task, piece_range_text), PieceStatus.SUCCESS)

    def service_down(self, task_id_: str, cid: str) -> None:
        client = self.client(task_id_, cid)
        peer = self.peers.get(client.peer_id)
        if peer.service_down_time is not None:
            raise invalid(f"peer {peer.id} is already down")
        self._service_down(client)

    def _service_down(self, client: Client) -> None:
        peer = self.peers.find(client.peer_id)
        if peer is not None and peer.service_down_time is None:
            peer.service_down_time = time.time()
            self.progress.mark_service_down(peer.id, time.monotonic())

    # ------------------------------------------------------------------ REST piece API

    def pull_pieces(self, task_id_: str, client_id: str, *, num: int, status: DfgetTaskStatus,
                    result: PieceResult, piece_range_text: str, dst_pid: str) -> list[PieceInfo]:
        """REST ``GET /tasks/{id}/pieces``: as ``/peer/task``, with peer IDs instead of CIDs."""
        task = self.get(task_id_)
        client = self.client(task_id_, client_id)
        if status == DfgetTaskStatus.RUNNING and piece_range_text:
            piece_status = _RESULT_STATUS.get(result)
            if piece_status is None:
                raise invalid(f"pieceResult {result} with dfgetTaskStatus RUNNING")
            self._update(task, client, dst_pid or None, self._piece_num(task, piece_range_text), piece_status)
        if status == DfgetTaskStatus.FINISHED:
            self._set_client_status(client, ClientStatus.SUCCESS if result == PieceResult.SUCCESS
                                    else ClientStatus.FAILED)
            return []
        if status == DfgetTaskStatus.STARTED and client.status == ClientStatus.WAITING:
            self._set_client_status(client, ClientStatus.RUNNING)
        try:
            answer = self._next(task, client, limit=num)
        except DfError as exc:
            if exc.code in (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE):
                return []
            raise
        if isinstance(answer, Finished):
            return []
        return [self._piece_info(task, item) for item in answer]

    def _piece_info(self, task: Task, item: PieceTaskItem) -> PieceInfo:
        pid = self.super_peer.id if is_super_cid(item.cid, self.settings.advertise_ip) else \
            self.clients[(item.cid, task.id)].peer_id
        return PieceInfo(pid=pid, path=item.path, peer_ip=item.peer_ip, peer_port=item.peer_port,
                         piece_md5=item.piece_md5, piece_range=item.range, piece_size=item.piece_size)

    def update_piece(self, task_id_: str, piece_range_text: str, *, client_id: str, dst_pid: str,
                     result: PieceResult) -> None:
        """REST ``PUT /tasks/{id}/pieces/{range}``."""
        task = self.get(task_id_)
        client = self.client(task_id_, client_id)
        if dst_pid != self.super_peer.id and self.peers.find(dst_pid) is None:
            raise not_found(f"peer {dst_pid}")
        piece_status = _RESULT_STATUS.get(result)
        if piece_status is None:
            raise invalid(f"pieceStatus {result} cannot be recorded")
        self._update(task, client, dst_pid, self._piece_num(task, piece_range_text), piece_status)

    def finish(self, task_id_: str, peer_id: str) -> None:
        """REST ``PUT /tasks/{id}``: the peer has the whole task."""
        task = self.get(task_id_)
        cid = self._cid_of.get((peer_id, task.id))
        if cid is None:
            raise not_found(f"peer {peer_id} has no download of task {task_id_}")
        self._set_client_status(self.clients[(cid, task.id)], ClientStatus.SUCCESS)

    # ------------------------------------------------------------------ removal and GC

    async def delete(self, task_id_: str, *, full: bool = False) -> None:
        """Forget a task, its clients and progress; ``full`` also deletes its cache files."""
        task = self.get(task_id_)
        await self.cdn.stop(task.id)
        for cid in list(task.clients):
            client = self.clients.pop((cid, task.id), None)
            if client is None:
                continue
            self._cid_of.pop((client.peer_id, task.id), None)
            self._count_client(client, -1)
            self._service_down(client)
        self.progress.remove_task(task.id)
        self.tasks.pop(task.id, None)
        self._locks.pop(task.id, None)
        self._unreachable.pop(task.id, None)
        self._last_failure.pop(task.id, None)
        if full:
            await asyncio.to_thread(self.cdn.store.delete, task.id)

    async def gc_tasks(self, now: float) -> int:
        expired = [t.id for t in self.tasks.values()
                   if now - t.access_time >= self.settings.task_expire_time and t.cdn_status != CdnStatus.RUNNING]
        for tid in expired:
            await self.delete(tid)
        now_mono = time.monotonic()
        for tid in [k for k, (until, _) in self._unreachable.items() if until <= now_mono]:
            del self._unreachable[tid]
        for tid in [k for k, (at, _) in self._last_failure.items() if at < now_mono - 60]:
            del self._last_failure[tid]
        for tid in [k for k, lock in self._locks.items() if k not in self.tasks and not lock.locked()]:
            del self._locks[tid]
        return len(expired)

    def gc_peers(self, now: float) -> int:
        """Peers down for ``peer_gc_delay``, or that have had no download for as long, are forgotten.

        The grace for idle peers lets a client that registered through ``POST /peers`` create its task.
        """
        active = {client.peer_id for client in self.clients.values()}
        delay = self.settings.peer_gc_delay
        victims = [p.id for p in self.peers.all() if p.id != self.super_peer.id and (
            (p.id not in active and now - p.created.timestamp() >= delay)
            or (p.service_down_time is not None and now - p.service_down_time >= delay))]
        for pid in victims:
            self.remove_peer(pid)
        return len(victims)

    def remove_peer(self, pid: str) -> None:
        if pid == self.super_peer.id:
            raise invalid("the supernode's own peer cannot be removed")
        self.peers.get(pid)
        for key in [k for k, c in self.clients.items() if c.peer_id == pid]:
            client = self.clients.pop(key)
            self._cid_of.pop((pid, client.task_id), None)
            task = self.tasks.get(client.task_id)
            if task is not None:
                task.clients.discard(client.cid)
                self.progress.remove_client(task.id, client.cid)
            self._count_client(client, -1)
        self._drop_peer(pid)

    def _drop_peer(self, pid: str) -> None:
        peer = self.peers.remove(pid)
        if self.progress.has_peer(pid):
            self.progress.remove_peer(pid)
        self.metrics.peers.labels(peer=peer.ip).dec()
