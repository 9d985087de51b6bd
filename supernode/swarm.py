"""The records of piece progress: peers, tasks, clients and their running pieces, as the scheduler reads them.

Kept apart from the transitions (:class:`supernode.progress.ProgressState`, which keeps these records) so the
scheduler's inputs, and the per-task index of sources that keeps it cheap, can be read in one place. Pure data
and the index's own bookkeeping; no I/O.

Vocabulary (as in Dragonfly v1):

- a *peer* is one dfget registration (PID); it uploads to others when it ``serves``;
- a *task* is one file; its CDN (the supernode, PID ``super_pid``) is the gate and the seed: clients
  are only ever handed pieces the CDN has on disk;
- a *client* is one download of one task (CID) by one peer.

The source index of a task, which the progress state keeps exact on every transition:

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


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


ORPHAN = -1
"""The epoch of a running piece whose source peer was removed: it counts on no load."""


class Run(NamedTuple):
    """A running piece and the load it is counted on.

    ``epoch`` is the super-load epoch for CDN pieces, 0 for peer pieces, and :data:`ORPHAN` once the
    source peer is removed. ``started`` is when the scheduler handed it out.
    """

    dst: str
    epoch: int
    started: float = 0.0
    flow_area: float = 0.0
    """For a CDN piece: its client's ``flow_area`` when it started."""
    cdn_area: float = 0.0
    """For a CDN piece: :attr:`supernode.rates.SwarmRates.cdn_area` when it started."""


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
    """Estimated upload capacity in bytes/s (0: not measured yet); see :meth:`supernode.rates.SwarmRates.sample`."""
    down_capacity: float = 0.0
    """Estimated download capacity in bytes/s of this peer's clients, measured the same way."""
    told_down: float = 0.0
    """The download rate limit in bytes/s its dfget registered with (0: not told, as by Go dfget)."""

    @property
    def load(self) -> int:
        return len(self.uploads)

    # -- the source index: only the progress state calls these, on its transitions --

    def set_source(self, source: bool, tasks: Mapping[str, TaskProgress], up_limit: int) -> None:
        """Make the peer a source of the pieces it holds, or stop it being one, in each task's index."""
        self.source = source
        for task_id, pieces in self.held.items():
            task = tasks[task_id]
            if source:
                for num in pieces:
                    task.add_holder(num, self.pid)
                task.move(self, None, self.load, up_limit)
            else:
                for num in pieces:
                    task.remove_holder(num, self.pid)
                task.move(self, self.load, None, up_limit)

    def load_changed(self, old: int, tasks: Mapping[str, TaskProgress], up_limit: int) -> None:
        """The peer's load was ``old``: a source moves to its new load in each task's index."""
        if self.source and old != self.load:
            for task_id in self.held:
                tasks[task_id].move(self, old, self.load, up_limit)


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
    cdn_complete: bool = False
    """The CDN holds every piece of the file: no fresh piece is still to come from the origin."""
    super_load: int = 0
    super_mtime: float = 0.0
    super_epoch: int = 0

    # -- the source index: only the progress state calls these, on its transitions --

    def hold(self, peer: PeerProgress, piece_num: int, up_limit: int) -> None:
        """``peer`` holds the piece now (whether or not it is a source); a source enters its holders."""
        held = peer.held.get(self.task_id)
        first = held is None
        if held is None:
            held = peer.held[self.task_id] = set()
            self.holding_peers.add(peer.pid)
        elif piece_num in held:
            return
        held.add(piece_num)
        if not peer.source:
            return
        self.add_holder(piece_num, peer.pid)
        if first:
            self.move(peer, None, peer.load, up_limit)
        elif peer.pid in self.free_load:
            self.free_counts[piece_num] = self.free_counts.get(piece_num, 0) + 1

    def add_holder(self, piece_num: int, pid: str) -> None:
        holders = self.holders.get(piece_num)
        if holders is None:
            holders = self.holders[piece_num] = PeerSet()
        holders.add(pid)
        self.holder_counts[piece_num] = len(holders.items)

    def remove_holder(self, piece_num: int, pid: str) -> None:
        holders = self.holders[piece_num]
        holders.remove(pid)
        if holders.items:
            self.holder_counts[piece_num] = len(holders.items)
        else:
            del self.holders[piece_num]
            del self.holder_counts[piece_num]

    def move(self, peer: PeerProgress, old: int | None, new: int | None, up_limit: int) -> None:
        """Move a source of the task from load ``old`` to ``new``; None means "not a source"."""
        was_free = old is not None and old < up_limit
        is_free = new is not None and new < up_limit
        if old is not None and was_free:
            self.free[old].remove(peer.pid)
        if new is not None and is_free:
            self.free[new].add(peer.pid)
            self.free_load[peer.pid] = new
        elif was_free:
            del self.free_load[peer.pid]
        if was_free == is_free:
            return
        step = 1 if is_free else -1
        counts = self.free_counts
        for num in peer.held[self.task_id]:
            count = counts.get(num, 0) + step
            if count:
                counts[num] = count
            else:
                del counts[num]
