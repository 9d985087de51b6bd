"""In-memory piece progress of peers, tasks and clients: every transition of the facts the scheduler decides from.

This is the Go supernode's ``progress`` package without its locks and timers: every method is a
synchronous, I/O-free state transition, and time comes in as ``now`` so tests can drive it. The records
it keeps, and the per-task source index whose invariants every method keeps exact, are in
:mod:`supernode.swarm`; the throughput estimates a finished piece updates are in :mod:`supernode.rates`.

The loads, kept by every method:

- A peer's ``load`` is the number of running entries (of any client) whose source it is, and a
  task's ``super_load`` the number of its running entries served by the CDN since the last idle reset.
  Loads are released exactly when a running entry ends, so repeated or stray reports cannot drive them
  below the truth (Go decrements on every report). A running entry whose source peer was removed
  still takes a download slot of its client until reported, but counts on no load.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import invalid, not_found
from .rates import SwarmRates
from .swarm import ORPHAN, ClientProgress, PeerProgress, PeerSet, Run, TaskProgress


class PieceStatus(enum.IntEnum):
    """Piece states, numbered as in Go ``supernode/config/constants.go``."""

    SEMISUC = -3
    WAITING = -1
    RUNNING = 0
    SUCCESS = 1
    FAILED = 2


_HELD = frozenset({PieceStatus.SUCCESS, PieceStatus.SEMISUC})


@dataclass(frozen=True)
class Limits:
    peer_up_limit: int = 5
    """Max concurrent uploads served by one peer."""
    peer_down_limit: int = 4
    """Max concurrent running pieces per client."""
    elimination_limit: int = 5
    """Service error count at which a peer stops being a source (the global blacklist)."""
    failure_count_limit: int = 5
    """Client error count above which a client only downloads from the supernode."""
    cdn_task_limit: int = 4
    """Max concurrent pieces the supernode serves per task (Go reuses peer_down_limit)."""
    super_load_reset: float = 30.0
    """Seconds after which a task's unchanged supernode load is assumed leaked and reset to 0."""
    cdn_upload_rate: float = 0.0
    """The CDN's total upload capacity C in bytes/s, when the operator knows it (``--cdn-rate-limit``);
    0: unknown."""
    cdn_measure: bool = False
    """With C unknown, measure it from the CDN's pieces (:class:`supernode.rates.CdnCapacity`) instead of
    taking the port for unlimited as Go does. The supernode's settings turn it on (``cdn_measure``)."""


