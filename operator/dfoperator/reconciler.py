"""Submitting, polling and cancelling a Preheat's preheats on the supernodes.

kopf runs a Preheat's handlers (create, spec update, resume, delete) and its polling timer in separate
tasks, so they can overlap. Each of them therefore works under the object's lock (kept in kopf's
per-object ``memo``) on one in-memory :class:`~dfoperator.state.PreheatState`, and writes the whole
status from it: a later write always carries everything an earlier one did. The state is read back
from ``status`` when an operator (re)starts, which is what makes every handler idempotent: a
supernode that already has a preheat ID in the status is polled, never asked again; a repeated
``POST`` (after a crash between the POST and the status write) gets the same deterministic ID back
from the supernode and starts nothing new there.

Retry budget (``retry_attempts``): a failed submission is retried by kopf (``kopf.TemporaryError``
with a doubling delay) and counted by kopf's ``retry`` (kept in our annotations, so it survives a
restart); failed polls are counted per supernode in memory. A supernode that fails every attempt is
UNREACHABLE; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from .config import OperatorConfig
from .kube import KubeClient, KubeLookupError
from .resource import InvalidSpec, PreheatSpec
from .state import EntryState, Phase, PreheatState, Problem, Reason, Summary, SupernodeEntry
from .supernode import PreheatGone, SupernodeClient, SupernodeError

log = logging.getLogger(__name__)

PreheatRefs = Mapping[tuple[str, str], Iterable[str]]
"""kopf's ``preheat_refs`` index: ``(supernode URL, preheat ID)`` -> the ``namespace/name`` using it."""

_MEMORY_KEY = "dfoperator_object"


@dataclass
class ObjectMemory:
    """What the operator keeps about one object between handler runs (kopf's per-object memo)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: PreheatState | None = None
    written: dict[str, Any] | None = None
    poll_failures: dict[str, int] = field(default_factory=dict)
    next_poll: dict[str, float] = field(default_factory=dict)
    superseded: list[SupernodeEntry] = field(default_factory=list)
    """Unfinished preheats of an older generation of the spec, to cancel once the new one is submitted."""
    cancelled: set[tuple[str, str]] = field(default_factory=set)
    """``(supernode URL, preheat ID)`` already cancelled, so a retried delete handler skips them."""
    deleting: bool = False
    """The delete handler has started: nothing may be submitted again (a poll would re-POST on a 404)."""

    def load(self, status: Mapping[str, Any] | None) -> PreheatState:
        if self.state is None:
            self.state = PreheatState.from_status(status)
        return self.state


def object_memory(memo: Any) -> ObjectMemory:
    """The :class:`ObjectMemory` in kopf's per-object ``memo`` (a dict), created on first use."""
    memory = memo.get(_MEMORY_KEY)
    if not isinstance(memory, ObjectMemory):
        memory = ObjectMemory()
        memo[_MEMORY_KEY] = memory
    return memory


@dataclass(frozen=True)
class PreheatObject:
    """One Preheat as a handler sees it: where it is, its body (for Events) and its memory."""

    namespace: str
    name: str
    body: kopf.Body
    memory: ObjectMemory

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}


NORMAL, WARNING = "Normal", "Warning"


