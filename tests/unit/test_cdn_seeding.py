"""The CDN as a seed of finite capacity (``Limits.cdn_upload_rate``): fresh pieces first, each out about once."""

from __future__ import annotations

import random

import pytest

from supernode.errors import DfCode, DfError
from supernode.progress import Limits, PieceStatus, ProgressState
from supernode.scheduler import schedule
from tests.bandwidth_swarm import MIB, BandwidthSwarm, relay_bound
from tests.unit.test_scheduler import SUPER, TASK, make_state

SUC = PieceStatus.SUCCESS
PIECE = 4 * MIB


def seeded_state(*, pieces: int, cdn_upload_rate: float = 20 * MIB, peers: int = 4) -> ProgressState:
    """Clients c0..c{peers-1}; one piece flow between peers was measured at 10 MiB/s, so the CDN runs
    C / 10 MiB/s at once."""
    state = make_state(Limits(cdn_upload_rate=cdn_upload_rate, cdn_task_limit=64), peers=peers, pieces=pieces)
    # one flow of another task, between two peers that take no part here, measures the rate of a flow
    state.add_task("other", SUPER)
    state.cdn_piece_done("other", 0)
    for pid, cid in (("m", "cm"), ("n", "cn")):
        state.add_peer(pid, serves=True)
        state.add_client("other", cid, pid)
    state.update_piece("other", "cm", SUPER, 0, SUC, now=0.0)
    state.start_piece("other", "cn", 0, "m", now=0.0)
    state.update_piece("other", "cn", "m", 0, SUC, now=0.4, size=PIECE)
    return state


def pull(state: ProgressState, cid: str, limit: int | None = None) -> list[tuple[int, str]]:
    return [(a.piece_num, a.dst_pid) for a in schedule(state, TASK, cid, now=1.0, rng=random.Random(0), limit=limit)]


def test_rarest_first_counts_the_pieces_on_their_way() -> None:
    state = seeded_state(pieces=2)
    ((num, dst),) = pull(state, "c0", limit=1)
    assert dst == SUPER
    assert pull(state, "c1", limit=1) == [(1 - num, SUPER)], "the piece nobody has goes out before a second copy"


def test_a_piece_between_semisuc_and_success_is_not_fresh() -> None:
    """Go dfget reports SEMISUC, writes, then SUCCESS: in between, nobody serves the piece but it is not lost."""
    state = seeded_state(pieces=2)
    state.start_piece(TASK, "c1", 0, SUPER, now=1.0)
    state.update_piece(TASK, "c1", SUPER, 0, PieceStatus.SEMISUC, now=1.0)
    assert pull(state, "c0", limit=1) == [(1, SUPER)], "the fresh piece first, not a second copy of piece 0"
    state.update_piece(TASK, "c1", SUPER, 0, SUC, now=1.0)  # now p1 serves piece 0
    assert state.task(TASK).unconfirmed == {}
    assert pull(state, "c2", limit=1) == [(0, "p1")]


def test_a_client_that_leaves_settles_what_it_never_confirmed() -> None:
    state = seeded_state(pieces=1)
    state.start_piece(TASK, "c1", 0, SUPER, now=1.0)
    state.update_piece(TASK, "c1", SUPER, 0, PieceStatus.SEMISUC, now=1.0)
    state.remove_client(TASK, "c1")
    assert state.task(TASK).unconfirmed == {}
    assert pull(state, "c0") == [(0, SUPER)], "nobody will serve piece 0: it is fresh again"


def test_a_piece_on_its_way_is_not_sent_again_by_a_busy_cdn() -> None:
    state = seeded_state(pieces=2, cdn_upload_rate=10 * MIB)  # C = one flow
    state.start_piece(TASK, "c1", 1, SUPER, now=1.0)
    # c0 lacks only piece 1, which is on its way to c1, and the CDN's one flow is taken
    state.update_piece(TASK, "c0", SUPER, 0, SUC, now=1.0)
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_WAIT


def test_a_client_idle_for_a_second_gets_a_copy_rather_than_waiting_longer() -> None:
    state = seeded_state(pieces=1)
    state.update_piece(TASK, "c1", SUPER, 0, SUC, now=1.0)
    state.start_piece(TASK, "c2", 0, "p1", now=1.0)  # the one holder is busy
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_WAIT
    assert [(a.piece_num, a.dst_pid) for a in schedule(state, TASK, "c0", now=2.0, rng=random.Random(0))] == [
        (0, SUPER)]


