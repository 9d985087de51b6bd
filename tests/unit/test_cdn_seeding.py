"""The CDN as a seed of finite capacity (``Limits.cdn_upload_rate``): fresh pieces first, each out about once."""

from __future__ import annotations

import random

import pytest

from supernode import rates
from supernode.errors import DfCode, DfError
from supernode.progress import Limits, PieceStatus, ProgressState
from supernode.scheduler import schedule
from tests.bandwidth_swarm import MIB, BandwidthSwarm, relay_bound
from tests.unit.test_scheduler import SUPER, TASK, give, make_state

SUC = PieceStatus.SUCCESS
PIECE = 4 * MIB


def seeded_state(
    *, pieces: int, cdn_upload_rate: float = 20 * MIB, peers: int = 4, measure: bool = False,
) -> ProgressState:
    """Clients c0..c{peers-1}; one piece flow between peers was measured at 10 MiB/s, so the CDN runs
    C / 10 MiB/s at once."""
    limits = Limits(cdn_upload_rate=cdn_upload_rate, cdn_task_limit=64, cdn_measure=measure)
    state = make_state(limits, peers=peers, pieces=pieces)
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
    assert state.rates.down_capacity == 0.0
    got = [dst for cid in ("c0", "c1") for _, dst in pull(state, cid)]
    assert got.count(SUPER) == 2, "still the two CDN flows of an unmeasured swarm"


def test_a_cdn_not_told_measures_c_from_lone_pieces_that_other_cdn_pieces_slowed() -> None:
    state = seeded_state(pieces=8, cdn_upload_rate=0.0, measure=True, peers=5)  # clients take 10 MiB/s from peers
    assert state.rates.cdn.probing and state.rates.cdn.window == rates.PROBE_START
    for i in range(5):
        state.start_piece(TASK, f"c{i}", i, SUPER, now=1.0)
    state.update_piece(TASK, "c0", SUPER, 0, SUC, now=2.0, size=PIECE)  # 4 MiB/s beside 4 more: 5 x 4 MiB/s
    assert state.rates.cdn.rate == pytest.approx(20 * MIB)
    assert state.rates.cdn_load == 4
    # c1's piece ran 1 s beside 4 others and 0.6 s beside 3: 4.625 on average, at 2.5 MiB/s
    state.update_piece(TASK, "c1", SUPER, 1, SUC, now=2.6, size=PIECE)
    assert state.rates.cdn.rate == pytest.approx(rates.average(20 * MIB, 2.5 * MIB * 4.625))


def test_a_cdn_piece_that_shared_its_clients_download_is_judged_by_the_clients_share() -> None:
    state = seeded_state(pieces=8, cdn_upload_rate=0.0, measure=True, peers=5)  # clients take 10 MiB/s from peers
    state.update_piece(TASK, "c1", SUPER, 7, SUC, now=0.0)  # p1 holds piece 7
    for i in (0, 2, 3, 4):
        state.start_piece(TASK, f"c{i}", i, SUPER, now=1.0)
    state.start_piece(TASK, "c0", 7, "p1", now=1.0)
    state.update_piece(TASK, "c0", SUPER, 0, SUC, now=1.0 + 4 / 3, size=PIECE)  # 3 MiB/s beside a piece from p1
    assert state.rates.cdn.rate == 0.0, "6 MiB/s of its client's 10 taken: no sign of a saturated port"
    # 2 MiB/s each, alone, beside 3 other CDN pieces for 4/3 s and 2 for 2/3 s: 11/3 CDN pieces on average
    state.update_piece(TASK, "c2", SUPER, 2, SUC, now=3.0, size=PIECE)
    state.update_piece(TASK, "c3", SUPER, 3, SUC, now=3.0, size=PIECE)
    assert state.rates.cdn.rate == pytest.approx(2 * MIB * 11 / 3)


def test_the_pieces_of_every_task_share_the_port() -> None:
    state = seeded_state(pieces=6)  # C = 20 MiB/s, one flow 10 MiB/s: two at once, over all tasks
    state.cdn_piece_done("other", 1)
    state.start_piece("other", "cm", 1, SUPER, now=1.0)
    assert [dst for _, dst in pull(state, "c0")] == [SUPER]
    with pytest.raises(DfError) as err:
        pull(state, "c1")
    assert err.value.code == DfCode.PEER_WAIT, "the other task's piece holds the second of the port's two flows"


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
    state.rates.peer_capacity = up


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


def tell(state: ProgressState, *, down: float, up: float = 10 * MIB) -> None:
    """Every client's peer registers again, telling its dfget's download and upload limits."""
    for i in range(4):
        state.add_peer(f"p{i}", serves=True, told_down=down, told_up=up)


