"""Which pieces a client downloads next, and from whom (Go ``scheduler/manager.go``, spec §4.1-4.2).

Runs on every pull of every client, so a call costs one sort of the client's missing pieces plus a
bounded amount of set work, whatever the swarm size. Pure: it reads and updates a
:class:`~supernode.progress.ProgressState` and takes time and randomness as arguments.

Kept from Go: only pieces the CDN has are handed out; rarest first, then nearest to the centre of
the client's running pieces, ties by a coin flip; at most ``peer_down_limit`` running pieces per
client, ``peer_up_limit`` uploads per peer and ``cdn_task_limit`` CDN pieces per task; a client with
too many failures downloads only from the CDN; blacklisted, eliminated and service-down peers are
skipped; the CDN is the fallback when no peer qualifies.

Better than Go: among the eligible holders of a piece the least loaded one is chosen (ties at
random) instead of the first in map order, which spreads uploads over the swarm; and that holder is
weighed against the CDN by measured throughput and current load (:meth:`_CdnBudget.faster_than`), so
a client is not handed a crawling upload from a busy peer while the CDN would serve it faster.

With the CDN's upload capacity C told (``Limits.cdn_upload_rate``) or measured, or while it is being
probed (:class:`supernode.rates.CdnCapacity`), the CDN is a seed of finite capacity (:class:`_CdnBudget`)
and clients and sources run only the flows their measured capacities fill (:func:`_flow_limits`): the
regime of a supernode that shares one NIC with hundreds of nodes, where the peers, not the CDN, must
carry the swarm. A client that runs one flow at a time measures its source, never itself, so one that
told a download limit above what a source gives (our dfget tells its ``-s``; Go dfget tells nothing)
runs the flows the told rates fill, and once the CDN holds the whole file its free flows serve such
clients too: where clients download faster than peers upload, the swarm needs the CDN's port.

Sources go first to the clients that lag: a client with no piece at all that waited while every source
was busy is owed the next free one (:func:`_hungry_others`), and the pull loop wakes held pulls fewest
pieces first (:mod:`supernode.changes`). A client that lags holds the pieces nobody needs any more, so
serving it first is what keeps every peer's upload busy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from .errors import DfCode, DfError
from .progress import ProgressState
from .rates import CDN_START as _CDN_START
from .swarm import PeerProgress, PeerSet, TaskProgress

_DEFAULT_RNG = random.Random()

_CDN_FRESH_SLOTS = 2
"""Flows a finite CDN keeps for fresh pieces: it sends a piece that peers hold only while more are free."""

_FLOWS_START = 2
"""Pieces a client runs at once, with a finite CDN, before its download capacity is measured."""

_TOLD_FLOWS = 1.25
"""A told download limit above this many sources' worth plans the client's flows (:func:`_flow_limits`): at or
below it, the quarter-short rule there gives one flow either way."""

_STARVED = 1.0
"""Seconds a client waits with nothing running before a finite CDN sends it a piece that peers hold: long
enough for a busy holder to free up, short enough that no client idles for long."""

_HUNGRY_TTL = 3.0
"""Seconds a client that waited with no piece stays first in line for a free source: longer than a held pull
(``pull_hold``, 1 s) plus dfget's longest back-off after a 602 (1.6 s)."""

_SCAN_LIMIT = 64
"""Intersections whose smaller side has at most this many PIDs are scanned exactly, without probing."""

_PROBES = 4
"""Random probes per load level into a large intersection before it is scanned exactly."""

_SCAN_BUDGET = 4096
"""Membership tests one schedule call may spend on intersections (about 0.1 ms of CPU)."""


@dataclass(frozen=True)
class Assignment:
    piece_num: int
    dst_pid: str
    """The source peer; the task's supernode PID when the CDN serves the piece."""