def test_a_faster_cdn_runs_more_flows_of_the_measured_rate() -> None:
    state = seeded_state(pieces=6, cdn_upload_rate=30 * MIB, peers=5)  # 30 / 10 MiB/s: three at once
    got = [dst for cid in ("c0", "c1", "c2") for _, dst in pull(state, cid, limit=1)]
    assert got == [SUPER] * 3
    with pytest.raises(DfError):
        pull(state, "c3", limit=1)


def test_a_client_with_no_piece_comes_first_for_a_freed_source() -> None:
    state = seeded_state(pieces=2, peers=5)
    for num in (0, 1):
        state.update_piece(TASK, "c0", SUPER, num, SUC, now=1.0)
    state.start_piece(TASK, "c3", 0, SUPER, now=1.0)  # the CDN's two flows are taken
    state.start_piece(TASK, "c4", 1, SUPER, now=1.0)
    state.start_piece(TASK, "c2", 0, "p0", now=1.0)  # and so is the one peer that holds anything
    with pytest.raises(DfError):
        pull(state, "c1")
    # p0 is free again; c2 holds piece 0 but (SEMISUC: not written yet) serves nothing
    state.update_piece(TASK, "c2", "p0", 0, PieceStatus.SEMISUC, now=1.0)
    with pytest.raises(DfError) as err:
        pull(state, "c2")
    assert err.value.code == DfCode.PEER_WAIT, "c2 holds a piece: p0 is kept for c1, which holds none"
    assert [dst for _, dst in pull(state, "c1")] == ["p0"]


def test_a_piece_through_in_a_burst_is_not_a_capacity_sample() -> None:
    """Go dfget's limiter lets a piece through at memory speed after its uploader idled."""
    state = seeded_state(pieces=1)
    state.update_piece(TASK, "c1", SUPER, 0, SUC, now=1.0)
    state.start_piece(TASK, "c2", 0, "p1", now=1.0)
    state.update_piece(TASK, "c2", "p1", 0, SUC, now=1.01, size=PIECE)
    assert state.capacity("p1") == 0.0
    state.start_piece(TASK, "c3", 0, "p1", now=2.0)
    state.update_piece(TASK, "c3", "p1", 0, SUC, now=2.4, size=PIECE)
    assert state.capacity("p1") == pytest.approx(10 * MIB)


def test_cdn_flows_are_not_a_measure_of_what_clients_can_take() -> None:
    """A saturated CDN's flows are slow; taking them for the clients' capacity would make it run more."""
    state = make_state(Limits(cdn_upload_rate=20 * MIB, cdn_task_limit=64), pieces=8)
    for i, num in enumerate(range(4)):
        state.start_piece(TASK, f"c{i}", num, SUPER, now=1.0)
    for i, num in enumerate(range(4)):
        state.update_piece(TASK, f"c{i}", SUPER, num, SUC, now=2.6, size=PIECE)  # 2.5 MiB/s each
    assert state.down_capacity == 0.0
    got = [dst for cid in ("c0", "c1") for _, dst in pull(state, cid)]
    assert got.count(SUPER) == 2, "still the two CDN flows of an unmeasured swarm"


def test_the_cdn_runs_about_c_over_one_flow_at_once() -> None:
    state = seeded_state(pieces=6)  # C = 20 MiB/s, one flow 10 MiB/s: two at once
    assert [dst for _, dst in pull(state, "c0", limit=1) + pull(state, "c1")] == [SUPER, SUPER]
    with pytest.raises(DfError) as err:
        pull(state, "c2")
    assert err.value.code == DfCode.PEER_WAIT


def test_a_held_piece_comes_from_a_free_peer_not_the_cdn() -> None:
    state = seeded_state(pieces=1)
    state.update_piece(TASK, "c2", SUPER, 0, SUC, now=1.0)
    state.start_piece(TASK, "c3", 1, SUPER, now=1.0)  # the CDN's two slots: one used, the other spare
    state.start_piece(TASK, "c1", 1, SUPER, now=1.0)
    assert pull(state, "c0") == [(0, "p2")]


def measured(state: ProgressState, *, down: float, up: float) -> None:
    """c0's peer measured downloading at ``down`` bytes/s in all; a source measured uploading at ``up``."""
    state.add_peer("src", serves=True)
    state.add_client("other", "csrc", "src")
    state.add_client("other", "c0o", "p0")
    state.cdn_piece_done("other", 1)
    state.update_piece("other", "csrc", SUPER, 1, SUC, now=0.0)
    state.start_piece("other", "c0o", 1, "src", now=0.0)
    state.start_piece("other", "c0o", 0, SUPER, now=0.0)
    state.update_piece("other", "c0o", "src", 1, SUC, now=PIECE / up, size=PIECE)
    state.update_piece("other", "c0o", SUPER, 0, SUC, now=2 * PIECE / down, size=PIECE)
    state.peer_capacity = up


