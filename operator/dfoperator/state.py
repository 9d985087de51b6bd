"""A Preheat's status, and the rules that move it: pure, no I/O, no kopf.

``status`` is the operator's whole memory of an object: on a restart it is read back and the work
goes on from there (the preheat IDs in it are why nothing is submitted twice). Its shape is the CRD's
status schema and nothing else, because the API server prunes unknown fields:

- ``phase``: Pending (nothing accepted by a supernode yet), Running, Succeeded, Failed;
- ``conditions``: a ``Ready`` condition (Kubernetes API conventions: ``lastTransitionTime`` changes
  only when ``status`` flips; ``observedGeneration`` is the generation acted on);
- ``supernodes``: one entry per supernode, ``{url, preheatID, state, errorMsg}``;
- ``startTime``, ``finishTime``, ``observedGeneration``.

Each supernode moves on its own (an unreachable one does not hold the others back); the object is
finished when every supernode is, Succeeded only if every one succeeded.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
MESSAGE_LIMIT = 8192


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class EntryState(enum.StrEnum):
    """Where one supernode is. WAITING, RUNNING, SUCCESS and FAILED are the supernode's own words."""

    PENDING = "PENDING"
    """Not accepted by the supernode yet."""
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    """The supernode reported the preheat failed, or refused the request (errorMsg says why)."""
    RETRYING = "RETRYING"
    """The last request to the supernode failed; it is retried with backoff."""
    UNREACHABLE = "UNREACHABLE"
    """The supernode could not be reached within the retry budget."""

    @property
    def final(self) -> bool:
        return self in (EntryState.SUCCESS, EntryState.FAILED, EntryState.UNREACHABLE)


