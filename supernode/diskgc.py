"""The policy of the CDN disk GC (spec §7.3): which cached tasks to delete, and in which order.

This module is pure: no I/O, no clock, no logging. The caller measures the free space of
``{homeDir}/repo/download``, walks the cache to build :class:`CacheEntry` values (from each task's
``.meta`` and data file), asks :func:`select_disk_gc` what to delete, re-checks that each task is
still not live just before deleting it (a task may be registered in between), deletes the files and
counts ``gc_disks_total``.

The policy, as in the Go supernode (``cdn/cdn_gc.go`` GetGCTaskIDs, ``gc/gc_disk.go`` deleteTaskDisk):

* free space above ``young_gc_threshold`` (default 100 GiB): delete nothing;
* free space at or below ``full_gc_threshold`` (default 5 GiB): **full GC**, every cached task that is
  not live, in task-ID order (the order of Go's lexical directory walk);
* otherwise **young GC** over the non-live tasks, with ``gap = now - access_time``:

  - group 2: ``interval > 0`` and ``gap <= interval + interval_threshold`` (tasks fetched again at a
    regular pace and not overdue), ordered by file size ascending;
  - group 1: all the others, ordered by gap ascending (as the Go code is written);
  - group 1 first, then group 2; and only the first ``ceil(n * clean_ratio / 10)`` of these ``n``
    candidates are returned (``clean_ratio`` is out of 10; the default 1 deletes 10 % per run).

Ties keep the order of the ``entries`` argument (Go appends equal keys in walk order). A task ID that
appears more than once counts once, with its first entry. Live tasks are never returned.

Deliberate differences from Go:

* Units. Go keeps ``accessTime`` and ``interval`` in milliseconds but adds the 2 h threshold as
  ``seconds * 10^6`` (nanoseconds per millisecond times seconds: 7,200,000,000 "ms", about 83 days),
  so nearly every task with ``interval > 0`` lands in group 2. Here everything is in **seconds**
  (``access_time``, ``interval``, ``interval_threshold`` and ``now``), so the threshold really is 2 h.
  The ``.meta`` file stores milliseconds: divide by 1000 when building a :class:`CacheEntry`.
* Full GC. In Go the ``clean_ratio`` cut happens after both branches, so a full GC also removes only
  10 % per run (15 s). Here a full GC returns every non-live task, so a nearly full disk is relieved
  in one run.
* Go's young GC skips tasks whose ``.meta`` cannot be read, and its full GC includes them. Here the
  caller decides: to make such a task the first young-GC candidate, give it ``access_time=0`` and
  ``interval=0``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Final, Literal

DEFAULT_YOUNG_GC_THRESHOLD: Final = 100 * 1024**3
DEFAULT_FULL_GC_THRESHOLD: Final = 5 * 1024**3
DEFAULT_INTERVAL_THRESHOLD: Final = 2 * 3600.0
DEFAULT_CLEAN_RATIO: Final = 1

GCMode = Literal["none", "young", "full"]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One task cached on disk, as the disk GC sees it.

    ``size``: bytes of the data file. ``access_time``: Unix time in seconds of the last access
    (``.meta`` ``accessTime`` / 1000). ``interval``: seconds between the last two accesses (``.meta``
    ``interval`` / 1000); 0 when the task was accessed only once.
    """

    task_id: str
    size: int
    access_time: float
    interval: float


def disk_gc_mode(free_bytes: int, young_gc_threshold: int, full_gc_threshold: int) -> GCMode:
    """``none`` above the young threshold, ``full`` at or below the full threshold, else ``young``."""
    if free_bytes > young_gc_threshold:
        return "none"
    if free_bytes <= full_gc_threshold:
        return "full"
    return "young"


def clean_count(n: int, clean_ratio: int) -> int:
    """How many of ``n`` young-GC candidates one run deletes: ``ceil(n * clean_ratio / 10)``."""
    return (n * clean_ratio + 9) // 10


def select_disk_gc(
    *,
    free_bytes: int,
    entries: Iterable[CacheEntry],
    live_task_ids: Container[str],
    now: float,
    young_gc_threshold: int = DEFAULT_YOUNG_GC_THRESHOLD,
    full_gc_threshold: int = DEFAULT_FULL_GC_THRESHOLD,
    clean_ratio: int = DEFAULT_CLEAN_RATIO,
    interval_threshold: float = DEFAULT_INTERVAL_THRESHOLD,
) -> list[str]:
    """The task IDs the disk GC should delete now, in deletion order (see the module docstring).

    ``free_bytes``: available bytes of the CDN filesystem. ``now``, ``interval_threshold`` and the
    times in ``entries`` are in seconds. ``clean_ratio`` is out of 10 (0 to 10) and applies to young
    GC only. ``live_task_ids``: the tasks the task manager knows; they are never returned.
    """
    if not 0 <= clean_ratio <= 10:
        raise ValueError(f"clean_ratio must be between 0 and 10, not {clean_ratio}")
    mode = disk_gc_mode(free_bytes, young_gc_threshold, full_gc_threshold)
    if mode == "none":
        return []

    seen: set[str] = set()
    candidates: list[CacheEntry] = []
    for entry in entries:
        if entry.task_id in seen:
            continue
        seen.add(entry.task_id)
        if entry.task_id not in live_task_ids:
            candidates.append(entry)

    if mode == "full":
        return sorted(entry.task_id for entry in candidates)

    by_gap: list[tuple[float, CacheEntry]] = []  # group 1
    by_size: list[CacheEntry] = []  # group 2
    for entry in candidates:
        gap = now - entry.access_time
        if entry.interval > 0 and gap <= entry.interval + interval_threshold:
            by_size.append(entry)
        else:
            by_gap.append((gap, entry))
    by_gap.sort(key=lambda item: item[0])  # stable: ties keep the input order
    by_size.sort(key=lambda entry: entry.size)
    ordered = [entry.task_id for _, entry in by_gap] + [entry.task_id for entry in by_size]
    return ordered[: clean_count(len(ordered), clean_ratio)]
