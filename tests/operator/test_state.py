"""The status rules (``dfoperator.state``): phases, the Ready condition, reading a status back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dfoperator.state import (
    EntryState,
    Phase,
    PreheatState,
    Problem,
    Reason,
    SupernodeEntry,
    set_condition,
    summarize,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
A, B = "http://10.0.0.1:8002", "http://10.0.0.2:8002"


def entry(url: str, state: EntryState, pid: str = "", msg: str = "") -> SupernodeEntry:
    return SupernodeEntry(url, pid, state, msg)


@pytest.mark.parametrize(("entries", "phase", "ready", "reason"), [
    ([], Phase.PENDING, False, Reason.SUBMITTING),
    ([entry(A, EntryState.PENDING)], Phase.PENDING, False, Reason.SUBMITTING),
    ([entry(A, EntryState.RETRYING, msg="unreachable")], Phase.PENDING, False, Reason.SUPERNODE_UNREACHABLE),
    ([entry(A, EntryState.WAITING, "p")], Phase.RUNNING, False, Reason.PREHEATING),
    ([entry(A, EntryState.SUCCESS, "p"), entry(B, EntryState.RETRYING, msg="x")], Phase.RUNNING, False,
     Reason.SUPERNODE_UNREACHABLE),
    ([entry(A, EntryState.SUCCESS, "p"), entry(B, EntryState.RUNNING, "p")], Phase.RUNNING, False,
     Reason.PREHEATING),
    ([entry(A, EntryState.SUCCESS, "p"), entry(B, EntryState.SUCCESS, "p")], Phase.SUCCEEDED, True,
     Reason.SUCCEEDED),
    ([entry(A, EntryState.SUCCESS, "p"), entry(B, EntryState.FAILED, "p", "404")], Phase.FAILED, False,
     Reason.PREHEAT_FAILED),
    ([entry(A, EntryState.FAILED, "p", "404"), entry(B, EntryState.UNREACHABLE, msg="down")], Phase.FAILED, False,
     Reason.SUPERNODE_UNREACHABLE),
])
def test_summary_of_the_supernodes(entries: list[SupernodeEntry], phase: Phase, ready: bool, reason: Reason) -> None:
    summary = summarize(entries)
    assert (summary.phase, summary.ready, summary.reason) == (phase, ready, reason)


def test_a_failure_message_names_each_failed_supernode_and_what_succeeded() -> None:
    summary = summarize([entry(A, EntryState.SUCCESS, "p"), entry(B, EntryState.FAILED, "p", "HTTP 404")])
    assert summary.message == f"{B}: HTTP 404 (succeeded on 1 of 2)"


def test_a_whole_object_problem_outranks_the_supernodes() -> None:
    entries = [entry(A, EntryState.SUCCESS, "p")]
    assert summarize(entries, failure=Problem(Reason.INVALID_SPEC, "bad")).phase == Phase.FAILED
    blocked = summarize([], blocked=Problem(Reason.NO_SUPERNODES, "none ready"))
    assert (blocked.phase, blocked.reason, blocked.message) == (Phase.PENDING, Reason.NO_SUPERNODES, "none ready")


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    later = T0 + timedelta(minutes=5)
    first = set_condition([], type_="Ready", status="False", reason="Submitting", message="a", generation=1, now=T0)
    same = set_condition(first, type_="Ready", status="False", reason="Preheating", message="b", generation=1,
                         now=later)
    flipped = set_condition(same, type_="Ready", status="True", reason="Succeeded", message="c", generation=2,
                            now=later)
    assert first[0]["lastTransitionTime"] == same[0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert same[0]["reason"] == "Preheating" and same[0]["message"] == "b"
    assert flipped == [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "c",
                        "observedGeneration": 2, "lastTransitionTime": "2026-01-02T03:09:05Z"}]


def test_other_condition_types_are_kept() -> None:
    other = {"type": "Degraded", "status": "False", "reason": "X", "message": "", "lastTransitionTime": "t"}
    out = set_condition([other], type_="Ready", status="True", reason="R", message="", generation=None, now=T0)
    assert out[0] == other and out[1]["type"] == "Ready" and "observedGeneration" not in out[1]


def test_settle_sets_finish_time_once_and_round_trips_through_the_status() -> None:
    state = PreheatState()
    state.begin(3, T0)
    state.add_supernodes([A, B, A])
    state.entry(A).accepted("pa", EntryState.SUCCESS)
    state.entry(B).accepted("pb", EntryState.RUNNING)
    assert state.settle(T0).phase == Phase.RUNNING and state.finish_time is None
    state.entry(B).observed(EntryState.SUCCESS)
    state.settle(T0 + timedelta(seconds=7))
    state.settle(T0 + timedelta(seconds=9))
    status = state.to_status()
    assert status["finishTime"] == "2026-01-02T03:04:12Z" and status["startTime"] == "2026-01-02T03:04:05Z"
    assert status["supernodes"] == [{"url": A, "state": "SUCCESS", "preheatID": "pa"},
                                    {"url": B, "state": "SUCCESS", "preheatID": "pb"}]
    again = PreheatState.from_status(status)
    assert again.to_status() == status and again.finished and again.observed_generation == 3


def test_a_failed_status_read_back_keeps_its_reason() -> None:
    state = PreheatState()
    state.begin(1, T0)
    state.failure = Problem(Reason.INVALID_SPEC, "spec.type: bad")
    state.settle(T0)
    again = PreheatState.from_status(state.to_status())
    assert again.failure == Problem("InvalidSpec", "spec.type: bad")
    assert summarize(again.entries, failure=again.failure).reason == "InvalidSpec"


def test_a_status_written_by_someone_else_is_read_defensively() -> None:
    state = PreheatState.from_status({"phase": "Exploded", "supernodes": [{"url": A, "state": "??"}, {"x": 1}],
                                      "observedGeneration": "7"})
    assert state.phase == Phase.PENDING and state.observed_generation is None
    assert [(e.url, e.state) for e in state.entries] == [(A, EntryState.PENDING)]


def test_observed_keeps_the_error_message_of_a_failure_only() -> None:
    item = entry(A, EntryState.RETRYING, "p", "unreachable")
    item.observed(EntryState.RUNNING, "ignored")
    assert (item.state, item.error_msg) == (EntryState.RUNNING, "")
    item.observed(EntryState.FAILED, "source answered HTTP 404")
    assert item.error_msg == "source answered HTTP 404"


def test_a_long_message_is_cut_to_fit_the_crd() -> None:
    entries = [entry(f"http://10.0.{i // 250}.{i % 250}:8002", EntryState.FAILED, "p", "x" * 500) for i in range(64)]
    conditions = set_condition([], type_="Ready", status="False", reason="PreheatFailed",
                               message=summarize(entries).message, generation=1, now=T0)
    assert len(conditions[0]["message"]) == 8192 and conditions[0]["message"].endswith("…")
