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
    counts = {n: 9 - n for n in range(10)}
    assert sort_pieces(range(10), counts, 0, random.Random(1)) == list(range(9, -1, -1))


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
    least = {f"h{i}" for i in range(100, 300) if i % 3}
    for i in range(300):
        load_peer(state, f"h{i}", 1 if f"h{i}" in least else 2)
    assert all(pick(state, seed) in least for seed in range(20))


def test_many_holders_among_even_more_free_peers() -> None:
    state = holder_state(100)
    state.cdn_piece_done(TASK, 1)
    for i in range(150):
        state.add_peer(f"other{i}", serves=True)
        state.add_client(TASK, f"oc{i}", f"other{i}")
        state.update_piece(TASK, f"oc{i}", SUPER, 1, SUC, now=0.0)
    state.update_piece(TASK, "c", SUPER, 1, SUC, now=0.0)
    assert {pick(state, seed) for seed in range(20)} <= {f"h{i}" for i in range(100)}


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


def test_isolated_client_gets_only_the_free_cdn_slots() -> None:
    state = make_state(Limits(failure_count_limit=0, cdn_task_limit=2))
    state.update_piece(TASK, "c0", "p1", 7, FAIL, now=0.0)
    state.start_piece(TASK, "c1", 0, SUPER, now=0.0)
    got = schedule(state, TASK, "c0", now=0.0, rng=random.Random(0))
    assert [a.dst_pid for a in got] == [SUPER]


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


@pytest.mark.parametrize(("blocked_pieces", "served"), [(20, True), (60, False)])
def test_work_per_call_is_bounded(blocked_pieces: int, served: bool) -> None:
    """Pieces whose only free holder is blacklisted cost a scan each; the scans stop at a budget.

    100 full peers and one blacklisted free peer hold pieces 0..k-1; 100 free peers hold only piece k,
    which sorts last. With few blocked pieces the call reaches piece k; with many it gives up first.
    """
    state = ProgressState()
    state.add_task(TASK, SUPER)
    last = blocked_pieces
    for num in range(last + 1):
        state.cdn_piece_done(TASK, num)
    state.add_peer("me", serves=True)
    state.add_client(TASK, "c", "me")
    for name, pieces in [("busy", range(last + 1)), ("idle", [last]), ("blocked", range(last))]:
        for i in range(100 if name != "blocked" else 1):
            pid = f"{name}{i}"
            state.add_peer(pid, serves=True)
            state.add_client(TASK, pid, pid)
            for num in pieces:
                state.update_piece(TASK, pid, SUPER, num, SUC, now=0.0)
            if name == "busy":
                load_peer(state, pid, 5)
    state.update_piece(TASK, "c", "blocked0", 999, FAIL, now=0.0)
    load_peer(state, SUPER, 4)
    if served:
        (got,) = schedule(state, TASK, "c", now=0.0, rng=random.Random(0))
        assert got.piece_num == last and got.dst_pid.startswith("idle")
    else:
        assert code_of(state, "c") is DfCode.PEER_WAIT


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


@dataclass(eq=False)
class SimClient:
    """One dfget process as the swarm simulation sees it: its own books, kept apart from the state."""

    pid: str
    cid: str
    kind: str
    join: int
    done: set[int] = field(default_factory=set)
    running: dict[int, str] = field(default_factory=dict)
    errors: int = 0
    finished: bool = False
    removed: bool = False
    next_poll: int = 0
    backoff: int = 1


