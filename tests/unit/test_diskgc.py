"""The disk GC policy (spec §7.3), with consistent seconds instead of Go's 10^6 quirk."""

from __future__ import annotations

import pytest

from supernode.diskgc import (
    DEFAULT_FULL_GC_THRESHOLD,
    DEFAULT_YOUNG_GC_THRESHOLD,
    CacheEntry,
    clean_count,
    disk_gc_mode,
    select_disk_gc,
)

GIB = 1024**3
YOUNG = DEFAULT_YOUNG_GC_THRESHOLD
FULL = DEFAULT_FULL_GC_THRESHOLD
NOW = 1_700_000_000.0
HOUR = 3600.0


def entry(task_id: str, size: int = 1000, age: float = 60.0, interval: float = 0.0) -> CacheEntry:
    """A cache entry last accessed ``age`` seconds before NOW."""
    return CacheEntry(task_id=task_id, size=size, access_time=NOW - age, interval=interval)


def select(free: int, entries: list[CacheEntry], live: set[str] | None = None, clean_ratio: int = 10,
           **kw: float) -> list[str]:
    return select_disk_gc(free_bytes=free, entries=entries, live_task_ids=live or set(), now=NOW,
                          clean_ratio=clean_ratio, **kw)  # type: ignore[arg-type]


def test_defaults_match_spec() -> None:
    assert YOUNG == 100 * GIB
    assert FULL == 5 * GIB


# --- mode -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("free", "mode"), [
    (YOUNG + 1, "none"), (YOUNG, "young"), (FULL + 1, "young"), (FULL, "full"), (0, "full"),
])
def test_mode_boundaries(free: int, mode: str) -> None:
    assert disk_gc_mode(free, YOUNG, FULL) == mode


def test_nothing_above_young_threshold() -> None:
    assert select(YOUNG + 1, [entry("a", age=10 * 86400)]) == []
    assert select(10**15, [entry("a"), entry("b")]) == []


def test_young_threshold_itself_triggers_young_gc() -> None:
    assert select(YOUNG, [entry("a")]) == ["a"]


# --- full GC --------------------------------------------------------------------------------------

def test_full_gc_returns_every_non_live_task_in_id_order() -> None:
    entries = [entry("c", age=1), entry("a", age=99999, interval=10), entry("b", size=10**9), entry("d")]
    assert select(FULL, entries, live={"d"}, clean_ratio=1) == ["a", "b", "c"]


def test_full_gc_ignores_the_clean_ratio() -> None:
    entries = [entry(f"t{i:02d}") for i in range(25)]
    assert len(select(FULL - 1, entries, clean_ratio=1)) == 25
    assert len(select(0, entries, clean_ratio=0)) == 25


# --- young GC grouping and order ------------------------------------------------------------------

def test_young_gc_group1_by_gap_ascending_then_group2_by_size_ascending() -> None:
    entries = [
        entry("g2-big", size=5000, age=HOUR, interval=HOUR),
        entry("g1-old", age=10 * HOUR),                      # interval 0 -> group 1
        entry("g2-small", size=10, age=2 * HOUR, interval=HOUR),
        entry("g1-new", age=60),                             # interval 0 -> group 1
        entry("g1-overdue", age=5 * HOUR, interval=HOUR),    # gap > interval + 2 h -> group 1
    ]
    assert select(FULL + 1, entries) == ["g1-new", "g1-overdue", "g1-old", "g2-small", "g2-big"]


def test_group2_boundary_is_interval_plus_threshold_in_seconds() -> None:
    # gap == interval + threshold stays in group 2 (<=); one second later it is group 1.
    on_edge = entry("edge", size=1, age=HOUR + 2 * HOUR, interval=HOUR)
    past_edge = entry("past", size=1, age=HOUR + 2 * HOUR + 1, interval=HOUR)
    once = entry("once", size=1, age=10 * 86400)
    # group 1 (by gap): once (10 d) vs past (3 h + 1 s): past first; edge is group 2, last.
    assert select(FULL + 1, [on_edge, past_edge, once]) == ["past", "once", "edge"]


def test_no_go_millisecond_quirk() -> None:
    # In Go the 2 h threshold became ~83 days, so this 10-day-overdue task would be group 2 (by size,
    # last). With seconds it is overdue and is group 1, ordered before the periodic one.
    overdue = entry("overdue", size=10**9, age=10 * 86400, interval=HOUR)
    periodic = entry("periodic", size=1, age=60, interval=HOUR)
    assert select(FULL + 1, [periodic, overdue]) == ["overdue", "periodic"]