class Reason(enum.StrEnum):
    """``reason`` of the Ready condition and of the Events: CamelCase machine tokens."""

    SUBMITTING = "Submitting"
    PREHEATING = "Preheating"
    SUCCEEDED = "Succeeded"
    PREHEAT_FAILED = "PreheatFailed"
    SUPERNODE_UNREACHABLE = "SupernodeUnreachable"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_INVALID = "SecretInvalid"
    SECRET_UNREADABLE = "SecretUnreadable"
    NO_SUPERNODES = "NoSupernodes"
    DISCOVERY_FAILED = "DiscoveryFailed"
    SUPERNODES_NOT_ALLOWED = "SupernodesNotAllowed"
    # Events only:
    SUBMITTED = "Submitted"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    CANCEL_FAILED = "CancelFailed"


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` is serialised."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Problem:
    """Why the whole object is blocked or failed, before or beside any supernode's own state."""

    reason: Reason | str
    message: str


@dataclass
class SupernodeEntry:
    url: str
    preheat_id: str = ""
    state: EntryState = EntryState.PENDING
    error_msg: str = ""

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> SupernodeEntry:
        try:
            state = EntryState(str(raw.get("state") or EntryState.PENDING))
        except ValueError:
            state = EntryState.PENDING  # written by someone else: ask the supernode again
        return cls(url=str(raw.get("url", "")), preheat_id=str(raw.get("preheatID") or ""), state=state,
                   error_msg=str(raw.get("errorMsg") or ""))

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "state": self.state.value}
        if self.preheat_id:
            out["preheatID"] = self.preheat_id
        if self.error_msg:
            out["errorMsg"] = self.error_msg
        return out

    def accepted(self, preheat_id: str, state: EntryState) -> None:
        self.preheat_id, self.state, self.error_msg = preheat_id, state, ""

    def observed(self, state: EntryState, error_msg: str = "") -> None:
        self.state, self.error_msg = state, error_msg if state == EntryState.FAILED else ""


@dataclass(frozen=True)
class Summary:
    phase: Phase
    ready: bool
    reason: Reason | str
    message: str


def summarize(entries: Iterable[SupernodeEntry], *, failure: Problem | None = None,
              blocked: Problem | None = None) -> Summary:
    """The phase and Ready condition that the supernodes' states (and a spec-level problem) amount to."""
    entries = list(entries)
    if failure is not None:
        return Summary(Phase.FAILED, False, failure.reason, failure.message)
    total = len(entries)
    if entries and all(e.state.final for e in entries):
        if all(e.state == EntryState.SUCCESS for e in entries):
            return Summary(Phase.SUCCEEDED, True, Reason.SUCCEEDED, f"preheated on {_count(total, 'supernode')}")
        unreachable = [e for e in entries if e.state == EntryState.UNREACHABLE]
        failed = [e for e in entries if e.state == EntryState.FAILED]
        reason = Reason.SUPERNODE_UNREACHABLE if unreachable else Reason.PREHEAT_FAILED
        message = "; ".join(f"{e.url}: {e.error_msg or e.state.value}" for e in (*unreachable, *failed))
        succeeded = total - len(unreachable) - len(failed)
        if succeeded:
            message += f" (succeeded on {succeeded} of {total})"
        return Summary(Phase.FAILED, False, reason, message)
    phase = Phase.RUNNING if any(e.preheat_id for e in entries) else Phase.PENDING
    if blocked is not None:
        return Summary(phase, False, blocked.reason, blocked.message)
    retrying = [e for e in entries if e.state == EntryState.RETRYING]
    if retrying:
        return Summary(phase, False, Reason.SUPERNODE_UNREACHABLE,
                       "; ".join(f"{e.url}: {e.error_msg}" for e in retrying) + "; retrying")
    if phase == Phase.PENDING:
        return Summary(phase, False, Reason.SUBMITTING,
                       f"submitting to {_count(total, 'supernode')}" if total else "looking for supernodes")
    done = sum(e.state.final for e in entries)
    return Summary(phase, False, Reason.PREHEATING, f"{done} of {_count(total, 'supernode')} finished")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def set_condition(conditions: list[dict[str, Any]], *, type_: str, status: str, reason: str, message: str,
                  generation: int | None, now: datetime) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set in place; ``lastTransitionTime`` moves only when ``status`` flips."""
    out = [dict(c) for c in conditions]
    current = next((c for c in out if c.get("type") == type_), None)
    if current is None:
        current = {"type": type_}
        out.append(current)
    if current.get("status") != status or not current.get("lastTransitionTime"):
        current["lastTransitionTime"] = timestamp(now)
    if len(message) > MESSAGE_LIMIT:  # the CRD caps it (32768): an over-long status would be refused whole
        message = message[:MESSAGE_LIMIT - 1] + "…"
    current.update(status=status, reason=reason, message=message)
    if generation is not None:
        current["observedGeneration"] = generation
    return out


@dataclass
class PreheatState:
    """The status of one object, as the operator holds it between two writes."""

    phase: Phase = Phase.PENDING
    entries: list[SupernodeEntry] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    start_time: str | None = None
    finish_time: str | None = None
    observed_generation: int | None = None
    failure: Problem | None = None
    """A final problem of the whole object (a bad spec, a Secret that never appeared)."""
    blocked: Problem | None = None
    """A passing problem of the whole object (no supernode found yet); not kept across restarts."""

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> PreheatState:
        status = status or {}
        try:
            phase = Phase(str(status.get("phase") or Phase.PENDING))
        except ValueError:
            phase = Phase.PENDING
        conditions = [dict(c) for c in status.get("conditions") or () if isinstance(c, Mapping)]
        generation = status.get("observedGeneration")
        state = cls(phase=phase, conditions=conditions,
                    entries=[SupernodeEntry.from_status(e) for e in status.get("supernodes") or ()
                             if isinstance(e, Mapping) and e.get("url")],
                    start_time=status.get("startTime"), finish_time=status.get("finishTime"),
                    observed_generation=int(generation) if isinstance(generation, int) else None)
        ready = state.ready_condition()
        if phase == Phase.FAILED and ready is not None:
            state.failure = Problem(str(ready.get("reason") or Reason.FAILED), str(ready.get("message") or ""))
        return state

    def ready_condition(self) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == READY), None)

    @property
    def finished(self) -> bool:
        return self.phase.finished

    def begin(self, generation: int, now: datetime) -> None:
        """Start over for a new generation of the spec: nothing submitted for it yet."""
        self.phase, self.entries = Phase.PENDING, []
        self.start_time, self.finish_time = timestamp(now), None
        self.observed_generation = generation
        self.failure = self.blocked = None

    def add_supernodes(self, urls: Iterable[str]) -> None:
        known = {e.url for e in self.entries}
        for url in urls:
            if url not in known:
                known.add(url)
                self.entries.append(SupernodeEntry(url))

    def entry(self, url: str) -> SupernodeEntry:
        return next(e for e in self.entries if e.url == url)

    def settle(self, now: datetime) -> Summary:
        """Recompute phase, Ready and finishTime from the entries; returns what they amount to."""
        summary = summarize(self.entries, failure=self.failure, blocked=self.blocked)
        self.phase = summary.phase
        if summary.phase.finished and self.finish_time is None:
            self.finish_time = timestamp(now)
        elif not summary.phase.finished:
            self.finish_time = None
        if self.start_time is None:
            self.start_time = timestamp(now)
        self.conditions = set_condition(self.conditions, type_=READY, status="True" if summary.ready else "False",
                                        reason=str(summary.reason), message=summary.message,
                                        generation=self.observed_generation, now=now)
        return summary

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": self.phase.value,
            "conditions": [dict(c) for c in self.conditions],
            "supernodes": [e.to_status() for e in self.entries],
            "startTime": self.start_time,
            "finishTime": self.finish_time,
        }
        if self.observed_generation is not None:
            status["observedGeneration"] = self.observed_generation
        return status