def schedule(
    state: ProgressState, task_id: str, cid: str, *, now: float, rng: random.Random | None = None,
    limit: int | None = None,
) -> list[Assignment]:
    """Hand the client its next pieces and mark them RUNNING on their sources.

    Raises ``DfError`` with ``CDN_FAIL`` when the CDN failed a piece, ``PEER_WAIT`` when nothing can
    be handed out now, ``PEER_CONTINUE`` when the client already runs as many pieces as it may, and
    ``DATA_NOT_FOUND`` for an unknown task or client. The checks run in Go's order.
    """
    rng = rng if rng is not None else _DEFAULT_RNG
    task = state.task(task_id)
    client = state.client(task_id, cid)
    peer = state.peer(client.pid)
    limits = state.limits
    if task.cdn_failed:
        raise DfError(DfCode.CDN_FAIL, f"taskID: {task_id}, pieceNum: {min(task.cdn_failed)}")
    available = task.cdn_done - client.done
    available.difference_update(client.running)
    if not available:
        raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}")
    seeding = state.rates.cdn.seeds
    flows, source_flows = _flow_limits(state, peer) if seeding else (limits.peer_down_limit, limits.peer_up_limit)
    slots = flows - len(client.running)
    if limit is not None:
        slots = min(slots, limit)
    if slots <= 0:
        raise DfError(DfCode.PEER_CONTINUE, f"taskID: {task_id}, clientID: {cid}")
    isolated = peer.client_errors > limits.failure_count_limit
    cdn_load = state.super_load(task_id, now)
    starving = not client.running and client.idle_since is not None and now - client.idle_since >= _STARVED
    # the client told it takes more than its running pieces get, and no fresh piece is to come: the CDN's free
    # flows would idle
    takes_more = (task.cdn_complete and bool(client.running) and _told_more(state, peer)
                  and peer.told_down > len(client.running) * _source_rate(state))
    cdn = _CdnBudget(state, task, cdn_load, starving=starving, takes_more=takes_more)
    free_counts = task.free_counts
    if cdn.slots <= 0:
        if isolated:
            raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}: the CDN is busy")
        available.intersection_update(free_counts)

    usable = sum(len(level.items) for level in task.free[:source_flows]) + max(cdn.slots, 0)
    hungry = not client.done and not client.running
    if reserved := _hungry_others(task, cid, now):
        # the sources left go first, one each, to clients with no piece yet: each of them that gets
        # one becomes a source too, which a client that holds pieces already is
        if usable <= reserved and not hungry:
            raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}: "
                                            f"free sources kept for {reserved} clients with no piece")
        slots = min(slots, 1 if hungry else usable - reserved)

    assignments: list[Assignment] = []
    picker = _SourcePicker(task, peer, rng, source_flows)
    # with a finite CDN a piece counts with its copies on their way (running, or reported and not yet
    # served), for rarest-first and for what is fresh
    holder_counts, inflight, unconfirmed = task.holder_counts, task.inflight, task.unconfirmed
    counts = holder_counts
    if seeding and (inflight or unconfirmed):
        counts = {n: holder_counts.get(n, 0) + inflight.get(n, 0) + unconfirmed.get(n, 0) for n in available}
    for num in sort_pieces(available, counts, running_center(client.running), rng):
        if picker.budget <= 0:
            break
        dst = picker.pick(task.holders[num]) if not isolated and num in free_counts else None
        if dst is not None and cdn.slots > (_CDN_FRESH_SLOTS if seeding else 0) and cdn.faster_than(dst):
            dst = None
        if dst is None:
            if cdn.slots <= 0:
                if isolated:
                    break
                continue
            if not isolated and not cdn.serves(fresh=not counts.get(num)):
                continue
            dst = task.super_pid
            cdn.take()
        state.start_piece(task_id, cid, num, dst, now)
        assignments.append(Assignment(num, dst))
        if len(assignments) == slots:
            break
    if not assignments:
        if hungry and not usable and not isolated:
            task.hungry.pop(cid, None)
            task.hungry[cid] = now
        if not client.running and client.idle_since is None:
            client.idle_since = now
        raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}: no free source")
    if hungry:
        task.hungry.pop(cid, None)
    client.idle_since = None
    return assignments


def _hungry_others(task: TaskProgress, cid: str, now: float) -> int:
    """Clients other than ``cid`` that recently waited with no piece at all while every source was busy.

    A client that holds pieces is a source already; one that holds none adds a source to the swarm the
    moment its first piece is whole. While sources are scarce (a swarm's first seconds, when only the
    CDN and a few peers hold anything) serving those first makes the sources double each round
    instead of growing by the CDN's few flows. Entries older than :data:`_HUNGRY_TTL` are dropped, so
    a client that stopped pulling holds nothing back for long.
    """
    hungry = task.hungry
    while hungry:
        oldest = next(iter(hungry))
        if hungry[oldest] >= now - _HUNGRY_TTL:
            break
        del hungry[oldest]
    return len(hungry) - (cid in hungry)


def _flow_limits(state: ProgressState, peer: PeerProgress) -> tuple[int, int]:
    """Pieces a client runs at once, and uploads a source runs at once, when the CDN is a seed.

    A piece is of use to the swarm only once it is whole, so with a finite CDN fewer flows that each
    run at full speed spread pieces sooner than many that share the same links: a client runs as
    many as it takes to fill its measured download capacity with flows at a source's measured
    upload capacity, and a source serves as many as its capacity fills at that flow rate. Until
    both are measured, :data:`_FLOWS_START` and one.

    A client whose told download limit is more than one source gives (:func:`_told_more`) plans with
    the told rates instead: measured, a client that runs one flow at a time shows its source's upload,
    not its own download, so a client that could take two sources' worth would never be given a second.
    """
    limits = state.limits
    down = peer.down_capacity or state.rates.down_capacity
    up = state.rates.peer_capacity
    if not down or not up:
        return min(_FLOWS_START, limits.peer_down_limit), 1
    if _told_more(state, peer):
        down, up = peer.told_down, _source_rate(state)
    # a client a quarter short of filling one more source's flow does not open it
    flows = min(limits.peer_down_limit, max(1, math.ceil(down / up - 0.25)))
    source_flows = min(limits.peer_up_limit, max(1, round(up * flows / down)))
    return flows, source_flows