def test_a_client_that_told_a_faster_download_runs_the_flows_it_fills() -> None:
    """Measured one flow at a time, a client shows what its source gives, never more: told 20 MiB/s beside
    sources that told 10, it runs two pieces at once; told 10, one, as measured."""
    state = seeded_state(pieces=6, cdn_upload_rate=100 * MIB)  # a flow measured at 10 MiB/s at both ends
    assert len(pull(state, "c0")) == 1
    tell(state, down=20 * MIB)
    assert len(pull(state, "c0")) == 1, "the second flow"
    assert len(pull(state, "c1")) == 2
    with pytest.raises(DfError) as err:
        pull(state, "c1")
    assert err.value.code == DfCode.PEER_CONTINUE
    tell(state, down=10 * MIB)
    assert len(pull(state, "c2")) == 1


@pytest.mark.parametrize("told", [False, True])
def test_a_source_told_slower_than_it_measures_serves_the_told_flows(told: bool) -> None:
    """Uploaders' limiters let pieces through in bursts, so sources measure fast (20 MiB/s here): taken at
    that, a source serves two clients at once. Told 10, it serves one client that takes 20 over two flows,
    each at the source's full speed."""
    state = seeded_state(pieces=2, cdn_upload_rate=1 * MIB)  # the CDN runs one flow
    measured(state, down=10 * MIB, up=20 * MIB)
    if told:
        tell(state, down=20 * MIB)
    give(state, "c3", 0, 1)
    [(num, dst)] = pull(state, "c0", limit=1)
    assert dst == "p3"
    state.start_piece(TASK, "c1", 1 - num, SUPER, now=1.0)  # the CDN's one flow is taken
    if not told:
        assert pull(state, "c2", limit=1) == [(num, "p3")]
        return
    with pytest.raises(DfError) as err:
        pull(state, "c2")
    assert err.value.code == DfCode.PEER_WAIT, "p3 serves c0, and told 10 MiB/s that fills it"


def held_by_a_busy_peer(*, down: float) -> ProgressState:
    """c0 runs piece 0 from p3, the only other holder of piece 1; the CDN's two flows are free."""
    state = seeded_state(pieces=2)
    tell(state, down=down)
    give(state, "c3", 0, 1)
    state.start_piece(TASK, "c0", 0, "p3", now=1.0)
    return state


def test_once_it_holds_the_file_the_cdn_feeds_a_client_that_told_it_takes_more() -> None:
    """Where clients download faster than peers upload, the CDN's port is part of what the swarm can send."""
    state = held_by_a_busy_peer(down=20 * MIB)
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_WAIT, "the origin's pieces may still come: the flows stay free"
    state.cdn_complete(TASK)
    assert pull(state, "c0") == [(1, SUPER)]


def test_the_cdn_keeps_its_flows_from_a_client_that_told_no_more_than_a_source_gives() -> None:
    state = held_by_a_busy_peer(down=10 * MIB)
    state.cdn_complete(TASK)
    with pytest.raises(DfError) as err:
        pull(state, "c0")
    assert err.value.code == DfCode.PEER_CONTINUE
    # Go dfget tells nothing: measured at two flows' worth, its second flow waits for a peer
    untold = seeded_state(pieces=2)
    measured(untold, down=20 * MIB, up=10 * MIB)
    give(untold, "c3", 0, 1)
    untold.start_piece(TASK, "c0", 0, "p3", now=1.0)
    untold.cdn_complete(TASK)
    with pytest.raises(DfError) as err:
        pull(untold, "c0")
    assert err.value.code == DfCode.PEER_WAIT


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


def swarm(
    n: int, *, c: float, cdn: str, d: float = 10, size: int = F, seed: int = 0, piece: int = PIECE,
    told: bool = False,
) -> BandwidthSwarm:
    """``cdn``: "told" (the supernode knows C), "measured" (it does not, and measures it) or "go" (it takes
    the port for unlimited, as Go does). ``told``: the peers tell their D and U, as our dfget does."""
    limits = Limits(cdn_task_limit=64, cdn_upload_rate=c * MIB if cdn == "told" else 0.0, cdn_measure=cdn == "measured")
    return BandwidthSwarm(n=n, size=size, piece=piece, s=20 * MIB, c=c * MIB, d=d * MIB, u=10 * MIB, limits=limits,
                          seed=seed, told=told)


@pytest.mark.parametrize(("n", "bound"), [(8, 1.25), (16, 1.3), (32, 1.35)])
def test_a_finite_cdn_seeds_and_peers_carry_the_swarm(n: int, bound: float) -> None:
    """C = 2D: knowing C, the swarm finishes 2.5x+ sooner than treating the CDN as a source like any other."""
    seeded = swarm(n, c=20, cdn="told").run()
    plain = swarm(n, c=20, cdn="go").run()
    assert seeded.ratio <= bound
    assert plain.ratio / seeded.ratio >= 2.5
    assert seeded.cdn_bytes <= 1.5 * F, "the CDN sends each piece about once"
    assert seeded.peer_bytes >= (n - 1.5) * F