def post_event(body: kopf.Body, type_: str, *, reason: str, message: str) -> None:
    """A Kubernetes Event about the object. ``kopf.event`` rather than ``kopf.info``: the operator posts
    kopf's own log lines as Events only from WARNING up (a timer would post one per poll otherwise),
    and ``kopf.info`` obeys that level; our milestones must always be posted."""
    kopf.event(body, type=type_, reason=reason, message=message)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    def __init__(self, config: OperatorConfig, *, supernodes: SupernodeClient, kube: KubeClient,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.supernodes = supernodes
        self.kube = kube
        self.clock = clock

    # ------------------------------------------------------------------ handlers

    async def reconcile(self, obj: PreheatObject, *, spec: Mapping[str, Any], generation: int, retry: int,
                        refs: PreheatRefs) -> None:
        """Submit the preheat of this generation of the spec to every supernode that does not have it."""
        memory = obj.memory
        async with memory.lock:
            state = memory.load(obj.status)
            if state.observed_generation != generation:
                memory.superseded.extend(e for e in state.entries if e.preheat_id and not e.state.final)
                memory.poll_failures.clear()
                memory.next_poll.clear()
                state.begin(generation, self.clock())
                await self._publish(obj, state)
            elif state.finished:
                return  # resumed after a restart, or a repeated event: nothing is left to do
            try:
                parsed = PreheatSpec.parse(spec)
            except InvalidSpec as exc:
                state.failure = Problem(Reason.INVALID_SPEC, str(exc))
                await self._publish(obj, state)
                raise kopf.PermanentError(str(exc)) from None
            try:
                urls = await self._supernode_urls(parsed, obj.namespace)
                request = await self._request(parsed, obj.namespace)
            except KubeLookupError as exc:
                await self._blocked(obj, state, exc, retry=retry)
                return
            state.blocked = None
            state.add_supernodes(urls)
            todo = [e for e in state.entries if not e.preheat_id and not e.state.final]
            await asyncio.gather(*(self._submit(entry, request) for entry in todo))
            await self._cancel_superseded(obj, state, refs)
            failing = [e for e in todo if e.state == EntryState.RETRYING]
            attempt = retry + 1
            if failing and attempt < self.config.retry_attempts:
                await self._publish(obj, state)
                delay = self.config.backoff(attempt)
                raise kopf.TemporaryError(f"{len(failing)} supernode(s) not reached (attempt {attempt} of "
                                          f"{self.config.retry_attempts}); retrying in {delay:g}s", delay=delay)
            for entry in failing:
                entry.state = EntryState.UNREACHABLE
                entry.error_msg = f"{entry.error_msg} (gave up after {attempt} attempts)"
            await self._publish(obj, state)

    async def poll(self, obj: PreheatObject, *, spec: Mapping[str, Any], generation: int) -> None:
        """Ask each supernode that has the preheat how it is going; called by kopf's timer."""
        memory = obj.memory
        async with memory.lock:
            state = memory.load(obj.status)
            if memory.deleting or obj.body.get("metadata", {}).get("deletionTimestamp"):
                return  # being deleted: the delete handler cancels, nothing is polled or re-submitted
            if state.finished or state.observed_generation != generation:
                return  # finished, or a new spec whose submission the reconcile handler owns
            now = asyncio.get_running_loop().time()
            due = [e for e in state.entries
                   if e.preheat_id and not e.state.final and memory.next_poll.get(e.url, 0.0) <= now]
            if not due:
                return
            await asyncio.gather(*(self._poll_one(obj, entry, spec) for entry in due))
            await self._publish(obj, state)

    async def cancel(self, obj: PreheatObject, *, retry: int, refs: PreheatRefs) -> None:
        """The object is being deleted: cancel its unfinished preheats that no other Preheat shares."""
        memory = obj.memory
        memory.deleting = True
        async with memory.lock:
            state = memory.load(obj.status)
            targets = {(e.url, e.preheat_id): e for e in (*memory.superseded, *state.entries)
                       if e.preheat_id and not e.state.final and (e.url, e.preheat_id) not in memory.cancelled}
            failures = await self._cancel_entries(obj, list(targets.values()), refs)
            attempt = retry + 1
            if failures and attempt < self.config.retry_attempts:
                delay = self.config.backoff(attempt)
                raise kopf.TemporaryError(f"could not cancel {len(failures)} preheat(s) (attempt {attempt} of "
                                          f"{self.config.retry_attempts}); retrying in {delay:g}s", delay=delay)
            if failures:
                # Never block the deletion on a supernode that is gone: it forgets its preheats anyway.
                text = "; ".join(f"{e.preheat_id} on {e.url}: {e.error_msg}" for e in failures)
                post_event(obj.body, WARNING, reason=Reason.CANCEL_FAILED.value, message=f"gave up cancelling {text}")

    # ------------------------------------------------------------------ steps

    async def _supernode_urls(self, spec: PreheatSpec, namespace: str) -> list[str]:
        """spec.supernodes, else the configured list, else the ready endpoints of the supernode Service."""
        if spec.supernodes:
            if not self.config.allow_spec_supernodes:
                raise KubeLookupError("spec.supernodes is not allowed by this operator "
                                      "(DFOPERATOR_ALLOW_SPEC_SUPERNODES=false)", reason=Reason.SUPERNODES_NOT_ALLOWED)
            return list(spec.supernodes)
        if self.config.supernodes:
            return list(self.config.supernodes)
        service_ns, service = self.config.service_namespace(), self.config.supernode_service
        urls = await self.kube.supernode_urls(service_ns, service, self.config.supernode_port,
                                              self.config.supernode_scheme)
        if not urls:
            raise KubeLookupError(f"no ready endpoint on port {self.config.supernode_port!r} of Service "
                                  f"{service_ns}/{service}", reason=Reason.NO_SUPERNODES)
        return urls

    async def _request(self, spec: PreheatSpec, namespace: str) -> dict[str, Any]:
        ref = spec.headers_secret_ref
        headers = await self.kube.headers_from_secret(namespace, ref) if ref is not None else {}
        return spec.request(headers)

    async def _blocked(self, obj: PreheatObject, state: PreheatState, exc: KubeLookupError, *, retry: int) -> None:
        """A lookup failed (Secret, Service): wait and retry, then fail the object with the reason."""
        reason = exc.reason
        attempt = retry + 1
        if attempt < self.config.retry_attempts:
            state.blocked = Problem(reason, exc.message)
            await self._publish(obj, state)
            delay = self.config.backoff(attempt)
            raise kopf.TemporaryError(f"{exc.message} (attempt {attempt} of {self.config.retry_attempts}); "
                                      f"retrying in {delay:g}s", delay=delay)
        state.blocked = None
        state.failure = Problem(reason, f"{exc.message} (gave up after {attempt} attempts)")
        await self._publish(obj, state)
        raise kopf.PermanentError(state.failure.message)

    async def _submit(self, entry: SupernodeEntry, request: dict[str, Any]) -> None:
        try:
            accepted = await self.supernodes.create(entry.url, request)
        except SupernodeError as exc:
            if exc.retryable:
                entry.state, entry.error_msg = EntryState.RETRYING, exc.message
            else:
                entry.state, entry.error_msg = EntryState.FAILED, f"refused: {exc.message}"
            return
        entry.accepted(accepted.preheat_id, accepted.state)

    async def _poll_one(self, obj: PreheatObject, entry: SupernodeEntry, spec: Mapping[str, Any]) -> None:
        memory = obj.memory
        try:
            try:
                progress = await self.supernodes.get(entry.url, entry.preheat_id)
            except PreheatGone:
                # The supernode forgot it (restarted, or its GC ran): the same request gets the same ID.
                log.info("%s: %s forgot preheat %s; submitting it again", obj.key, entry.url, entry.preheat_id)
                request = await self._request(PreheatSpec.parse(spec), obj.namespace)
                accepted = await self.supernodes.create(entry.url, request)
                entry.accepted(accepted.preheat_id, accepted.state)
            else:
                entry.observed(progress.state, progress.error_msg)
        except (SupernodeError, KubeLookupError, InvalidSpec) as exc:
            failures = memory.poll_failures.get(entry.url, 0) + 1
            memory.poll_failures[entry.url] = failures
            message = exc.message if isinstance(exc, SupernodeError | KubeLookupError) else str(exc)
            if failures >= self.config.retry_attempts:
                entry.state, entry.error_msg = EntryState.UNREACHABLE, f"{message} (gave up after {failures} attempts)"
            else:
                entry.state, entry.error_msg = EntryState.RETRYING, message
                loop_now = asyncio.get_running_loop().time()
                memory.next_poll[entry.url] = loop_now + self.config.backoff(failures)
            return
        memory.poll_failures.pop(entry.url, None)
        memory.next_poll.pop(entry.url, None)

    async def _cancel_superseded(self, obj: PreheatObject, state: PreheatState, refs: PreheatRefs) -> None:
        """Best effort: cancel what an older spec started and the new one does not reuse."""
        memory = obj.memory
        new_ids = {e.url: e.preheat_id for e in state.entries}
        # Decided per supernode once the new spec's preheat is there (or the supernode is no longer used):
        # the same ID (a change that does not touch the content) is kept, a different one cancelled.
        decided = [e for e in memory.superseded if e.url not in new_ids or new_ids[e.url]]
        memory.superseded = [e for e in memory.superseded if e not in decided]
        stale = [e for e in decided if new_ids.get(e.url) != e.preheat_id]
        failures = await self._cancel_entries(obj, stale, refs)
        for entry in failures:
            log.warning("%s: could not cancel superseded preheat %s on %s: %s", obj.key, entry.preheat_id,
                        entry.url, entry.error_msg)

    async def _cancel_entries(self, obj: PreheatObject, entries: list[SupernodeEntry],
                              refs: PreheatRefs) -> list[SupernodeEntry]:
        """DELETE each preheat, unless another Preheat uses the same one; returns those that failed."""
        failures: list[SupernodeEntry] = []

        async def cancel_one(entry: SupernodeEntry) -> None:
            sharing = sorted(set(refs.get((entry.url, entry.preheat_id), ())) - {obj.key})
            if sharing:
                log.info("%s: preheat %s on %s is kept: %s use it too", obj.key, entry.preheat_id, entry.url,
                         ", ".join(sharing))
                return
            try:
                known = await self.supernodes.delete(entry.url, entry.preheat_id)
            except SupernodeError as exc:
                failures.append(SupernodeEntry(entry.url, entry.preheat_id, entry.state, exc.message))
                return
            obj.memory.cancelled.add((entry.url, entry.preheat_id))
            if not known:  # already gone: a repeated run of this handler, or the supernode forgot it
                return
            post_event(obj.body, NORMAL, reason=Reason.CANCELLED.value,
                       message=f"cancelled preheat {entry.preheat_id} on {entry.url}")

        await asyncio.gather(*(cancel_one(entry) for entry in entries))
        return failures

    # ------------------------------------------------------------------ status and events

    async def _publish(self, obj: PreheatObject, state: PreheatState) -> None:
        """Settle the state, post the Events of what changed since the last write, and write the status."""
        memory = obj.memory
        before = PreheatState.from_status(memory.written if memory.written is not None else obj.status)
        summary = state.settle(self.clock())
        status = state.to_status()
        if status == memory.written:
            return
        self._post_events(obj, before, state, summary)
        if await self.kube.patch_status(obj.namespace, obj.name, status):
            memory.written = status

    def _post_events(self, obj: PreheatObject, before: PreheatState, after: PreheatState, summary: Summary) -> None:
        same_round = before.observed_generation == after.observed_generation
        old = {e.url: e for e in before.entries} if same_round else {}
        for entry in after.entries:
            previous = old.get(entry.url)
            if entry.preheat_id and (previous is None or previous.preheat_id != entry.preheat_id):
                post_event(obj.body, NORMAL, reason=Reason.SUBMITTED.value,
                           message=f"preheat {entry.preheat_id} submitted to {entry.url}")
            trouble = (EntryState.RETRYING, EntryState.UNREACHABLE)
            if entry.state in trouble and (previous is None or previous.state not in trouble):
                post_event(obj.body, WARNING, reason=Reason.SUPERNODE_UNREACHABLE.value,
                           message=f"{entry.url}: {entry.error_msg}")
        if summary.phase != before.phase or not same_round:
            if summary.phase == Phase.SUCCEEDED:
                post_event(obj.body, NORMAL, reason=Reason.SUCCEEDED.value, message=summary.message)
            elif summary.phase == Phase.FAILED:
                post_event(obj.body, WARNING, reason=Reason.FAILED.value,
                           message=f"{summary.reason}: {summary.message}")
