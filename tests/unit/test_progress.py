"""Progress state transitions (spec §4.3, §7.1) and the invariants the scheduler relies on."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from supernode.errors import DfCode, DfError
from supernode.progress import Limits, PieceStatus, ProgressState

SUPER = "super"
TASK = "t1"
SUC, SEMI, FAIL, WAIT = PieceStatus.SUCCESS, PieceStatus.SEMISUC, PieceStatus.FAILED, PieceStatus.WAITING


def assert_consistent(state: ProgressState) -> None:
    """Recompute every derived structure from first principles and compare."""
    up = state.limits.peer_up_limit
    loads = dict.fromkeys(state.peer_ids(), 0)
    for task_id in state.task_ids():
        task = state.task(task_id)
        super_running = 0
        for cid, client in task.clients.items():
            peer = state.peer(client.pid)
            assert (task_id, cid) in peer.clients
            assert not client.done & client.running.keys()
            for num, run in client.running.items():
                if run.epoch == -1:
                    continue
                if run.dst == task.super_pid:
                    super_running += run.epoch == task.super_epoch
                else:
                    assert (task_id, cid, num) in state.peer(run.dst).uploads
                    loads[run.dst] += 1
        assert task.super_load == super_running
        expected_holders: dict[int, set[str]] = {}
        expected_free: list[set[str]] = [set() for _ in range(up)]
        for pid in state.peer_ids():
            peer = state.peer(pid)
            pieces = peer.held.get(task_id)
            assert (pid in task.holding_peers) == (pieces is not None)
            if not pieces or not peer.source:
                continue
            for num in pieces:
                expected_holders.setdefault(num, set()).add(pid)
            if peer.load < up:
                expected_free[peer.load].add(pid)
        assert {n: set(h.items) for n, h in task.holders.items()} == expected_holders
        for peer_set in [*task.holders.values(), *task.free]:
            assert peer_set.pos == {pid: i for i, pid in enumerate(peer_set.items)}
        assert task.holder_counts == {n: len(h) for n, h in expected_holders.items()}
        assert [set(b.items) for b in task.free] == expected_free
        assert task.free_load == {pid: load for load, pids in enumerate(expected_free) for pid in pids}
        free_counts = {n: sum(pid in task.free_load for pid in h) for n, h in expected_holders.items()}
        assert task.free_counts == {n: c for n, c in free_counts.items() if c}
    for pid, load in loads.items():
        peer = state.peer(pid)
        assert peer.load == load, pid
        limit = state.limits.elimination_limit
        assert peer.source == (peer.serves and peer.down_time is None and peer.service_errors < limit)
        for dst in peer.blacklist:
            assert pid in state.peer(dst).blacklisted_by
        for src in peer.blacklisted_by:
            assert pid in state.peer(src).blacklist


def make_state(limits: Limits = Limits(), peers: int = 3) -> ProgressState:  # noqa: B008
    state = ProgressState(limits)
    state.add_peer(SUPER, serves=True)
    state.add_task(TASK, SUPER)
    for i in range(peers):
        state.add_peer(f"p{i}", serves=True)
        state.add_client(TASK, f"c{i}", f"p{i}")
    for num in range(8):
        state.cdn_piece_done(TASK, num)
    return state


def test_piece_status_values_match_go() -> None:
    assert [int(s) for s in (PieceStatus.SEMISUC, WAIT, PieceStatus.RUNNING, SUC, FAIL)] == [-3, -1, 0, 1, 2]


def test_default_limits_match_go() -> None:
    assert Limits() == Limits(5, 4, 5, 5, 4, 30.0)


def test_success_makes_the_client_a_holder_and_releases_the_source() -> None:
    state = make_state()
    state.start_piece(TASK, "c1", 3, "p0", now=0.0)
    state.start_piece(TASK, "c1", 4, SUPER, now=0.0)
    assert state.client_running(TASK, "c1") == {3: "p0", 4: SUPER}
    assert state.peer("p0").load == 1
    assert state.super_load(TASK, 0.0) == 1
    assert_consistent(state)

    state.update_piece(TASK, "c1", "p0", 3, SUC, now=1.0)
    state.update_piece(TASK, "c1", SUPER, 4, SEMI, now=1.0)
    assert state.client_done(TASK, "c1") == {3, 4}
    assert state.client_done_count(TASK, "c1") == 2
    assert state.client_running(TASK, "c1") == {}
    assert state.holders(TASK, 3) == {"p1"}
    assert state.holders(TASK, 4) == set(), "a SEMISUC pull comes before Go dfget wrote the piece"
    assert state.peer("p0").load == 0
    assert state.super_load(TASK, 1.0) == 0
    assert_consistent(state)
    state.update_piece(TASK, "c1", SUPER, 4, SUC, now=1.1)  # /peer/piece/suc: the piece is on disk
    assert state.holders(TASK, 4) == {"p1"}
    assert state.client_done_count(TASK, "c1") == 2
    assert_consistent(state)


def test_double_success_report_counts_once() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p2", now=0.0)
    state.start_piece(TASK, "c1", 2, "p2", now=0.0)
    state.update_piece(TASK, "c0", "p2", 1, SUC, now=0.0)
    state.update_piece(TASK, "c0", "p2", 1, SEMI, now=0.0)
    state.update_piece(TASK, "c0", "p2", 1, FAIL, now=0.0)
    assert state.peer("p2").load == 1
    assert state.peer("p0").blacklist == {}
    assert state.client_done(TASK, "c0") == {1}
    assert_consistent(state)


def test_only_the_first_report_that_the_client_holds_a_piece_answers_true() -> None:
    """The pull loop counts a piece's served bytes on that answer: once, for dfget's two success reports."""
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    assert state.update_piece(TASK, "c0", "p1", 1, FAIL, now=0.0) is False
    state.start_piece(TASK, "c0", 1, "p2", now=0.0)
    assert state.update_piece(TASK, "c0", "p2", 1, SEMI, now=1.0) is True
    assert state.update_piece(TASK, "c0", "p2", 1, SUC, now=1.0) is False
    assert state.update_piece(TASK, "c1", SUPER, 2, SUC, now=1.0) is True
    assert state.update_piece(TASK, "c1", "p0", 3, WAIT, now=1.0) is False
    assert_consistent(state)


def test_pieces_taken_back_run_no_more_and_nobody_is_blamed() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.start_piece(TASK, "c0", 2, SUPER, now=0.0)
    state.start_piece(TASK, "c0", 3, "p2", now=0.0)
    state.take_back(TASK, "c0", [1, 2, 5], now=10.0)  # 5 does not run: nothing to take back
    assert state.client_running(TASK, "c0") == {3: "p2"}
    assert (state.peer("p1").load, state.super_load(TASK, 10.0), state.rates.cdn_load) == (0, 0, 0)
    assert state.peer("p0").client_errors == 0 and state.peer("p0").blacklist == {}
    assert state.peer("p1").service_errors == 0
    assert state.client_done(TASK, "c0") == set()
    assert_consistent(state)


def test_stray_success_does_not_release_a_load_it_never_took() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p2", now=0.0)
    state.update_piece(TASK, "c1", "p2", 5, SUC, now=0.0)
    assert state.peer("p2").load == 1
    assert state.holders(TASK, 5) == {"p1"}
    assert_consistent(state)


def test_failure_between_peers_blacklists_and_counts_errors() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.update_piece(TASK, "c0", "p1", 1, FAIL, now=0.0)
    state.update_piece(TASK, "c0", "p1", 2, FAIL, now=0.0)
    p0, p1 = state.peer("p0"), state.peer("p1")
    assert p0.blacklist == {"p1": 2}
    assert p0.client_errors == 2
    assert p1.service_errors == 2
    assert p1.load == 0
    assert state.client_running(TASK, "c0") == {}
    assert state.client_done(TASK, "c0") == set()
    assert_consistent(state)

    state.update_piece(TASK, "c0", "p1", 3, SUC, now=0.0)
    assert (p0.client_errors, p1.service_errors) == (0, 0)
    assert p0.blacklist == {"p1": 2}, "a success does not lift the blacklist"


def test_failures_involving_the_supernode_are_not_counted() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, SUPER, now=0.0)
    state.update_piece(TASK, "c0", SUPER, 1, FAIL, now=0.0)
    state.update_piece(TASK, "c0", "", 2, FAIL, now=0.0)
    assert state.peer("p0").client_errors == 0
    assert state.peer("p0").blacklist == {}
    assert state.peer(SUPER).service_errors == 0
    assert state.super_load(TASK, 0.0) == 0


def test_failure_from_a_removed_peer_counts_for_the_client_only() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.remove_peer("p1")
    assert state.client_running(TASK, "c0") == {1: "p1"}, "the download slot stays taken until reported"
    assert_consistent(state)
    state.update_piece(TASK, "c0", "p1", 1, FAIL, now=0.0)
    assert state.peer("p0").client_errors == 1
    assert state.peer("p0").blacklist == {}
    assert state.client_running(TASK, "c0") == {}
    assert_consistent(state)


def test_waiting_report_returns_the_piece_without_blame() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.update_piece(TASK, "c0", "p1", 1, WAIT, now=0.0)
    assert state.client_running(TASK, "c0") == {}
    assert state.peer("p1").load == 0
    assert state.peer("p0").client_errors == 0
    assert state.peer("p0").blacklist == {}


def test_running_is_not_a_report() -> None:
    state = make_state()
    with pytest.raises(DfError) as err:
        state.update_piece(TASK, "c0", "p1", 1, PieceStatus.RUNNING, now=0.0)
    assert err.value.code is DfCode.INVALID_VALUE


def test_start_piece_refuses_held_or_running_pieces() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.update_piece(TASK, "c0", SUPER, 2, SUC, now=0.0)
    for num in (1, 2):
        with pytest.raises(DfError) as err:
            state.start_piece(TASK, "c0", num, "p2", now=0.0)
        assert err.value.code is DfCode.INVALID_VALUE


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.update_piece("nope", "c0", "p1", 1, SUC, now=0.0),
        lambda s: s.update_piece(TASK, "nope", "p1", 1, SUC, now=0.0),
        lambda s: s.add_client(TASK, "c9", "nope"),
        lambda s: s.add_client("nope", "c9", "p0"),
        lambda s: s.client_done(TASK, "nope"),
        lambda s: s.client_running(TASK, "nope"),
        lambda s: s.take_back(TASK, "nope", [1], 0.0),
        lambda s: s.cdn_piece_done("nope", 1),
        lambda s: s.cdn_pieces("nope"),
        lambda s: s.holders("nope", 1),
        lambda s: s.mark_service_down("nope", 0.0),
        lambda s: s.peer_service_down_time("nope"),
        lambda s: s.start_piece(TASK, "c0", 1, "nope", now=0.0),
    ],
)
def test_unknown_ids_are_data_not_found(call: Callable[[ProgressState], object]) -> None:
    with pytest.raises(DfError) as err:
        call(make_state())
    assert err.value.code is DfCode.DATA_NOT_FOUND


def test_removals_of_unknown_ids_are_ignored() -> None:
    state = make_state()
    state.remove_peer("nope")
    state.remove_task("nope")
    state.remove_client(TASK, "nope")
    state.remove_client("nope", "c0")
    assert_consistent(state)


def test_the_supernode_and_non_serving_peers_never_hold() -> None:
    state = make_state()
    state.add_peer("cdn-pattern", serves=False)
    state.add_client(TASK, "cx", "cdn-pattern")
    state.add_client(TASK, "cs", SUPER)
    state.update_piece(TASK, "cx", SUPER, 1, SUC, now=0.0)
    state.update_piece(TASK, "cs", SUPER, 1, SUC, now=0.0)
    assert state.holders(TASK, 1) == set()
    assert state.client_done(TASK, "cx") == {1}
    assert_consistent(state)

    state.add_peer("cdn-pattern", serves=True)
    assert state.holders(TASK, 1) == {"cdn-pattern"}
    assert_consistent(state)


def test_service_down_prunes_holders_and_keeps_them_pruned() -> None:
    state = make_state()
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=0.0)
    assert state.peer_service_down_time("p0") is None
    state.mark_service_down("p0", now=7.0)
    state.mark_service_down("p0", now=9.0)
    assert state.peer_service_down_time("p0") == 7.0
    assert state.holders(TASK, 1) == set()
    state.update_piece(TASK, "c0", SUPER, 2, SUC, now=8.0)
    assert state.holders(TASK, 2) == set()
    assert state.client_done(TASK, "c0") == {1, 2}, "a down peer may still download"
    assert_consistent(state)


def test_elimination_and_rehabilitation() -> None:
    state = make_state(Limits(elimination_limit=2))
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=0.0)
    state.start_piece(TASK, "c2", 1, "p0", now=0.0)
    state.update_piece(TASK, "c1", "p0", 1, FAIL, now=0.0)
    assert state.holders(TASK, 1) == {"p0"}
    state.update_piece(TASK, "c1", "p0", 2, FAIL, now=0.0)
    assert state.holders(TASK, 1) == set(), "eliminated at elimination_limit"
    assert_consistent(state)

    state.update_piece(TASK, "c2", "p0", 1, SUC, now=0.0)
    assert state.peer("p0").service_errors == 0
    assert state.holders(TASK, 1) == {"p0", "p2"}
    assert_consistent(state)


def test_load_buckets_follow_the_load() -> None:
    state = make_state(Limits(peer_up_limit=2), peers=5)
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=0.0)
    free = state.task(TASK).free
    assert [set(b.items) for b in free] == [{"p0"}, set()]
    state.start_piece(TASK, "c1", 1, "p0", now=0.0)
    assert [set(b.items) for b in free] == [set(), {"p0"}]
    state.start_piece(TASK, "c2", 1, "p0", now=0.0)
    assert [set(b.items) for b in free] == [set(), set()], "full peers are in no bucket"
    state.update_piece(TASK, "c0", SUPER, 2, SUC, now=0.0)
    assert state.holders(TASK, 2) == {"p0"}
    state.update_piece(TASK, "c1", "p0", 1, SUC, now=0.0)
    assert [set(b.items) for b in free] == [{"p1"}, {"p0"}]
    assert_consistent(state)


def test_remove_client_releases_its_loads() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.start_piece(TASK, "c0", 2, SUPER, now=0.0)
    state.update_piece(TASK, "c0", SUPER, 3, SUC, now=0.0)
    state.remove_client(TASK, "c0")
    assert state.peer("p1").load == 0
    assert state.super_load(TASK, 0.0) == 0
    assert state.holders(TASK, 3) == {"p0"}, "the peer still serves what it holds"
    assert_consistent(state)


def test_add_client_again_starts_over() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, "p1", now=0.0)
    state.update_piece(TASK, "c0", SUPER, 2, SUC, now=0.0)
    state.add_client(TASK, "c0", "p0")
    assert state.client_done(TASK, "c0") == set()
    assert state.client_running(TASK, "c0") == {}
    assert state.peer("p1").load == 0
    assert_consistent(state)


def test_remove_peer_drops_clients_holders_and_blacklists() -> None:
    state = make_state()
    state.add_task("t2", SUPER)
    state.add_client("t2", "c0b", "p0")
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=0.0)
    state.start_piece(TASK, "c0", 2, "p1", now=0.0)
    state.start_piece("t2", "c0b", 2, "p2", now=0.0)
    state.update_piece(TASK, "c0", "p2", 3, FAIL, now=0.0)
    state.update_piece(TASK, "c1", "p0", 3, FAIL, now=0.0)
    state.remove_peer("p0")
    assert not state.has_peer("p0")
    assert state.holders(TASK, 1) == set()
    assert (state.peer("p1").load, state.peer("p2").load) == (0, 0)
    assert state.peer("p1").blacklist == {}
    assert state.peer("p2").blacklisted_by == set()
    with pytest.raises(DfError):
        state.client(TASK, "c0")
    with pytest.raises(DfError):
        state.client("t2", "c0b")
    assert_consistent(state)


def test_remove_task_releases_loads_on_peers_of_other_tasks() -> None:
    state = make_state()
    state.add_task("t2", SUPER)
    state.add_client("t2", "x", "p0")
    state.update_piece(TASK, "c1", SUPER, 1, SUC, now=0.0)
    state.update_piece("t2", "x", SUPER, 1, SUC, now=0.0)
    state.start_piece("t2", "x", 2, "p1", now=0.0)
    state.remove_task("t2")
    assert state.task_ids() == [TASK]
    assert state.peer("p1").load == 0
    assert list(state.peer("p0").held) == []
    assert list(state.peer("p0").clients) == [(TASK, "c0")]
    assert state.holders(TASK, 1) == {"p1"}
    assert_consistent(state)


def test_cdn_pieces_and_failures() -> None:
    state = make_state()
    assert state.cdn_pieces(TASK) == set(range(8))
    state.cdn_piece_failed(TASK, 9)
    assert state.task(TASK).cdn_failed == {9}
    state.cdn_piece_done(TASK, 9)
    assert state.task(TASK).cdn_failed == set()
    assert 9 in state.cdn_pieces(TASK)


def test_super_load_resets_when_unchanged_for_the_reset_time() -> None:
    state = make_state(Limits(super_load_reset=30.0))
    state.start_piece(TASK, "c0", 1, SUPER, now=0.0)
    state.start_piece(TASK, "c1", 1, SUPER, now=10.0)
    assert state.super_load(TASK, 39.9) == 2
    assert state.super_load(TASK, 40.0) == 0
    state.start_piece(TASK, "c2", 1, SUPER, now=41.0)
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=42.0)
    assert state.super_load(TASK, 42.0) == 1, "a piece started before the reset is not released twice"
    state.update_piece(TASK, "c2", SUPER, 1, SUC, now=43.0)
    assert state.super_load(TASK, 43.0) == 0
    assert_consistent(state)


def test_a_late_report_applies_a_due_reset_first() -> None:
    state = make_state()
    state.start_piece(TASK, "c0", 1, SUPER, now=0.0)
    state.start_piece(TASK, "c1", 1, SUPER, now=0.0)
    state.update_piece(TASK, "c0", SUPER, 1, SUC, now=31.0)
    assert state.super_load(TASK, 31.0) == 0
    state.remove_client(TASK, "c1")
    assert state.super_load(TASK, 31.0) == 0
    assert_consistent(state)


def test_random_operations_keep_every_invariant() -> None:
    """Any sequence of calls, including removals in the middle of downloads, keeps the books exact."""
    rng = random.Random(7)
    state = ProgressState(Limits(peer_up_limit=2, elimination_limit=2, super_load_reset=5.0))
    state.add_peer(SUPER, serves=True)
    pids = [f"p{i}" for i in range(10)]
    tasks = ["t1", "t2"]
    now = 0.0
    for _ in range(3000):
        now += rng.random()
        op = rng.randrange(10)
        pid = rng.choice(pids)
        task_id = rng.choice(tasks)
        known = state.task_ids()
        clients = [(t, cid) for t in known for cid in state.task(t).clients]
        if op == 0:
            state.add_peer(pid, serves=rng.random() < 0.8)
        elif op == 1 and rng.random() < 0.3:
            state.remove_peer(pid)
        elif op == 2 and state.has_peer(pid):
            state.mark_service_down(pid, now)
        elif op == 3:
            state.add_task(task_id, SUPER)
            state.cdn_piece_done(task_id, rng.randrange(6))
        elif op == 4 and rng.random() < 0.1:
            state.remove_task(task_id)
        elif op == 5 and task_id in known and state.has_peer(pid):
            state.add_client(task_id, f"c{rng.randrange(12)}", pid)
        elif op == 6 and clients and rng.random() < 0.3:
            state.remove_client(*rng.choice(clients))
        elif op in (7, 8) and clients:
            t, cid = rng.choice(clients)
            client = state.client(t, cid)
            free = [n for n in range(6) if n not in client.done and n not in client.running]
            sources = [SUPER, *(p for p in pids if state.has_peer(p))]
            if free:
                state.start_piece(t, cid, rng.choice(free), rng.choice(sources), now)
        elif op == 9 and clients:
            t, cid = rng.choice(clients)
            running = state.client_running(t, cid)
            num, dst = rng.choice(list(running.items())) if running else (rng.randrange(6), pid)
            status = rng.choice([SUC, SEMI, FAIL, FAIL, WAIT])
            state.update_piece(t, cid, dst, num, status, now)
        assert_consistent(state)