def _told_more(state: ProgressState, peer: PeerProgress) -> bool:
    """Whether the peer told a download limit that more than one source's flow fills.

    Only then do told rates replace the measured ones: where a client takes no more than a source
    gives (the download-bound swarm, D = U), both give one flow, and the measured estimates keep
    deciding what they were tuned on (how many uploads a source runs, and when the CDN sends a copy).
    """
    source = _source_rate(state)
    return bool(source) and peer.told_down > _TOLD_FLOWS * source


def _source_rate(state: ProgressState) -> float:
    """What one source gives one client, bytes/s: the upload limit peers told, else the measured capacity.

    Told limits first: an uploader's limiter lets a piece through at its limit and more after an idle
    spell, so measured capacities run high (14-21 MiB/s for uploaders limited to 10).
    """
    return state.rates.told_up or state.rates.peer_capacity


def _full_flow(state: ProgressState) -> float:
    """The rate of one piece from a source that serves nothing else to a client that fetches nothing else.

    The lesser of the typical client download and source upload capacities, both measured on pieces
    peers served; 0 while either is unmeasured. The CDN's own flows never count: flows out of a CDN
    that runs too many are slow, and counting them would make it run more.
    """
    if state.rates.down_capacity and state.rates.peer_capacity:
        return min(state.rates.down_capacity, state.rates.peer_capacity)
    return 0.0


class _CdnBudget:
    """The CDN's share of one schedule call.

    With its capacity C taken for unlimited (not told, and the probe over without a measure, or
    measuring off), the CDN is a source like the others, weighed against the least loaded free holder
    by measured throughput (:meth:`faster_than`), up to ``cdn_task_limit`` pieces at once. On a fast
    port that is what finishes a swarm soonest.

    With C told (``Limits.cdn_upload_rate``, the operator's ``--cdn-rate-limit``) or measured, or while
    it is probed, the CDN is a seed of finite capacity that every peer waits on while a piece exists
    nowhere else, so it is spent where peers cannot help, as BitTorrent's super-seeding does:

    - *fresh* pieces (no peer holds one, none is on its way to a peer or waiting for the SUCCESS that
      makes its receiver a source) may always come from it, and
      rarest-first (which counts pieces in flight) puts them first: each piece leaves the CDN about
      once and the swarm spreads it;
    - a piece some peer holds or is receiving comes from it only while more than
      :data:`_CDN_FRESH_SLOTS` of its flows are free (they stay free for the fresh pieces the origin
      is still delivering), or to a client that has had nothing running for :data:`_STARVED` seconds
      while the CDN has a flow's capacity to spare (it would idle otherwise: the tail of a download
      whose holders are all busy), or, once the CDN holds the whole file, to a client whose told
      download takes more than the pieces it runs (``takes_more``: where clients download faster
      than peers upload, the CDN's port is part of what the swarm can send, and idling it slows
      everyone). Only in the first case is it weighed against the least loaded free holder by
      speed: a CDN with no flows to spare that won such races sent 2-3 F;
    - it runs at most about C / (rate of one piece flow) pieces at once, over all tasks, so the pieces
      it sends arrive as fast as from any other source instead of crawling side by side; before any
      flow is measured, :data:`_CDN_START`; while C is probed, the probe's window.
    """

    __slots__ = ("_load", "_rate", "_starving", "_state", "_takes_more", "_task", "slots")

    def __init__(self, state: ProgressState, task: TaskProgress, load: int, *, starving: bool,
                 takes_more: bool) -> None:
        self._state, self._task, self._load = state, task, load
        self._starving, self._takes_more = starving, takes_more
        cdn = state.rates.cdn
        self._rate = cdn.rate or state.capacity(task.super_pid)
        self.slots = state.limits.cdn_task_limit - load
        # the port's flows are shared by all its tasks
        if cdn.rate:
            flow = _full_flow(state)
            port = max(1, round(cdn.rate / flow)) if flow else _CDN_START
            self.slots = min(self.slots, port - state.rates.cdn_load)
        elif cdn.probing:
            self.slots = min(self.slots, cdn.window - state.rates.cdn_load)

    def take(self) -> None:
        self.slots -= 1
        self._load += 1

    def serves(self, *, fresh: bool) -> bool:
        """Whether the CDN serves a piece no free peer can, given a free CDN slot; ``fresh``: no copy of it
        is held by a source or on its way to a peer."""
        if not self._state.rates.cdn.seeds or fresh:
            return True
        if self.slots > (0 if self._takes_more else _CDN_FRESH_SLOTS):
            return True
        flow = _full_flow(self._state)
        return self._starving and (not flow or self._rate / (self._load + 1) >= flow)

    def faster_than(self, dst: str) -> bool:
        """Whether one more CDN piece is expected to arrive faster than one from peer ``dst``.

        Expected rate = capacity / (current load + 1), for both. A peer never measured counts with
        the swarm's typical peer capacity; while there is none, or the CDN's capacity is unknown, the
        peer gets the piece as in Go (that is also how sources get measured at all).
        """
        state = self._state
        peer = state.capacity(dst) or state.rates.peer_capacity
        if not self._rate or not peer:
            return False
        return self._rate / (self._load + 1) > peer / (self._task.free_load[dst] + 1)


