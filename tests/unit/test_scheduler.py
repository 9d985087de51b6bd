"""Scheduling decisions (spec §4.1, §4.2): upstream vectors, limits, source choice, and a swarm run."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from supernode.errors import DfCode, DfError
from supernode.progress import Limits, PieceStatus, ProgressState
from supernode.scheduler import Assignment, running_center, schedule, sort_pieces

SUPER = "super"
TASK = "t1"
SUC, FAIL = PieceStatus.SUCCESS, PieceStatus.FAILED


def make_state(limits: Limits = Limits(), peers: int = 4, pieces: int = 8) -> ProgressState:  # noqa: B008
    state = ProgressState(limits)
    state.add_peer(SUPER, serves=True)
    state.add_task(TASK, SUPER)
    for i in range(peers):
        state.add_peer(f"p{i}", serves=True)
        state.add_client(TASK, f"c{i}", f"p{i}")
    for num in range(pieces):
        state.cdn_piece_done(TASK, num)
    return state


def give(state: ProgressState, cid: str, *pieces: int) -> None:
    for num in pieces:
        state.update_piece(TASK, cid, SUPER, num, SUC, now=0.0)


def code_of(state: ProgressState, cid: str, now: float = 0.0) -> DfCode:
    with pytest.raises(DfError) as err:
        schedule(state, TASK, cid, now=now, rng=random.Random(0))
    return err.value.code


# -- §4.1 upstream vectors (scheduler/manager_test.go) --


def test_sort_vector_rarest_then_nearest_to_center() -> None:
    assert sort_pieces({1, 2, 4}, {1: 3, 2: 4, 4: 3}, 3, random.Random(0)) == [4, 1, 2]


def test_sort_vector_ties_are_a_coin_flip() -> None:
    seen = {tuple(sort_pieces({1, 2, 5}, {1: 3, 2: 1, 5: 3}, 3, random.Random(seed))) for seed in range(64)}
    assert seen == {(2, 1, 5), (2, 5, 1)}


@pytest.mark.parametrize(("running", "center"), [([2, 4, 6], 4), ([], 0), ([0], 0), ([0, 4, 9], 4)])
def test_center_vectors(running: list[int], center: int) -> None:
    assert running_center(running) == center


def test_sort_edge_cases() -> None:
    assert sort_pieces([], {}, 0) == []
    assert sort_pieces([7, 3, 5], {}, 100, random.Random(1)) == [7, 5, 3]
    assert sort_pieces(range(10), {n: 9 - n for n in range(10)}, 0, random.Random(1)) == list(range(9, -1, -1))


# -- which pieces --


def test_only_cdn_pieces_not_held_or_running_are_handed_out() -> None:
    state = make_state(pieces=0)
    assert code_of(state, "c0") is DfCode.PEER_WAIT
    for num in (0, 1, 2, 3, 4):
        state.cdn_piece_done(TASK, num)
    give(state, "c0", 0, 2)
    state.start_piece(TASK, "c0", 4, SUPER, now=0.0)
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert sorted(a.piece_num for a in got) == [1, 3]
    assert state.client_running(TASK, "c0") == {1: SUPER, 3: SUPER, 4: SUPER}


def test_error_order_follows_go() -> None:
    state = make_state(Limits(peer_down_limit=2), pieces=2)
    schedule(state, TASK, "c0", now=0.0)
    assert code_of(state, "c0") is DfCode.PEER_WAIT, "nothing available wins over a full client"
    state.cdn_piece_failed(TASK, 1)
    assert code_of(state, "c0") is DfCode.CDN_FAIL


def test_cdn_failure_stops_every_client() -> None:
    state = make_state()
    state.cdn_piece_failed(TASK, 6)
    with pytest.raises(DfError) as err:
        schedule(state, TASK, "c1", now=0.0)
    assert err.value.code is DfCode.CDN_FAIL
    assert "pieceNum: 6" in str(err.value)


def test_a_full_client_gets_peer_continue() -> None:
    state = make_state(Limits(peer_down_limit=2))
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert len(got) == 2
    assert code_of(state, "c0") is DfCode.PEER_CONTINUE


def test_never_more_than_the_free_download_slots() -> None:
    state = make_state(Limits(peer_down_limit=3, cdn_task_limit=10))
    state.start_piece(TASK, "c0", 7, SUPER, now=0.0)
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert len(got) == 2
    assert len(state.client_running(TASK, "c0")) == 3


def test_rarest_pieces_first() -> None:
    state = make_state(peers=6, pieces=4)
    give(state, "c1", 0, 1, 2)
    give(state, "c2", 0, 1)
    give(state, "c3", 0)
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert [a.piece_num for a in got] == [3, 2, 1, 0]
    assert got[0] == Assignment(3, SUPER)
    assert all(a.dst_pid != SUPER for a in got[1:])


def test_unknown_task_or_client() -> None:
    state = make_state()
    for task_id, cid in (("nope", "c0"), (TASK, "nope")):
        with pytest.raises(DfError) as err:
            schedule(state, task_id, cid, now=0.0)
        assert err.value.code is DfCode.DATA_NOT_FOUND


# -- which source --


def holder_state(holders: int, limits: Limits = Limits()) -> ProgressState:  # noqa: B008
    """Peers h0..h{n-1} hold piece 0, and client "c" (peer "me") needs it; the CDN has only piece 0."""
    state = ProgressState(limits)
    state.add_task(TASK, SUPER)
    state.cdn_piece_done(TASK, 0)
    for i in range(holders):
        state.add_peer(f"h{i}", serves=True)
        state.add_client(TASK, f"hc{i}", f"h{i}")
        state.update_piece(TASK, f"hc{i}", SUPER, 0, SUC, now=0.0)
    state.add_peer("me", serves=True)
    state.add_client(TASK, "c", "me")
    return state


def load_peer(state: ProgressState, pid: str, load: int) -> None:
    for i in range(load):
        cid = f"load-{pid}-{i}"
        state.add_client(TASK, cid, "me")
        state.start_piece(TASK, cid, 0, pid, now=0.0)


def pick(state: ProgressState, seed: int = 0) -> str:
    (assignment,) = schedule(state, TASK, "c", now=0.0, rng=random.Random(seed))
    state.update_piece(TASK, "c", assignment.dst_pid, 0, PieceStatus.WAITING, now=0.0)
    return assignment.dst_pid


def test_the_least_loaded_holder_is_chosen() -> None:
    state = holder_state(4)
    for i, load in enumerate((3, 1, 2, 4)):
        load_peer(state, f"h{i}", load)
    assert {pick(state, seed) for seed in range(20)} == {"h1"}


def test_ties_between_least_loaded_holders_are_random() -> None:
    state = holder_state(4)
    load_peer(state, "h0", 1)
    assert {pick(state, seed) for seed in range(40)} == {"h1", "h2", "h3"}


def test_least_loaded_among_many_holders() -> None:
    state = holder_state(300)
    for i in range(300):
        load_peer(state, f"h{i}", 1 + (i % 3 == 0) if i >= 100 else 2)
    expected = {f"h{i}" for i in range(100, 300) if i % 3}
    assert all(pick(state, seed) in expected for seed in range(20))


def test_a_full_peer_is_never_chosen() -> None:
    state = holder_state(2)
    load_peer(state, "h0", 5)
    load_peer(state, "h1", 5)
    assert pick(state) == SUPER
    state.update_piece(TASK, "load-h1-0", "h1", 0, PieceStatus.WAITING, now=0.0)
    assert pick(state) == "h1"


@pytest.mark.parametrize("why", ["blacklisted", "eliminated", "down", "not serving"])
def test_ineligible_holders_are_skipped(why: str) -> None:
    state = holder_state(2, Limits(elimination_limit=1 if why == "eliminated" else 5))
    if why == "blacklisted":
        state.update_piece(TASK, "c", "h0", 5, FAIL, now=0.0)
    elif why == "eliminated":
        state.add_peer("other", serves=True)
        state.add_client(TASK, "oc", "other")
        state.update_piece(TASK, "oc", "h0", 5, FAIL, now=0.0)
    elif why == "down":
        state.mark_service_down("h0", now=1.0)
    else:
        state.add_peer("h0", serves=False)
    assert {pick(state, seed) for seed in range(20)} == {"h1"}


def test_a_peer_is_never_its_own_source() -> None:
    state = holder_state(1)
    state.add_client(TASK, "again", "h0")
    assert schedule(state, TASK, "again", now=0.0) == [Assignment(0, SUPER)]


def test_a_blacklisted_source_only_affects_its_victim() -> None:
    state = holder_state(1)
    state.update_piece(TASK, "c", "h0", 5, FAIL, now=0.0)
    assert pick(state) == SUPER
    state.add_peer("fresh", serves=True)
    state.add_client(TASK, "f", "fresh")
    (got,) = schedule(state, TASK, "f", now=0.0, rng=random.Random(0))
    assert got.dst_pid == "h0"


def test_a_client_with_too_many_errors_uses_only_the_supernode() -> None:
    state = holder_state(10, Limits(failure_count_limit=2))
    for i in range(3):
        state.add_peer(f"bad{i}", serves=True)
        state.update_piece(TASK, "c", f"bad{i}", 10 + i, FAIL, now=0.0)
        if i < 2:
            assert pick(state) != SUPER, "errors equal to the limit are still tolerated"
    assert {pick(state, seed) for seed in range(10)} == {SUPER}


def test_isolated_client_waits_when_the_supernode_is_full() -> None:
    state = holder_state(3, Limits(failure_count_limit=0, cdn_task_limit=1))
    state.add_peer("bad", serves=True)
    state.update_piece(TASK, "c", "bad", 9, FAIL, now=0.0)
    load_peer(state, SUPER, 1)
    assert code_of(state, "c") is DfCode.PEER_WAIT


def test_supernode_limit_per_task() -> None:
    state = make_state(Limits(cdn_task_limit=3), peers=3)
    state.add_task("t2", SUPER)
    state.add_client("t2", "x", "p0")
    state.cdn_piece_done("t2", 0)
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert [a.dst_pid for a in got] == [SUPER] * 3
    assert code_of(state, "c1") is DfCode.PEER_WAIT
    assert schedule(state, "t2", "x", now=0.0) == [Assignment(0, SUPER)], "other tasks have their own limit"
    state.update_piece(TASK, "c0", SUPER, got[0].piece_num, SUC, now=1.0)
    got1 = schedule(state, TASK, "c1", now=1.0, rng=random.Random(0))
    assert [a.dst_pid for a in got1] == [SUPER, "p0"], "one CDN slot, then the rest from peers"
    assert got1[1].piece_num == got[0].piece_num


def test_pieces_without_a_source_are_skipped_not_waited_on() -> None:
    state = make_state(Limits(cdn_task_limit=1), peers=3, pieces=4)
    give(state, "c1", 2)
    first = schedule(state, TASK, "c2", now=0.0, rng=random.Random(0))
    assert [a.dst_pid for a in first] == [SUPER, "p1"]
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert [(a.piece_num, a.dst_pid) for a in got] == [(2, "p1")]


def test_supernode_load_reset_unblocks_the_cdn() -> None:
    state = make_state(Limits(cdn_task_limit=2, super_load_reset=30.0))
    assert len(schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))) == 2
    assert code_of(state, "c1", now=29.0) is DfCode.PEER_WAIT
    got = schedule(state, TASK, "c1", now=30.0, rng=random.Random(0))
    assert [a.dst_pid for a in got] == [SUPER, SUPER]


def test_same_seed_same_schedule() -> None:
    def run(seed: int) -> list[list[Assignment]]:
        state = make_state(Limits(cdn_task_limit=2), peers=30, pieces=20)
        rng = random.Random(seed)
        out = []
        for rnd in range(40):
            for i in range(30):
                cid = f"c{i}"
                for num, dst in state.client_running(TASK, cid).items():
                    state.update_piece(TASK, cid, dst, num, SUC, now=rnd)
                try:
                    out.append(schedule(state, TASK, cid, now=rnd, rng=rng))
                except DfError:
                    out.append([])
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


# -- a swarm driven to completion --


@dataclass
class SimPeer:
    pid: str
    cid: str
    kind: str
    join: int
    done: set[int] = field(default_factory=set)
    running: dict[int, str] = field(default_factory=dict)
    errors: int = 0
    finished: int | None = None
    removed: bool = False
    next_poll: int = 0
    backoff: int = 1


def test_swarm_runs_to_completion_within_every_limit() -> None:
    """2,000 dfget clients pull a 200-piece file, as dfget would, through schedule/update_piece.

    The simulation keeps its own books (in-flight uploads per source, blacklists, error counts) and
    checks every assignment against them, so the state under test never grades itself.
    """
    rng = random.Random(20240611)
    limits = Limits()
    n_peers, n_pieces, tick_s = 2000, 200, 0.1
    state = ProgressState(limits)
    state.add_peer(SUPER, serves=True)
    state.add_task(TASK, SUPER)

    kinds = ["faulty"] * 20 + ["broken"] * 10 + ["cdn"] * 100 + ["leaver"] * 20 + ["normal"] * (n_peers - 150)
    rng.shuffle(kinds)
    peers = {
        f"p{i}": SimPeer(f"p{i}", f"c{i}", kind, join=rng.randrange(40)) for i, kind in enumerate(kinds)
    }
    by_cid = {p.cid: p for p in peers.values()}
    inflight: Counter[str] = Counter()
    due: dict[int, list[tuple[str, int, str]]] = {}
    blacklist: dict[str, set[str]] = {pid: set() for pid in peers}
    service_failures: Counter[str] = Counter()
    down: set[str] = set()
    assigned = Counter[str]()

    def check(peer: SimPeer, got: list[Assignment], tick: int) -> None:
        assert got
        isolated = peer.errors > limits.failure_count_limit
        for a in got:
            num, dst = a.piece_num, a.dst_pid
            assert num in cdn_done and num not in peer.done and num not in peer.running
            if dst == SUPER:
                assert inflight[SUPER] < limits.cdn_task_limit
            else:
                src = peers[dst]
                assert not isolated, f"{peer.pid} has {peer.errors} errors but got a peer source"
                assert dst != peer.pid and num in src.done and not src.removed
                assert src.kind != "cdn" and dst not in down
                assert dst not in blacklist[peer.pid]
                assert service_failures[dst] < limits.elimination_limit
                assert inflight[dst] < limits.peer_up_limit
            inflight[dst] += 1
            assigned[dst] += 1
            peer.running[num] = dst
            due.setdefault(tick + (1 if dst == SUPER else rng.randint(1, 3)), []).append((peer.cid, num, dst))
        assert len(peer.running) <= limits.peer_down_limit

    def pull(peer: SimPeer, tick: int) -> None:
        try:
            got = schedule(state, TASK, peer.cid, now=tick * tick_s, rng=rng)
        except DfError as err:
            assert err.code in (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE)
            if not peer.running:
                peer.next_poll = tick + peer.backoff
                peer.backoff = min(peer.backoff * 2, 8)
            return
        peer.backoff = 1
        check(peer, got, tick)

    cdn_done: set[int] = set()
    active: list[SimPeer] = []
    pending = sorted(peers.values(), key=lambda p: p.join)
    tick = 0
    while pending or any(p.finished is None and not p.removed for p in active):
        tick += 1
        assert tick < 2000, "swarm did not finish"
        now = tick * tick_s
        for num in range(min(n_pieces, (tick - 1) * 20), min(n_pieces, tick * 20)):
            state.cdn_piece_done(TASK, num)
            cdn_done.add(num)
        while pending and pending[0].join <= tick:
            peer = pending.pop(0)
            state.add_peer(peer.pid, serves=peer.kind != "cdn")
            state.add_client(TASK, peer.cid, peer.pid)
            peer.next_poll = tick
            active.append(peer)

        for cid, num, dst in due.pop(tick, []):
            peer = by_cid[cid]
            if peer.removed or peer.running.get(num) != dst:
                continue
            del peer.running[num]
            inflight[dst] -= 1
            fails = dst != SUPER and (peers[dst].kind == "faulty" or peer.kind == "broken" or peers[dst].removed)
            state.update_piece(TASK, cid, dst, num, FAIL if fails else SUC, now=now)
            if dst != SUPER and not peers[dst].removed:
                if fails:
                    peer.errors += 1
                    blacklist[peer.pid].add(dst)
                    service_failures[dst] += 1
                    assert dst in state.peer(peer.pid).blacklist
                else:
                    peer.errors = 0
                    service_failures[dst] = 0
            elif fails:
                peer.errors += 1
            if not fails:
                peer.done.add(num)
                state.update_piece(TASK, cid, dst, num, SUC, now=now)
            if len(peer.done) == n_pieces:
                peer.finished = tick
                assert state.client_done_count(TASK, cid) == n_pieces
                if peer.kind == "cdn" or rng.random() < 0.1:
                    state.mark_service_down(peer.pid, now)
                    down.add(peer.pid)
            else:
                pull(peer, tick)

        for peer in active:
            if peer.finished is None and not peer.removed and not peer.running and peer.next_poll <= tick:
                pull(peer, tick)
            if peer.kind == "leaver" and not peer.removed and len(peer.done) >= n_pieces // 2:
                state.remove_peer(peer.pid)
                peer.removed = True
                for dst in peer.running.values():
                    inflight[dst] -= 1
                peer.running.clear()

        if tick % 25 == 0:
            for pid, count in inflight.items():
                if pid != SUPER and peers[pid].removed:
                    continue
                load = state.super_load(TASK, now) if pid == SUPER else state.peer(pid).load
                assert load == count, pid

    survivors = [p for p in peers.values() if not p.removed]
    assert len(survivors) == n_peers - 20
    assert all(p.finished is not None and len(p.done) == n_pieces for p in survivors)
    assert all(count == 0 for count in inflight.values())
    assert all(state.peer(p.pid).load == 0 for p in survivors)
    assert state.super_load(TASK, tick * tick_s) == 0
    most_tries = limits.elimination_limit + limits.peer_up_limit - 1
    assert all(assigned[p.pid] <= most_tries for p in peers.values() if p.kind == "faulty")
    assert any(p.errors > limits.failure_count_limit for p in peers.values() if p.kind == "broken")
    cdn_share = assigned[SUPER] / sum(assigned.values())
    assert cdn_share < 0.05, f"the CDN served {cdn_share:.1%} of the pieces"
    assert max(count for pid, count in assigned.items() if pid != SUPER) < 4 * n_pieces