def test_interval_threshold_parameter() -> None:
    e = entry("x", size=1, age=3 * HOUR, interval=HOUR)
    other = entry("y", size=1, age=4 * HOUR)  # group 1 always
    assert select(FULL + 1, [e, other], interval_threshold=2 * HOUR) == ["y", "x"]
    assert select(FULL + 1, [e, other], interval_threshold=HOUR) == ["x", "y"]  # both group 1, by gap


def test_ties_keep_input_order() -> None:
    entries = [entry("b", age=60), entry("a", age=60), entry("d", size=7, interval=HOUR),
               entry("c", size=7, interval=HOUR)]
    assert select(FULL + 1, entries) == ["b", "a", "d", "c"]


def test_future_access_time_is_a_negative_gap() -> None:
    assert select(FULL + 1, [entry("past", age=10), entry("future", age=-10)]) == ["future", "past"]


# --- live tasks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("free", [0, FULL, FULL + 1, YOUNG])
def test_live_tasks_are_never_returned(free: int) -> None:
    entries = [entry(f"t{i}", age=i * HOUR, interval=(HOUR if i % 2 else 0)) for i in range(20)]
    live = {f"t{i}" for i in range(0, 20, 3)}
    result = select(free, entries, live=live)
    assert result
    assert not set(result) & live
    assert set(result) == {e.task_id for e in entries} - live


def test_all_live_gives_nothing() -> None:
    entries = [entry("a"), entry("b")]
    assert select(0, entries, live={"a", "b"}) == []
    assert select(FULL + 1, entries, live={"a", "b"}) == []


def test_live_tasks_do_not_count_towards_n() -> None:
    entries = [entry(f"t{i}", age=i) for i in range(11)]
    live = {"t0"}  # 10 candidates left -> ceil(10 * 1 / 10) = 1
    assert select(FULL + 1, entries, live=live, clean_ratio=1) == ["t1"]


def test_live_ids_accept_any_container() -> None:
    entries = [entry("a"), entry("b")]
    assert select_disk_gc(free_bytes=0, entries=entries, live_task_ids={"a": object()}, now=NOW) == ["b"]
    everything = select_disk_gc(free_bytes=0, entries=iter(entries), live_task_ids=frozenset(), now=NOW)
    assert everything == ["a", "b"]


# --- the ceil rule --------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "ratio", "expected"), [
    (0, 1, 0), (1, 1, 1), (9, 1, 1), (10, 1, 1), (11, 1, 2), (20, 1, 2), (21, 1, 3),
    (3, 3, 1), (4, 3, 2), (7, 5, 4), (10, 10, 10), (5, 0, 0),
])
def test_clean_count_is_ceil(n: int, ratio: int, expected: int) -> None:
    assert clean_count(n, ratio) == expected


def test_young_gc_takes_ceil_share_of_ordered_candidates() -> None:
    entries = [entry(f"t{i:02d}", age=100 - i) for i in range(21)]  # t20 has the smallest gap
    result = select(FULL + 1, entries, clean_ratio=1)  # ceil(21 / 10) = 3
    assert result == ["t20", "t19", "t18"]
    assert select(FULL + 1, entries, clean_ratio=10) == [f"t{i:02d}" for i in range(20, -1, -1)]


def test_single_candidate_is_deleted_with_default_ratio() -> None:
    only = select_disk_gc(free_bytes=FULL + 1, entries=[entry("only")], live_task_ids=set(), now=NOW)
    assert only == ["only"]


def test_share_cuts_across_groups() -> None:
    entries = [entry("g2", size=1, interval=HOUR), entry("g1", age=5)]
    assert select(FULL + 1, entries, clean_ratio=5) == ["g1"]


@pytest.mark.parametrize("ratio", [-1, 11])
def test_clean_ratio_out_of_range(ratio: int) -> None:
    with pytest.raises(ValueError):
        select(FULL + 1, [entry("a")], clean_ratio=ratio)


# --- edge cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("free", [0, FULL, FULL + 1, YOUNG, YOUNG + 1])
def test_no_entries(free: int) -> None:
    assert select(free, []) == []


def test_duplicate_task_ids_count_once_with_first_entry() -> None:
    entries = [entry("a", age=10), entry("b", age=20), entry("a", age=99999)]
    assert select(FULL + 1, entries) == ["a", "b"]
    assert select(0, entries) == ["a", "b"]


def test_cache_entry_is_frozen() -> None:
    e = entry("a")
    with pytest.raises(AttributeError):
        e.size = 1  # type: ignore[misc]
    assert {e, entry("a")} == {e}