@pytest.mark.parametrize(("n", "bound"), [(8, 1.3), (16, 1.35), (32, 1.45)])
def test_a_cdn_not_told_its_capacity_measures_it_and_seeds(n: int, bound: float) -> None:
    """C = 2D, not told: the probe finds C within a few pieces, and the swarm runs about as if told."""
    measured = swarm(n, c=20, cdn="measured")
    outcome = measured.run()
    assert measured.state.rates.cdn.measured == pytest.approx(20 * MIB, rel=0.25)
    assert outcome.ratio <= bound
    assert outcome.cdn_bytes <= 1.5 * F


@pytest.mark.parametrize("n", [8, 16, 32])
def test_the_seeding_swarm_is_near_the_whole_piece_bound(n: int) -> None:
    """Within 0.07 T* of the best any scheduler of whole pieces does here (and, as a check on the model, not below)."""
    bound = relay_bound(n, f=F, piece=4 * MIB, s=20 * MIB, d=10 * MIB, cdn_flows=2)
    ratio = swarm(n, c=20, cdn="told").run().ratio
    assert bound - 1e-9 <= ratio <= bound + 0.07


@pytest.mark.parametrize("cdn", ["told", "measured"])
@pytest.mark.parametrize(("n", "bound"), [(8, 1.2), (16, 1.2), (32, 1.25)])
def test_smaller_pieces_shorten_the_relay(n: int, bound: float, cdn: str) -> None:
    """2 MiB pieces (``piece_size``): each hop waits for half as many bytes, so the swarm is spread sooner.

    The same scheduler with the spec's 4 MiB pieces misses the same bounds.
    """
    small = swarm(n, c=20, cdn=cdn, piece=2 * MIB).run()
    assert small.ratio <= bound < swarm(n, c=20, cdn=cdn).run().ratio
    assert small.cdn_bytes <= 1.1 * F
    assert small.peer_bytes >= (n - 1.1) * F


@pytest.mark.parametrize("n", [8, 16])
def test_an_unlimited_cdn_still_serves_at_full_speed(n: int) -> None:
    assert swarm(n, c=1e6, cdn="go").run().ratio <= 1.1
    # known and huge: until a peer's piece is measured the CDN runs _CDN_START flows, not cdn_task_limit
    assert swarm(n, c=1e6, cdn="told").run().ratio <= 1.2
    # not told: the probe's first rounds run a few CDN flows, and it never sees the port saturate (at N = 16
    # the swarm keeps more than half of its widest window busy, and it opens)
    measured = swarm(n, c=1e6, cdn="measured")
    assert measured.run().ratio <= 1.2
    assert measured.state.rates.cdn.rate == 0
    assert measured.state.rates.cdn.probing == (n < 16)


@pytest.mark.parametrize("cdn", ["told", "measured"])
def test_the_upload_bound_regime(cdn: str) -> None:
    """D = 2U: T* = N*F/(C + N*U), bound by what the swarm can upload."""
    outcome = swarm(8, c=20, cdn=cdn, d=20).run()
    assert outcome.t_star == pytest.approx(8 * 64 / (20 + 80))
    assert outcome.ratio <= 1.75


@pytest.mark.parametrize(("cdn", "bound"), [("told", 1.25), ("measured", 1.32)])
def test_the_upload_bound_regime_with_peers_that_tell_their_limits(cdn: str, bound: float) -> None:
    """Told D = 2U, each client runs two flows, and once the CDN holds the file its port keeps sending: at
    T* it sends C * T* = 1.6 F, its share of what the swarm uploads."""
    told = swarm(8, c=20, cdn=cdn, d=20, piece=2 * MIB, told=True).run()
    measured_only = swarm(8, c=20, cdn=cdn, d=20, piece=2 * MIB).run()
    assert told.ratio <= bound
    assert told.ratio <= measured_only.ratio - 0.05
    assert told.cdn_bytes <= 1.7 * F


@pytest.mark.parametrize("cdn", ["told", "measured"])
@pytest.mark.parametrize("n", [8, 16])
def test_told_limits_change_nothing_where_clients_take_what_a_source_gives(cdn: str, n: int) -> None:
    """D = U: the told rates give one flow, as the measured ones do, and the schedule is the same."""
    told = swarm(n, c=20, cdn=cdn, piece=2 * MIB, told=True).run()
    measured_only = swarm(n, c=20, cdn=cdn, piece=2 * MIB).run()
    assert told.finish == measured_only.finish
    assert told.cdn_bytes == measured_only.cdn_bytes


@pytest.mark.parametrize("cdn", ["told", "measured", "go"])
def test_a_one_piece_file(cdn: str) -> None:
    outcome = swarm(8, c=20, cdn=cdn, size=2 * MIB).run()
    assert len(outcome.finish) == 8
    assert outcome.t_all <= 1.5
