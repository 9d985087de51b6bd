"""Which pieces a client downloads next, and from whom (Go ``scheduler/manager.go``, spec §4.1-4.2).

Runs on every pull of every client, so each call costs about one pass over the client's missing
pieces plus a few set probes per handed-out piece, whatever the swarm size. Pure: it reads and
updates a :class:`~supernode.progress.ProgressState` and takes time and randomness as arguments.

Kept from Go: only pieces the CDN has are handed out; rarest first, then nearest to the centre of
the client's running pieces, ties by a coin flip; at most ``peer_down_limit`` running pieces per
client, ``peer_up_limit`` uploads per peer and ``cdn_task_limit`` CDN pieces per task; a client with
too many failures downloads only from the CDN; blacklisted, eliminated and service-down peers are
skipped; the CDN is the fallback when no peer qualifies.

Better than Go: among the eligible holders of a piece the least loaded one is chosen (ties at
random) instead of the first in map order, which spreads uploads over the swarm.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from .errors import DfCode, DfError
from .progress import PeerProgress, PeerSet, ProgressState, TaskProgress

_DEFAULT_RNG = random.Random()

_SCAN_LIMIT = 64
"""Intersections whose smaller side has at most this many PIDs are scanned exactly."""

_PROBES = 16
"""Random probes into a larger intersection before that load level is given up for the piece."""


@dataclass(frozen=True)
class Assignment:
    piece_num: int
    dst_pid: str
    """The source peer; the task's supernode PID when the CDN serves the piece."""


def schedule(
    state: ProgressState, task_id: str, cid: str, *, now: float, rng: random.Random | None = None
) -> list[Assignment]:
    """Hand the client its next pieces and mark them RUNNING on their sources.

    Raises ``DfError`` with ``CDN_FAIL`` when the CDN failed a piece, ``PEER_WAIT`` when nothing can
    be handed out now, ``PEER_CONTINUE`` when the client already runs ``peer_down_limit`` pieces, and
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
    slots = limits.peer_down_limit - len(client.running)
    if slots <= 0:
        raise DfError(DfCode.PEER_CONTINUE, f"taskID: {task_id}, clientID: {cid}")
    isolated = peer.client_errors > limits.failure_count_limit
    cdn_slots = limits.cdn_task_limit - state.super_load(task_id, now)
    if cdn_slots <= 0 and (isolated or not _others_free(task, peer)):
        raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}: all sources busy")

    assignments: list[Assignment] = []
    holders_of = task.holders.get
    for num in sort_pieces(available, task.holder_counts, running_center(client.running), rng):
        holders = None if isolated or not task.free_load else holders_of(num)
        dst = None if holders is None else _pick_source(task, holders, peer, rng)
        if dst is None:
            if cdn_slots <= 0:
                if isolated or not _others_free(task, peer):
                    break
                continue
            dst = task.super_pid
            cdn_slots -= 1
        state.start_piece(task_id, cid, num, dst, now)
        assignments.append(Assignment(num, dst))
        if len(assignments) == slots:
            break
    if not assignments:
        raise DfError(DfCode.PEER_WAIT, f"taskID: {task_id}, clientID: {cid}: all sources busy")
    return assignments


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
    upper_first = rng.getrandbits(1)
    count = holder_counts.get
    keys = [((count(n, 0) * span + abs(d := n - center)) * 2 + ((d > 0) ^ upper_first)) * span + n for n in nums]
    keys.sort()
    return [key % span for key in keys]


def running_center(running_pieces: Collection[int]) -> int:
    """Integer mean of the running piece numbers, 0 when none run (Go ``getCenterNum``)."""
    return sum(running_pieces) // len(running_pieces) if running_pieces else 0


def _pick_source(task: TaskProgress, holders: PeerSet, peer: PeerProgress, rng: random.Random) -> str | None:
    """The least loaded eligible holder of the piece, ties at random; None if no peer qualifies.

    Only sources with a spare upload slot are in ``task.free_load``, so what is left to check here is
    the requester itself and its own blacklist. The smaller of the piece's holders and the free
    sources is scanned exactly when it is small, which is the common case (rare pieces have few
    holders, a busy swarm has few free sources); otherwise the load buckets are sampled.
    """
    free = task.free_load
    if len(holders.items) <= len(free):
        if len(holders.items) > _SCAN_LIMIT:
            return _sample_buckets(task, holders, peer, rng)
        found = [pid for pid in holders.items if pid in free]
    else:
        if len(free) > _SCAN_LIMIT:
            return _sample_buckets(task, holders, peer, rng)
        found = [pid for pid in free if pid in holders.pos]
    if not found:
        return None
    me, black = peer.pid, peer.blacklist
    found = [pid for pid in found if pid != me and pid not in black]
    if len(found) <= 1:
        return found[0] if found else None
    least = min(free[pid] for pid in found)
    found = [pid for pid in found if free[pid] == least]
    return found[rng.randrange(len(found))]


def _sample_buckets(task: TaskProgress, holders: PeerSet, peer: PeerProgress, rng: random.Random) -> str | None:
    """Walk the load buckets from the least loaded, probing each bucket's intersection with the holders.

    Used when both sides are large, where an exact scan would cost as much as the whole swarm. A
    probe hits with the share of the smaller side that is in the intersection, so a sparse
    intersection can be missed: the piece then goes to a busier peer or the CDN, never over a limit.
    """
    me, black = peer.pid, peer.blacklist
    for bucket in task.free:
        if len(bucket.items) <= len(holders.items):
            small, big = bucket.items, holders.pos
        else:
            small, big = holders.items, bucket.pos
        if len(small) <= _SCAN_LIMIT:
            found = [pid for pid in small if pid in big and pid != me and pid not in black]
            if found:
                return found[rng.randrange(len(found))]
            continue
        for _ in range(_PROBES):
            pid = small[rng.randrange(len(small))]
            if pid in big and pid != me and pid not in black:
                return pid
    return None


def _others_free(task: TaskProgress, peer: PeerProgress) -> bool:
    """Whether any source other than the requester has a spare upload slot for this task."""
    return len(task.free_load) > (peer.pid in task.free_load)
