"""The preheat record (Go's PreheatTask) and the error that ends one as FAILED.

Both are kept apart from the manager that runs the records so that the code doing one record's work
(:mod:`supernode.managers.preheat_fetch` for a file or a layer, :mod:`supernode.managers.registry_client`
for an image's manifests) can read a record and fail it without importing the manager. Who writes
which field: the manager creates, launches and forgets records and alone sets their status, times,
job, children and waiters; the fetch of a file or a layer sets only ``task_id`` and ``bytes``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dfwire.registry import Descriptor, Platform

from ..cdn.source import TlsOptions
from ..preheat_models import PreheatInfo, PreheatStatus, PreheatType


class PreheatFailed(Exception):
    """The preheat cannot succeed; the text becomes its ``errorMsg``."""


@dataclass(eq=False)
class Preheat:
    """One preheat record (Go's PreheatTask). Times are Unix seconds, 0 while unset."""

    id: str
    type: PreheatType
    url: str
    filter: str = ""
    identifier: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    tls: TlsOptions = field(default_factory=TlsOptions)
    expected: Descriptor | None = None
    """For an image's blob: the digest and size the manifest promises."""
    status: PreheatStatus = PreheatStatus.WAITING
    start_time: float = 0.0
    finish_time: float = 0.0
    error_msg: str = ""
    children: list[str] = field(default_factory=list)
    waiters: set[str] = field(default_factory=set)
    """Image preheats currently waiting for this record (a layer shared by several images)."""
    requested: bool = False
    """Asked for through the API, not only started as an image's layer."""
    task_id: str = ""
    """The CDN task of a file or layer preheat."""
    bytes: int = 0
    job: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metric_type(self) -> str:
        """Layers count as image bytes, whatever their own record type."""
        return PreheatType.IMAGE.value if self.expected is not None else self.type.value

    def info(self) -> PreheatInfo:
        return PreheatInfo(
            id=self.id,
            start_time=datetime.fromtimestamp(self.start_time, UTC),
            finish_time=datetime.fromtimestamp(self.finish_time, UTC),
            status=self.status,
            error_msg=self.error_msg or None,
            type=self.type,
            url=self.url,
            children=list(self.children) or None,
        )