def sort_pieces(
    pieces: Iterable[int], holder_counts: Mapping[int, int], center: int, rng: random.Random | None = None
) -> list[int]:
    """Order pieces rarest first, then by distance to ``center``, ties by a coin flip.

    Pieces missing from ``holder_counts`` have no holders. A tie can only be the pair center-d and
    center+d, so one coin per call decides whether the lower or the upper piece of each pair comes
    first. Each piece is packed into one integer key so the sort runs in C: this is the per-pull hot
    path.
    """
    nums = list(pieces)
    if not nums:
        return nums
    rng = rng if rng is not None else _DEFAULT_RNG
    span = max(max(nums), center) + 1
    flip = rng.getrandbits(1)
    count = holder_counts.get
    keys = [((count(n, 0) * span + abs(d := n - center)) * 2 + ((d > 0) ^ flip)) * span + n for n in nums]
    keys.sort()
    return [key % span for key in keys]


def running_center(running_pieces: Collection[int]) -> int:
    """Integer mean of the running piece numbers, 0 when none run (Go ``getCenterNum``)."""
    return sum(running_pieces) // len(running_pieces) if running_pieces else 0


class _SourcePicker:
    """Finds sources for the pieces of one schedule call, within a bounded amount of work.

    A source is the least loaded eligible holder of the piece, ties at random. Only sources with a
    spare upload slot are in ``task.free_load`` (and its per-load buckets ``task.free``), so what is
    left to check per candidate is the requester itself and its own blacklist.

    The work is the intersection of the piece's holders with the free sources. When the smaller side
    is small (rare pieces have few holders, a busy swarm has few free sources) it is scanned exactly.
    When both are large, a few random probes per load level, least loaded first, find a source at
    once if the intersection is dense (a sparse least loaded level can be missed, and a busier
    holder chosen); only if all probes miss is it scanned exactly, and such scans draw on a per-call
    budget. When the budget is spent the call hands out what it has: the client pulls again soon,
    and the cost of one pull never grows with the swarm.
    """

    __slots__ = ("_black", "_max_load", "_me", "_rng", "_task", "budget")

    def __init__(self, task: TaskProgress, peer: PeerProgress, rng: random.Random, max_load: int) -> None:
        self._task = task
        self._me = peer.pid
        self._black = peer.blacklist
        self._rng = rng
        self._max_load = max_load
        self.budget = _SCAN_BUDGET

    def pick(self, holders: PeerSet) -> str | None:
        """A source among ``holders``, of which at least one is free (``task.free_counts``)."""
        free = self._task.free_load
        by_holders = len(holders.items) <= len(free)
        size = len(holders.items) if by_holders else len(free)
        if size > _SCAN_LIMIT:
            probed = self._probe(holders)
            if probed is not None or size > self.budget:
                return probed
        self.budget -= size
        if by_holders:
            found = [pid for pid in holders.items if pid in free]
        else:
            found = [pid for pid in free if pid in holders.pos]
        me, black, below = self._me, self._black, self._max_load
        found = [pid for pid in found if pid != me and pid not in black and free[pid] < below]
        if len(found) <= 1:
            return found[0] if found else None
        least = min(free[pid] for pid in found)
        found = [pid for pid in found if free[pid] == least]
        return found[int(self._rng.random() * len(found))]

    def _probe(self, holders: PeerSet) -> str | None:
        me, black, rand = self._me, self._black, self._rng.random
        for bucket in self._task.free[:self._max_load]:
            if not bucket.items:
                continue
            if len(bucket.items) <= len(holders.items):
                small, big = bucket.items, holders.pos
            else:
                small, big = holders.items, bucket.pos
            self.budget -= _PROBES
            for _ in range(_PROBES):
                pid = small[int(rand() * len(small))]
                if pid in big and pid != me and pid not in black:
                    return pid
        return None
