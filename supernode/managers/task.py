"""The lifecycle of tasks and clients: what ``/peer/registry`` and the REST task and peer API do.

The manager owns the task and client records, from registration (a task admitted, its source fetched once)
to deletion and GC, and keeps three stores consistent while it creates and removes them: the records
here, the pure progress state (who holds which piece, loads, blacklists) and the CDN. Source access is
serialised per task ID (one lock each), which is what guarantees a single origin fetch per task even
when many peers register in the same instant. What a client reports while it downloads is the pull
loop's (:mod:`supernode.managers.pull`): it reads these records and moves a client's status on.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from dfwire.ids import (
    SUPER_CID_PREFIX,
    convert_headers,
    effective_task_url,
    filter_url_param,
    header_problem,
    source_url_problem,
    task_id,
)

from ..cdn.source import TlsOptions
from ..config import Settings
from ..errors import DfCode, DfError, SourceNotFound, invalid, not_found
from ..metrics import Metrics
from ..models import CdnStatus, RegisterRequest, RegisterResult, TaskCreateRequest, TaskCreateResponse
from ..peers import Peer, PeerRegistry
from ..progress import ProgressState
from ..tasks import Client, ClientStatus, Task, TaskSpec
from .cdn import CdnManager


class TaskManager:
    """Tasks and their clients, from registration to GC: only it adds entries to their tables or removes them."""

    def __init__(self, *, settings: Settings, peers: PeerRegistry, progress: ProgressState, cdn: CdnManager,
                 metrics: Metrics, super_peer: Peer) -> None:
        self.settings = settings
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
        self.progress.add_peer(peer.id, serves=serves, told_down=req.download_limit, told_up=req.upload_limit)
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
            # The CID now names the new peer's download; the old peer keeps none under it.
            if old.peer_id != client.peer_id:
                self._cid_of.pop((old.peer_id, task.id), None)
        self.clients[key] = client
        self._cid_of[(client.peer_id, task.id)] = client.cid
        task.clients.add(client.cid)
        self.progress.add_client(task.id, client.cid, client.peer_id)
        self._count_client(client, +1)
        self.metrics.dfgettasks_registered_total.labels(callsystem=client.call_system).inc()

    def _count_client(self, client: Client, delta: int) -> None:
        self.metrics.dfgettasks.labels(callsystem=client.call_system, status=client.status.value).inc(delta)

    def set_client_status(self, client: Client, status: ClientStatus) -> None:
        """Move a client's status on, keeping the per-status gauge and the failure count in step."""
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

    def peer_cid(self, task_id_: str, pid: str) -> str | None:
        """The CID of peer ``pid``'s download of the task; None when it has none."""
        return self._cid_of.get((pid, task_id_))

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
            self.mark_service_down(client)
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

    def mark_service_down(self, client: Client) -> None:
        """The client's peer stops uploading: it is no source from now on, and GC forgets it later."""
        peer = self.peers.find(client.peer_id)
        if peer is not None and peer.service_down_time is None:
            peer.service_down_time = time.time()
            self.progress.mark_service_down(peer.id, time.monotonic())

    def _drop_peer(self, pid: str) -> None:
        peer = self.peers.remove(pid)
        if self.progress.has_peer(pid):
            self.progress.remove_peer(pid)
        self.metrics.peers.labels(peer=peer.ip).dec()