def test_a_client_runs_the_flows_that_fill_its_download() -> None:
    """Download 20 MiB/s, a source 10 MiB/s: two pieces at once, each at a source's full speed."""
    state = seeded_state(pieces=6, cdn_upload_rate=100 * MIB)
    measured(state, down=20 * MIB, up=10 * MIB)
    assert len(pull(state, "c0")) == 2
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_CONTINUE


def test_a_source_runs_the_uploads_its_capacity_fills() -> None:
    """A source at 10 MiB/s feeding clients that take 10 MiB/s a flow serves one at a time."""
    state = seeded_state(pieces=1, cdn_upload_rate=1 * MIB)  # the CDN runs one flow
    measured(state, down=10 * MIB, up=10 * MIB)
    state.update_piece(TASK, "c3", SUPER, 0, SUC, now=1.0)
    assert pull(state, "c1") == [(0, "p3")]
    state.start_piece(TASK, "c2", 0, SUPER, now=1.0)  # the CDN's one flow is taken
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_WAIT, "p3 is busy with c1 and the CDN with c2: c0 waits"


def test_pieces_in_flight_are_counted_and_released() -> None:
    state = seeded_state(pieces=2)
    task = state.task(TASK)
    state.start_piece(TASK, "c0", 0, SUPER, now=1.0)
    state.start_piece(TASK, "c1", 0, SUPER, now=1.0)
    state.update_piece(TASK, "c1", SUPER, 0, SUC, now=1.5, size=PIECE)
    state.start_piece(TASK, "c2", 0, "p1", now=1.5)
    assert task.inflight == {0: 2}
    state.remove_peer("p1")  # c2's source is gone: its piece still runs until reported
    state.remove_client(TASK, "c0")
    assert task.inflight == {0: 1}
    state.update_piece(TASK, "c2", "p1", 0, PieceStatus.FAILED, now=2.0)
    assert task.inflight == {}


# -- whole swarms with real bandwidth limits (tests/bandwidth_swarm.py) --

F = 64 * MIB


def swarm(n: int, *, c: float, known: bool, d: float = 10, size: int = F, seed: int = 0) -> BandwidthSwarm:
    limits = Limits(cdn_task_limit=64, cdn_upload_rate=c * MIB if known else 0.0)
    return BandwidthSwarm(n=n, size=size, s=20 * MIB, c=c * MIB, d=d * MIB, u=10 * MIB, limits=limits, seed=seed)


@pytest.mark.parametrize(("n", "bound"), [(8, 1.25), (16, 1.3), (32, 1.35)])
def test_a_finite_cdn_seeds_and_peers_carry_the_swarm(n: int, bound: float) -> None:
    """C = 2D: knowing C, the swarm finishes 2.5x+ sooner than treating the CDN as a source like any other."""
    seeded = swarm(n, c=20, known=True).run()
    plain = swarm(n, c=20, known=False).run()
    assert seeded.ratio <= bound
    assert plain.ratio / seeded.ratio >= 2.5
    assert seeded.cdn_bytes <= 1.5 * F, "the CDN sends each piece about once"
    assert seeded.peer_bytes >= (n - 1.5) * F


@pytest.mark.parametrize("n", [8, 16, 32])
def test_the_seeding_swarm_is_near_the_whole_piece_bound(n: int) -> None:
    """Within 0.07 T* of the best any scheduler of whole pieces does here (and, as a check on the model, not below)."""
    bound = relay_bound(n, f=F, piece=4 * MIB, s=20 * MIB, d=10 * MIB, cdn_flows=2)
    ratio = swarm(n, c=20, known=True).run().ratio
    assert bound - 1e-9 <= ratio <= bound + 0.07


@pytest.mark.parametrize("n", [8, 16])
def test_an_unlimited_cdn_still_serves_at_full_speed(n: int) -> None:
    assert swarm(n, c=1e6, known=False).run().ratio <= 1.1
    # known and huge: until a peer's piece is measured the CDN runs _CDN_START flows, not cdn_task_limit
    assert swarm(n, c=1e6, known=True).run().ratio <= 1.2


def test_the_upload_bound_regime() -> None:
    """D = 2U: T* = N*F/(C + N*U), bound by what the swarm can upload."""
    outcome = swarm(8, c=20, known=True, d=20).run()
    assert outcome.t_star == pytest.approx(8 * 64 / (20 + 80))
    assert outcome.ratio <= 1.75


@pytest.mark.parametrize("known", [True, False])
def test_a_one_piece_file(known: bool) -> None:
    outcome = swarm(8, c=20, known=known, size=2 * MIB).run()
    assert len(outcome.finish) == 8
    assert outcome.t_all <= 1.5
