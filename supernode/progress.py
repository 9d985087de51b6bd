"""In-memory piece progress of peers, tasks and clients: the facts the scheduler decides from.

This is the Go supernode's ``progress`` package without its locks and timers: every method is a
synchronous, I/O-free state transition, and time comes in as ``now`` so tests can drive it.

Vocabulary (as in Dragonfly v1):

- a *peer* is one dfget registration (PID); it uploads to others when it ``serves``;
- a *task* is one file; its CDN (the supernode, PID ``super_pid``) is the gate and the seed: clients
  are only ever handed pieces the CDN has on disk;
- a *client* is one download of one task (CID) by one peer.

Invariants kept by every method, which the scheduler relies on to stay cheap:

- A peer is a *source* iff it serves, has not reported service down, and its service error count is
  below ``elimination_limit``. ``task.holders[n]`` holds exactly the sources that hold piece ``n``
  (never the supernode), and ``task.holder_counts[n]`` is its size, so "rarest first" costs one dict
  read per piece. Holder sets are pruned eagerly when a peer stops being a source (and refilled if it
  becomes one again), instead of lazily as in Go, so counts are never inflated by dead peers.
- ``task.free_load`` maps each source that holds at least one piece of the task and has a spare
  upload slot to its load, ``task.free[load]`` holds the same sources grouped by load, and
  ``task.free_counts[n]`` counts those that hold piece ``n`` (absent when 0). A busy swarm has many
  pieces whose holders are all busy: the count lets the scheduler skip each of them in O(1), and
  the least loaded holder of the others is found by intersecting small sets, never by scanning
  every peer. Keeping the count costs O(pieces held) when a peer's upload slots fill up or free up.
- A peer's ``load`` is the number of running entries (of any client) whose source it is, and a
  task's ``super_load`` the number of its running entries served by the CDN since the last idle reset.
  Loads are released exactly when a running entry ends, so repeated or stray reports cannot drive them
  below the truth (Go decrements on every report). A running entry whose source peer was removed
  still takes a download slot of its client until reported, but counts on no load.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from . import rates
from .errors import invalid, not_found


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


class PeerSet:
    """A set of PIDs with O(1) add and remove that can also be sampled by index.

    Used for holder sets and load buckets; the scheduler reads ``items`` (to sample and scan) and
    ``pos`` (to test membership) directly, for speed, and never mutates them. Order depends only on
    the sequence of operations, never on string hashing, so a seeded ``random.Random`` makes
    scheduling reproducible.
    """

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, pid: str) -> None:
        if pid not in self.pos:
            self.pos[pid] = len(self.items)
            self.items.append(pid)

    def remove(self, pid: str) -> None:
        index = self.pos.pop(pid)
        last = self.items.pop()
        if index < len(self.items):
            self.items[index] = last
            self.pos[last] = index


_ORPHAN = -1


class Run(NamedTuple):
    """A running piece and the load it is counted on.

    ``epoch`` is the super-load epoch for CDN pieces, 0 for peer pieces, and ``_ORPHAN`` once the
    source peer is removed. ``started`` is when the scheduler handed it out.
    """

    dst: str
    epoch: int
    started: float = 0.0
    flow_area: float = 0.0
    """For a CDN piece: its client's ``flow_area`` when it started."""
    cdn_area: float = 0.0
    """For a CDN piece: ``ProgressState``'s integral of the CDN's load over time when it started."""


@dataclass(slots=True, eq=False)
class PeerProgress:
    pid: str
    serves: bool
    source: bool
    uploads: set[tuple[str, str, int]] = field(default_factory=set)
    """(task ID, CID, piece) of every running entry this peer is the source of."""
    client_errors: int = 0
    service_errors: int = 0
    down_time: float | None = None
    blacklist: dict[str, int] = field(default_factory=dict)
    """dst PID -> failures this peer had downloading from it; any entry excludes that source."""
    blacklisted_by: set[str] = field(default_factory=set)
    held: dict[str, set[int]] = field(default_factory=dict)
    """task ID -> pieces this peer holds, whether or not it is currently a source."""
    clients: dict[tuple[str, str], None] = field(default_factory=dict)
    capacity: float = 0.0
    """Estimated upload capacity in bytes/s (0: not measured yet); see ``ProgressState.update_piece``."""
    down_capacity: float = 0.0
    """Estimated download capacity in bytes/s of this peer's clients, measured the same way."""

    @property
    def load(self) -> int:
        return len(self.uploads)