class ProgressState:
    """All progress of one supernode. Not thread-safe: call it from one event loop."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._peers: dict[str, PeerProgress] = {}
        self._tasks: dict[str, TaskProgress] = {}
        self.rates = SwarmRates(limits.cdn_upload_rate, measure=limits.cdn_measure)
        """The throughput estimates (the CDN's capacity C among them) and the CDN's load over all tasks."""

    # -- lookups (the scheduler reads these records and marks clients hungry or idle; the rest changes here) --

    def peer(self, pid: str) -> PeerProgress:
        peer = self._peers.get(pid)
        if peer is None:
            raise not_found(f"peerID: {pid}")
        return peer

    def task(self, task_id: str) -> TaskProgress:
        task = self._tasks.get(task_id)
        if task is None:
            raise not_found(f"taskID: {task_id}")
        return task

    def client(self, task_id: str, cid: str) -> ClientProgress:
        client = self.task(task_id).clients.get(cid)
        if client is None:
            raise not_found(f"taskID: {task_id}, clientID: {cid}")
        return client

    def peer_ids(self) -> list[str]:
        return list(self._peers)

    def task_ids(self) -> list[str]:
        return list(self._tasks)

    # -- peers --

    def add_peer(self, pid: str, *, serves: bool, told_down: float = 0.0, told_up: float = 0.0) -> None:
        """Register a peer; registering a known PID again updates whether it serves and what it told.

        ``told_down`` and ``told_up``: the download and upload rate limits its dfget registered with, bytes/s
        (0: not told; Go dfget tells neither). A dfget's limit is what it takes or gives when its link is
        not the narrower, the usual case: the limit is how operators keep dfget off a node's workloads.
        Piece timings cannot show a client that takes more than one source gives, and the scheduler's
        flows use the told rates for such clients (``supernode.scheduler._flow_limits``).
        """
        if serves and told_up:
            self.rates.tell_up(told_up)
        peer = self._peers.get(pid)
        if peer is None:
            self._peers[pid] = PeerProgress(pid=pid, serves=serves, source=serves, told_down=told_down)
            return
        peer.serves = serves
        peer.told_down = told_down
        self._refresh_source(peer)

    def has_peer(self, pid: str) -> bool:
        return pid in self._peers

    def remove_peer(self, pid: str) -> None:
        """Forget a peer, its clients and every blacklist row about it. Unknown PIDs are ignored.

        Pieces others are fetching from it stay running (dfget reports them, as failures) but are
        no longer counted on any load.
        """
        peer = self._peers.get(pid)
        if peer is None:
            return
        for task_id, cid in list(peer.clients):
            self.remove_client(task_id, cid)
        if peer.source:
            peer.set_source(False, self._tasks, self.limits.peer_up_limit)
        for task_id, cid, num in peer.uploads:
            self._tasks[task_id].clients[cid].running[num] = Run(pid, ORPHAN)
        for task_id in peer.held:
            self._tasks[task_id].holding_peers.remove(pid)
        for src in peer.blacklisted_by:
            del self._peers[src].blacklist[pid]
        for dst in peer.blacklist:
            self._peers[dst].blacklisted_by.remove(pid)
        del self._peers[pid]

    def mark_service_down(self, pid: str, now: float) -> None:
        """The peer's uploader is gone: it stops being a source now; GC removes it later (§7.1)."""
        peer = self.peer(pid)
        if peer.down_time is None:
            peer.down_time = now
            self._refresh_source(peer)

    def peer_service_down_time(self, pid: str) -> float | None:
        return self.peer(pid).down_time

    # -- tasks and the CDN --

    def add_task(self, task_id: str, super_pid: str) -> None:
        """Start tracking a task; adding a known task again keeps its progress."""
        if task_id not in self._tasks:
            free = [PeerSet() for _ in range(self.limits.peer_up_limit)]
            self._tasks[task_id] = TaskProgress(task_id=task_id, super_pid=super_pid, free=free)

    def remove_task(self, task_id: str) -> None:
        """Forget a task, its clients (releasing the loads they put on peers) and its holders."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        for cid in list(task.clients):
            self.remove_client(task_id, cid)
        for pid in task.holding_peers:
            del self._peers[pid].held[task_id]
        del self._tasks[task_id]

    def cdn_piece_done(self, task_id: str, piece_num: int) -> None:
        task = self.task(task_id)
        task.cdn_done.add(piece_num)
        task.cdn_failed.discard(piece_num)

    def cdn_complete(self, task_id: str) -> None:
        """The CDN holds every piece of the task now (its download ended well, or its cache was adopted)."""
        self.task(task_id).cdn_complete = True

    def cdn_piece_failed(self, task_id: str, piece_num: int) -> None:
        self.task(task_id).cdn_failed.add(piece_num)

    def cdn_pieces(self, task_id: str) -> frozenset[int]:
        return frozenset(self.task(task_id).cdn_done)

    def super_load(self, task_id: str, now: float) -> int:
        """Pieces the CDN is serving for this task, after the idle reset is applied."""
        task = self.task(task_id)
        self._expire_super_load(task, now)
        return task.super_load

    def holders(self, task_id: str, piece_num: int) -> frozenset[str]:
        """The sources that can serve this piece now (the supernode is never one)."""
        holders = self.task(task_id).holders.get(piece_num)
        return frozenset(holders.items) if holders is not None else frozenset()

    # -- clients --

    def add_client(self, task_id: str, cid: str, pid: str) -> None:
        """Start a client; a known CID starts over (as in Go), releasing what it had running."""
        task = self.task(task_id)
        peer = self.peer(pid)
        if cid in task.clients:
            self.remove_client(task_id, cid)
        task.clients[cid] = ClientProgress(task_id=task_id, cid=cid, pid=pid)
        peer.clients[task_id, cid] = None

    def remove_client(self, task_id: str, cid: str) -> None:
        """Forget a client and release its running pieces. The peer keeps serving what it holds."""
        task = self._tasks.get(task_id)
        client = task.clients.pop(cid, None) if task is not None else None
        if task is None or client is None:
            return
        for num, run in client.running.items():
            self._release(task, cid, num, run, None)
        for num in list(client.unconfirmed):
            self._confirm(task, client, num)
        task.hungry.pop(cid, None)
        del self._peers[client.pid].clients[task_id, cid]

    def client_done(self, task_id: str, cid: str) -> frozenset[int]:
        return frozenset(self.client(task_id, cid).done)

    def client_done_count(self, task_id: str, cid: str) -> int:
        return len(self.client(task_id, cid).done)

    def client_running(self, task_id: str, cid: str) -> dict[int, str]:
        return {num: run.dst for num, run in self.client(task_id, cid).running.items()}

    def start_piece(self, task_id: str, cid: str, piece_num: int, dst_pid: str, now: float) -> None:
        """Mark a piece RUNNING for the client from ``dst_pid`` and count it on the source's load.

        This is the scheduler's primitive: it checks no limit, the scheduler does.
        """
        task = self.task(task_id)
        client = self.client(task_id, cid)
        if piece_num in client.done or piece_num in client.running:
            raise invalid(f"taskID: {task_id}, clientID: {cid}: piece {piece_num} is held or running")
        task.inflight[piece_num] = task.inflight.get(piece_num, 0) + 1
        if dst_pid == task.super_pid:
            self._expire_super_load(task, now)
            task.super_load += 1
            self.rates.add_cdn_load(1, now)
            task.super_mtime = now
            self.rates.count_flows(client, now)
            client.running[piece_num] = Run(dst_pid, task.super_epoch, now, client.flow_area, self.rates.cdn_area)
            return
        dst = self.peer(dst_pid)
        self.rates.count_flows(client, now)
        client.running[piece_num] = Run(dst_pid, 0, now)
        old = dst.load
        dst.uploads.add((task_id, cid, piece_num))
        dst.load_changed(old, self._tasks, self.limits.peer_up_limit)

    def update_piece(
        self, task_id: str, cid: str, dst_pid: str, piece_num: int, status: PieceStatus, now: float, *,
        size: int = 0,
    ) -> bool:
        """Apply a client's report about one piece (§4.3); whether the client holds it for the first time.

        A report about a piece the client already holds counts once, so dfget's double success report
        (``/peer/piece/suc`` and the next pull) counts once. ``dst_pid`` may be a peer that is gone:
        the report still counts for the client. RUNNING is not a report: only the scheduler starts
        pieces.

        The client holds the piece on either report, but its peer becomes a source of it only on
        SUCCESS (``/peer/piece/suc``): Go dfget 1.0.6 sends the SEMISUC pull as soon as it has read a
        piece and writes it to the file its uploader serves afterwards, so a peer handed out on the
        SEMISUC alone serves a short piece (seen as MD5 failures, and blacklisted sources, in a swarm
        of Go dfgets). Our dfget reports SUCCESS after the write as well.

        A success of ``size`` bytes (see :func:`supernode.rates.piece_rate`) from the source it was handed out from is a
        throughput sample (:meth:`supernode.rates.SwarmRates.sample`): the piece's rate times the source's
        concurrent uploads at that moment estimates what the source delivers in total. Only the first report
        that the client holds a piece is one (the True answer), so ``size`` may be passed with every report.
        """
        if status == PieceStatus.RUNNING:
            raise invalid(f"taskID: {task_id}, clientID: {cid}: RUNNING is not a piece report")
        task = self.task(task_id)
        client = self.client(task_id, cid)
        if piece_num in client.done:
            if status == PieceStatus.SUCCESS:
                self._confirm(task, client, piece_num)
                if client.pid != task.super_pid:
                    task.hold(self._peers[client.pid], piece_num, self.limits.peer_up_limit)
            return False
        if piece_num in client.running:
            self.rates.count_flows(client, now)
        run = client.running.pop(piece_num, None)
        if run is not None:
            if status in _HELD and run.dst == dst_pid and run.epoch != ORPHAN:
                self.rates.sample(task, client, run, self._peers, size, now)
            self._release(task, cid, piece_num, run, now)
        peer = self._peers[client.pid]
        held = status in _HELD
        if held:
            client.done.add(piece_num)
            if status == PieceStatus.SEMISUC:
                client.unconfirmed.add(piece_num)
                task.unconfirmed[piece_num] = task.unconfirmed.get(piece_num, 0) + 1
            elif client.pid != task.super_pid:
                task.hold(peer, piece_num, self.limits.peer_up_limit)
        if status == PieceStatus.WAITING or not dst_pid or task.super_pid in (client.pid, dst_pid):
            return held
        dst = self._peers.get(dst_pid)
        if held:
            peer.client_errors = 0
            if dst is not None:
                dst.service_errors = 0
                self._refresh_source(dst)
            return True
        peer.client_errors += 1
        if dst is not None:
            peer.blacklist[dst_pid] = peer.blacklist.get(dst_pid, 0) + 1
            dst.blacklisted_by.add(peer.pid)
            dst.service_errors += 1
            self._refresh_source(dst)
        return False

    def take_back(self, task_id: str, cid: str, pieces: Iterable[int], now: float) -> None:
        """The client was handed these pieces long ago and never reported them: they are WAITING again.

        Each running one is released as a WAITING report would release it (no sample, nobody blamed);
        the others no longer run (a report or a restart settled them) and are left alone.
        """
        client = self.client(task_id, cid)
        for num in pieces:
            run = client.running.get(num)
            if run is not None:
                self.update_piece(task_id, cid, run.dst, num, PieceStatus.WAITING, now)

    def capacity(self, pid: str) -> float:
        """The source's estimated upload capacity in bytes/s; 0 when it was never measured."""
        peer = self._peers.get(pid)
        return peer.capacity if peer is not None else 0.0

    # -- internals --

    @staticmethod
    def _confirm(task: TaskProgress, client: ClientProgress, piece_num: int) -> None:
        """The client's SEMISUC of the piece is settled (by its SUCCESS, or by the client leaving)."""
        if piece_num not in client.unconfirmed:
            return
        client.unconfirmed.discard(piece_num)
        left = task.unconfirmed[piece_num] - 1
        if left:
            task.unconfirmed[piece_num] = left
        else:
            del task.unconfirmed[piece_num]

    def _refresh_source(self, peer: PeerProgress) -> None:
        """Whether the peer is a source follows from what it reported; the index follows a change of it."""
        limit = self.limits.elimination_limit
        source = peer.serves and peer.down_time is None and peer.service_errors < limit
        if source != peer.source:
            peer.set_source(source, self._tasks, self.limits.peer_up_limit)

    def _release(self, task: TaskProgress, cid: str, piece_num: int, run: Run, now: float | None) -> None:
        """Take an ended running entry off its source's load and off the piece's in-flight count."""
        left = task.inflight[piece_num] - 1
        if left:
            task.inflight[piece_num] = left
        else:
            del task.inflight[piece_num]
        if run.epoch == ORPHAN:
            return
        if run.dst == task.super_pid:
            if now is not None:
                self._expire_super_load(task, now)
            if run.epoch == task.super_epoch:
                task.super_load -= 1
                self.rates.add_cdn_load(-1, now)
                if now is not None:
                    task.super_mtime = now
            return
        dst = self._peers[run.dst]
        old = dst.load
        dst.uploads.remove((task.task_id, cid, piece_num))
        dst.load_changed(old, self._tasks, self.limits.peer_up_limit)

    def _expire_super_load(self, task: TaskProgress, now: float) -> None:
        if task.super_load and now - task.super_mtime >= self.limits.super_load_reset:
            self.rates.add_cdn_load(-task.super_load, now)
            task.super_load = 0
            task.super_epoch += 1