class Swarm:
    """Drives a ProgressState the way the task manager and the pull loop do: dfget registrations, pulls, reports.

    Kinds of clients: ``normal``; ``cdn`` (cdn pattern: never serves); ``faulty`` (every upload from
    it fails); ``broken`` (every download it makes from a peer fails, so it ends up using only the
    CDN); ``leaver`` (GC'd half-way through). Each tick is 0.1 s; a piece takes 1 tick from the CDN and
    1-3 ticks from a peer. A client pulls after every finished piece, and when idle polls with dfget's
    doubling back-off. Every handed-out piece is checked against the simulation's own books.
    """

    def __init__(self, n_clients: int, n_pieces: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.limits = Limits()
        self.n_pieces = n_pieces
        self.state = ProgressState(self.limits)
        self.state.add_peer(SUPER, serves=True)
        self.state.add_task(TASK, SUPER)
        share = {"faulty": 0.01, "broken": 0.005, "cdn": 0.05, "leaver": 0.01}
        kinds = [kind for kind, part in share.items() for _ in range(max(1, int(n_clients * part)))]
        kinds += ["normal"] * (n_clients - len(kinds))
        self.rng.shuffle(kinds)
        self.clients = {
            f"p{i}": SimClient(f"p{i}", f"c{i}", kind, join=self.rng.randrange(40))
            for i, kind in enumerate(kinds)
        }
        self.by_cid = {c.cid: c for c in self.clients.values()}
        self.cdn_done: set[int] = set()
        self.inflight: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.due: dict[int, list[tuple[SimClient, int, str]]] = {}
        self.blacklist: dict[str, set[str]] = {pid: set() for pid in self.clients}
        self.service_failures: Counter[str] = Counter()
        self.down: set[str] = set()
        self.tick = 0

    @property
    def now(self) -> float:
        return self.tick * 0.1

    def run(self) -> None:
        pending = sorted(self.clients.values(), key=lambda c: c.join)
        active: list[SimClient] = []
        while pending or any(not c.finished and not c.removed for c in active):
            self.tick += 1
            assert self.tick < 3000, "the swarm did not finish"
            for num in range(min(self.n_pieces, (self.tick - 1) * 20), min(self.n_pieces, self.tick * 20)):
                self.state.cdn_piece_done(TASK, num)
                self.cdn_done.add(num)
            while pending and pending[0].join <= self.tick:
                client = pending.pop(0)
                self.state.add_peer(client.pid, serves=client.kind != "cdn")
                self.state.add_client(TASK, client.cid, client.pid)
                active.append(client)
            for client, num, dst in self.due.pop(self.tick, []):
                if not client.removed:
                    self.finish_piece(client, num, dst)
            for client in active:
                idle = not client.finished and not client.removed and not client.running
                if idle and client.next_poll <= self.tick:
                    self.pull(client)
                if client.kind == "leaver" and not client.removed and len(client.done) >= self.n_pieces // 2:
                    self.leave(client)
            if self.tick % 25 == 0:
                self.check_loads()

    def pull(self, client: SimClient) -> None:
        try:
            got = schedule(self.state, TASK, client.cid, now=self.now, rng=self.rng)
        except DfError as err:
            assert err.code in (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE)
            if not client.running:
                client.next_poll = self.tick + client.backoff
                client.backoff = min(client.backoff * 2, 8)
            return
        client.backoff = 1
        for assignment in got:
            self.check(client, assignment)
            num, dst = assignment.piece_num, assignment.dst_pid
            self.inflight[dst] += 1
            self.served[dst] += 1
            client.running[num] = dst
            took = 1 if dst == SUPER else self.rng.randint(1, 3)
            self.due.setdefault(self.tick + took, []).append((client, num, dst))
        assert len(client.running) <= self.limits.peer_down_limit

    def check(self, client: SimClient, assignment: Assignment) -> None:
        num, dst = assignment.piece_num, assignment.dst_pid
        limits = self.limits
        assert num in self.cdn_done and num not in client.done and num not in client.running
        if dst == SUPER:
            assert self.inflight[SUPER] < limits.cdn_task_limit
            return
        source = self.clients[dst]
        assert client.errors <= limits.failure_count_limit, f"{client.pid} should use only the CDN"
        assert dst != client.pid and num in source.done and not source.removed
        assert source.kind != "cdn" and dst not in self.down
        assert dst not in self.blacklist[client.pid]
        assert self.service_failures[dst] < limits.elimination_limit
        assert self.inflight[dst] < limits.peer_up_limit

    def finish_piece(self, client: SimClient, num: int, dst: str) -> None:
        del client.running[num]
        self.inflight[dst] -= 1
        source = self.clients.get(dst)
        failed = source is not None and (source.kind == "faulty" or client.kind == "broken" or source.removed)
        self.state.update_piece(TASK, client.cid, dst, num, FAIL if failed else SUC, now=self.now)
        if source is not None and failed:
            client.errors += 1
            if not source.removed:
                self.blacklist[client.pid].add(dst)
                self.service_failures[dst] += 1
                assert dst in self.state.peer(client.pid).blacklist
        elif source is not None:
            client.errors = 0
            self.service_failures[dst] = 0
        if not failed:
            client.done.add(num)
            self.state.update_piece(TASK, client.cid, dst, num, SUC, now=self.now)
        if len(client.done) < self.n_pieces:
            self.pull(client)
            return
        client.finished = True
        assert self.state.client_done_count(TASK, client.cid) == self.n_pieces
        if client.kind == "cdn" or self.rng.random() < 0.1:
            self.state.mark_service_down(client.pid, self.now)
            self.down.add(client.pid)

    def leave(self, client: SimClient) -> None:
        self.state.remove_peer(client.pid)
        client.removed = True
        for dst in client.running.values():
            self.inflight[dst] -= 1
        client.running.clear()

    def check_loads(self) -> None:
        for pid, count in self.inflight.items():
            if pid == SUPER:
                assert self.state.super_load(TASK, self.now) == count
            elif not self.clients[pid].removed:
                assert self.state.peer(pid).load == count, pid


@pytest.mark.parametrize(("n_clients", "n_pieces"), [(2000, 25), (400, 100)])
def test_a_swarm_finishes_within_every_limit(n_clients: int, n_pieces: int) -> None:
    swarm = Swarm(n_clients, n_pieces, seed=n_clients)
    swarm.run()

    clients = swarm.clients.values()
    limits = swarm.limits
    assert all(c.finished and len(c.done) == n_pieces for c in clients if not c.removed)
    assert sum(c.removed for c in clients) == sum(c.kind == "leaver" for c in clients)
    assert sum(swarm.inflight.values()) == 0
    assert all(swarm.state.peer(c.pid).load == 0 for c in clients if not c.removed)
    assert swarm.state.super_load(TASK, swarm.now) == 0

    faulty = [c.pid for c in clients if c.kind == "faulty"]
    eliminated = [pid for pid in faulty if swarm.service_failures[pid] >= limits.elimination_limit]
    assert eliminated, "faulty peers were tried until the elimination limit"
    assert not any(swarm.state.peer(pid).source for pid in eliminated)
    assert any(c.errors > limits.failure_count_limit for c in clients if c.kind == "broken")
    assert all(swarm.served[c.pid] == 0 for c in clients if c.kind == "cdn")

    uploads = [count for pid, count in swarm.served.items() if pid != SUPER]
    cdn_share = swarm.served[SUPER] / (swarm.served[SUPER] + sum(uploads))
    assert cdn_share < 0.05, f"the CDN served {cdn_share:.1%} of the pieces"
    assert max(uploads) <= 4 * sum(uploads) / len(uploads), "uploads are spread over the swarm"


def test_limit_caps_the_pieces_handed_out() -> None:
    state = ProgressState(Limits(peer_down_limit=4))
    state.add_peer("super", serves=False)
    state.add_peer("p", serves=True)
    state.add_task("t", "super")
    for n in range(6):
        state.cdn_piece_done("t", n)
    state.add_client("t", "c", "p")
    first = schedule(state, "t", "c", now=0.0, rng=random.Random(1), limit=1)
    assert len(first) == 1
    assert len(state.client_running("t", "c")) == 1
    rest = schedule(state, "t", "c", now=0.0, rng=random.Random(1))
    assert len(rest) == 3


# -- source choice by measured throughput --

PIECE_BYTES = 4 * 1024 * 1024


def _measure(state: ProgressState, cid: str, num: int, dst: str, seconds: float, start: float = 0.0) -> None:
    """``cid`` fetches piece ``num`` from ``dst`` in ``seconds``: one throughput sample of ``dst``."""
    state.start_piece(TASK, cid, num, dst, now=start)
    state.update_piece(TASK, cid, dst, num, SUC, now=start + seconds, size=PIECE_BYTES)


def test_capacity_is_rate_times_concurrent_uploads() -> None:
    state = make_state()
    _measure(state, "c0", 0, SUPER, 2.0)  # alone on the CDN: 2 MiB/s
    assert state.capacity(SUPER) == PIECE_BYTES / 2.0
    give(state, "c1", 0)
    state.start_piece(TASK, "c2", 0, "p1", now=0.0)
    _measure(state, "c3", 0, "p1", 1.0)  # p1 served two at once, this one at 4 MiB/s
    assert state.capacity("p1") == 2 * PIECE_BYTES
    assert state.rates.peer_capacity == 2 * PIECE_BYTES
    assert state.capacity("p2") == 0.0


def test_unmeasured_sources_are_chosen_as_go_does() -> None:
    """Without samples a free holder gets the piece (that is how peers get measured at all)."""
    state = make_state(pieces=1)
    give(state, "c0", 0)
    assert schedule(state, TASK, "c1", now=0.0, rng=random.Random(0)) == [Assignment(0, "p0")]


@pytest.mark.parametrize(("cdn_seconds", "peer_seconds", "chosen"), [
    (0.5, 2.0, SUPER),   # the CDN measured 4x faster than the only holder: the CDN serves
    (2.0, 0.5, "p0"),    # the holder is faster: it serves, the CDN keeps its slot
])
def test_the_faster_source_by_measured_rate_serves(cdn_seconds: float, peer_seconds: float, chosen: str) -> None:
    state = make_state(pieces=3)
    _measure(state, "c0", 0, SUPER, cdn_seconds)
    _measure(state, "c1", 1, SUPER, 1.0)
    give(state, "c0", 1, 2)
    _measure(state, "c2", 2, "p0", peer_seconds)
    # piece 0 is the rarest (p0 alone holds it); p0 is free, and the CDN has every slot
    assert [a.dst_pid for a in schedule(state, TASK, "c3", now=10.0, rng=random.Random(0), limit=1)] == [chosen]