@dataclass(slots=True, eq=False)
class ClientProgress:
    task_id: str
    cid: str
    pid: str
    done: set[int] = field(default_factory=set)
    running: dict[int, Run] = field(default_factory=dict)
    unconfirmed: set[int] = field(default_factory=set)
    """Pieces reported SEMISUC and not yet SUCCESS: the client has them, its peer serves them not yet."""
    idle_since: float | None = None
    """When the scheduler first told this client to wait while it had nothing running; None while it runs."""
    flow_area: float = 0.0
    """The integral over time of how many pieces the client runs, up to ``flow_clock``: a piece's average
    company is the integral's growth over its run divided by the run's length."""
    flow_clock: float = 0.0


@dataclass(slots=True, eq=False)
class TaskProgress:
    task_id: str
    super_pid: str
    free: list[PeerSet]
    free_load: dict[str, int] = field(default_factory=dict)
    free_counts: dict[int, int] = field(default_factory=dict)
    cdn_done: set[int] = field(default_factory=set)
    cdn_failed: set[int] = field(default_factory=set)
    holders: dict[int, PeerSet] = field(default_factory=dict)
    holder_counts: dict[int, int] = field(default_factory=dict)
    inflight: dict[int, int] = field(default_factory=dict)
    """piece -> running entries of it (from any source; absent when 0): pieces on their way to a peer."""
    unconfirmed: dict[int, int] = field(default_factory=dict)
    """piece -> clients that reported it SEMISUC but not yet SUCCESS (absent when 0): pieces a peer will
    serve in a moment, so not fresh ones for a finite CDN to send again."""
    holding_peers: set[str] = field(default_factory=set)
    clients: dict[str, ClientProgress] = field(default_factory=dict)
    hungry: dict[str, float] = field(default_factory=dict)
    """CID -> when it was last told to wait while it had no piece at all and every source was busy;
    oldest first. See ``supernode.scheduler``: such clients come first for the next free source."""
    super_load: int = 0
    super_mtime: float = 0.0
    super_epoch: int = 0


class ProgressState:
    """All progress of one supernode. Not thread-safe: call it from one event loop."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._peers: dict[str, PeerProgress] = {}
        self._tasks: dict[str, TaskProgress] = {}
        self.cdn = rates.CdnCapacity(limits.cdn_upload_rate, measure=limits.cdn_measure)
        """The CDN's capacity C, told or measured, and how many pieces it sends at once while not told."""
        self.cdn_load = 0
        """Pieces the CDN is serving, over all tasks (the sum of their ``super_load``): they share one port."""
        self._cdn_area = 0.0
        self._cdn_clock = 0.0
        self.peer_capacity = 0.0
        """The same estimate over every peer's samples: the guess for a peer not measured yet."""
        self.down_capacity = 0.0
        """The download capacity estimate over every client's samples: the guess for one not measured yet.
        Only pieces peers served count: a CDN flow moves at the CDN's share (C over the flows it runs), so
        with a saturated CDN its flows say how many it runs, and counting them as what a client can take
        made the scheduler hand the CDN more flows each round (seen: 8 at once, each at a crawl)."""

    # -- lookups (the scheduler reads these records; only this class mutates them) --

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

    def add_peer(self, pid: str, *, serves: bool) -> None:
        """Register a peer; registering a known PID again only updates whether it serves."""
        peer = self._peers.get(pid)
        if peer is None:
            self._peers[pid] = PeerProgress(pid=pid, serves=serves, source=serves)
            return
        peer.serves = serves
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
            self._withdraw_source(peer)
        for task_id, cid, num in peer.uploads:
            self._tasks[task_id].clients[cid].running[num] = Run(pid, _ORPHAN)
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

    def client_holds(self, task_id: str, cid: str, piece_num: int) -> bool:
        return piece_num in self.client(task_id, cid).done

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
            self._add_cdn_load(1, now)
            task.super_mtime = now
            self._count_flows(client, now)
            client.running[piece_num] = Run(dst_pid, task.super_epoch, now, client.flow_area, self._cdn_area)
            return
        dst = self.peer(dst_pid)
        self._count_flows(client, now)
        client.running[piece_num] = Run(dst_pid, 0, now)
        old = dst.load
        dst.uploads.add((task_id, cid, piece_num))
        self._load_changed(dst, old)

    def update_piece(
        self, task_id: str, cid: str, dst_pid: str, piece_num: int, status: PieceStatus, now: float, *,
        size: int = 0,
    ) -> None:
        """Apply a client's report about one piece (§4.3).

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
        throughput sample: the piece's rate times the source's concurrent uploads at that moment estimates what the
        source delivers in total. The client's own download limit caps each sample, so estimates are
        lower bounds; they are compared, never used as promises.
        """
        if status == PieceStatus.RUNNING:
            raise invalid(f"taskID: {task_id}, clientID: {cid}: RUNNING is not a piece report")
        task = self.task(task_id)
        client = self.client(task_id, cid)
        if piece_num in client.done:
            if status == PieceStatus.SUCCESS:
                self._confirm(task, client, piece_num)
                if client.pid != task.super_pid:
                    self._hold(self._peers[client.pid], task, piece_num)
            return
        if piece_num in client.running:
            self._count_flows(client, now)
        run = client.running.pop(piece_num, None)
        if run is not None:
            if status in _HELD and run.dst == dst_pid and run.epoch != _ORPHAN:
                self._sample(task, client, run, size, now)
            self._release(task, cid, piece_num, run, now)
        peer = self._peers[client.pid]
        held = status in _HELD
        if held:
            client.done.add(piece_num)
            if status == PieceStatus.SEMISUC:
                client.unconfirmed.add(piece_num)
                task.unconfirmed[piece_num] = task.unconfirmed.get(piece_num, 0) + 1
            elif client.pid != task.super_pid:
                self._hold(peer, task, piece_num)
        if status == PieceStatus.WAITING or not dst_pid or task.super_pid in (client.pid, dst_pid):
            return
        dst = self._peers.get(dst_pid)
        if held:
            peer.client_errors = 0
            if dst is not None:
                dst.service_errors = 0
                self._refresh_source(dst)
            return
        peer.client_errors += 1
        if dst is not None:
            peer.blacklist[dst_pid] = peer.blacklist.get(dst_pid, 0) + 1
            dst.blacklisted_by.add(peer.pid)
            dst.service_errors += 1
            self._refresh_source(dst)

    def capacity(self, pid: str) -> float:
        """The source's estimated upload capacity in bytes/s; 0 when it was never measured."""
        peer = self._peers.get(pid)
        return peer.capacity if peer is not None else 0.0

    # -- internals --

    def _sample(self, task: TaskProgress, client: ClientProgress, run: Run, size: int, now: float) -> None:
        """One finished piece: its rate, and the rate times the flows that shared each end of it.

        ``run`` was already taken off the client's running pieces, but not yet off its source's load.
        """
        source = self._peers.get(run.dst)
        rate = rates.piece_rate(size, now - run.started)
        cdn = run.dst == task.super_pid
        if cdn and size >= rates.SAMPLE_MIN:
            self._add_cdn_load(0, now)
            span = now - run.started
            self.cdn.piece(rate, client_flows=(client.flow_area - run.flow_area) / span if span > 0 else 1.0,
                           cdn_flows=(self._cdn_area - run.cdn_area) / span if span > 0 else 1.0,
                           clients_take=self.down_capacity)
        if rate is None or source is None:
            return
        concurrent = task.super_load if cdn else source.load
        sample = rate * max(concurrent, 1)
        source.capacity = rates.average(source.capacity, sample)
        if cdn:
            return
        self.peer_capacity = rates.average(self.peer_capacity, sample)
        down = rate * (len(client.running) + 1)
        receiver = self._peers[client.pid]
        receiver.down_capacity = rates.average(receiver.down_capacity, down)
        self.down_capacity = rates.average(self.down_capacity, down)

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

    def _hold(self, peer: PeerProgress, task: TaskProgress, piece_num: int) -> None:
        held = peer.held.get(task.task_id)
        first = held is None
        if held is None:
            held = peer.held[task.task_id] = set()
            task.holding_peers.add(peer.pid)
        elif piece_num in held:
            return
        held.add(piece_num)
        if not peer.source:
            return
        self._add_holder(task, piece_num, peer.pid)
        if first:
            self._move(task, peer, None, peer.load)
        elif peer.pid in task.free_load:
            task.free_counts[piece_num] = task.free_counts.get(piece_num, 0) + 1

    def _refresh_source(self, peer: PeerProgress) -> None:
        limit = self.limits.elimination_limit
        source = peer.serves and peer.down_time is None and peer.service_errors < limit
        if source == peer.source:
            return
        if source:
            peer.source = True
            for task_id, pieces in peer.held.items():
                task = self._tasks[task_id]
                for num in pieces:
                    self._add_holder(task, num, peer.pid)
                self._move(task, peer, None, peer.load)
        else:
            self._withdraw_source(peer)

    def _withdraw_source(self, peer: PeerProgress) -> None:
        peer.source = False
        for task_id, pieces in peer.held.items():
            task = self._tasks[task_id]
            for num in pieces:
                self._remove_holder(task, num, peer.pid)
            self._move(task, peer, peer.load, None)

    @staticmethod
    def _add_holder(task: TaskProgress, piece_num: int, pid: str) -> None:
        holders = task.holders.get(piece_num)
        if holders is None:
            holders = task.holders[piece_num] = PeerSet()
        holders.add(pid)
        task.holder_counts[piece_num] = len(holders.items)

    @staticmethod
    def _remove_holder(task: TaskProgress, piece_num: int, pid: str) -> None:
        holders = task.holders[piece_num]
        holders.remove(pid)
        if holders.items:
            task.holder_counts[piece_num] = len(holders.items)
        else:
            del task.holders[piece_num]
            del task.holder_counts[piece_num]

    def _load_changed(self, peer: PeerProgress, old: int) -> None:
        if peer.source and old != peer.load:
            for task_id in peer.held:
                self._move(self._tasks[task_id], peer, old, peer.load)

    def _move(self, task: TaskProgress, peer: PeerProgress, old: int | None, new: int | None) -> None:
        """Move a source of the task from load ``old`` to ``new``; None means "not a source"."""
        limit = self.limits.peer_up_limit
        was_free = old is not None and old < limit
        is_free = new is not None and new < limit
        if old is not None and was_free:
            task.free[old].remove(peer.pid)
        if new is not None and is_free:
            task.free[new].add(peer.pid)
            task.free_load[peer.pid] = new
        elif was_free:
            del task.free_load[peer.pid]
        if was_free == is_free:
            return
        step = 1 if is_free else -1
        counts = task.free_counts
        for num in peer.held[task.task_id]:
            count = counts.get(num, 0) + step
            if count:
                counts[num] = count
            else:
                del counts[num]

    def _release(self, task: TaskProgress, cid: str, piece_num: int, run: Run, now: float | None) -> None:
        """Take an ended running entry off its source's load and off the piece's in-flight count."""
        left = task.inflight[piece_num] - 1
        if left:
            task.inflight[piece_num] = left
        else:
            del task.inflight[piece_num]
        if run.epoch == _ORPHAN:
            return
        if run.dst == task.super_pid:
            if now is not None:
                self._expire_super_load(task, now)
            if run.epoch == task.super_epoch:
                task.super_load -= 1
                self._add_cdn_load(-1, now)
                if now is not None:
                    task.super_mtime = now
            return
        dst = self._peers[run.dst]
        old = dst.load
        dst.uploads.remove((task.task_id, cid, piece_num))
        self._load_changed(dst, old)

    @staticmethod
    def _count_flows(client: ClientProgress, now: float) -> None:
        """Bring the client's ``flow_area`` up to ``now``; called before its running pieces change."""
        if now > client.flow_clock:
            client.flow_area += len(client.running) * (now - client.flow_clock)
            client.flow_clock = now

    def _add_cdn_load(self, delta: int, now: float | None) -> None:
        """Change the CDN's load, and keep its integral over time: a CDN piece's average company is the
        integral's growth over its run divided by the run's length."""
        if now is not None and now > self._cdn_clock:
            self._cdn_area += self.cdn_load * (now - self._cdn_clock)
            self._cdn_clock = now
        self.cdn_load += delta

    def _expire_super_load(self, task: TaskProgress, now: float) -> None:
        if task.super_load and now - task.super_mtime >= self.limits.super_load_reset:
            self._add_cdn_load(-task.super_load, now)
            task.super_load = 0
            task.super_epoch += 1
