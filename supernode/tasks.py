"""Tasks and clients (dfget downloads) as plain records: no I/O, no asyncio.

A *task* is one piece of content (one task ID); a *client* is one dfget process downloading it (its
CID), running on a *peer*. The task manager owns these records; the CDN manager fills a task's
content fields as the source is fetched.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from dfwire.ids import is_blank
from dfwire.pieces import DEFAULT_PIECE_SIZE, piece_count, piece_total_at_register

from .cdn.source import TlsOptions
from .models import CdnStatus, TaskInfo

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _redacted(headers: dict[str, str]) -> dict[str, str]:
    """Task headers as the API shows them: credentials a registrant or a preheat passed are not echoed."""
    return {k: "<redacted>" if k.lower() in _SECRET_HEADERS else v for k, v in headers.items()}


class ClientStatus(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


@dataclass(frozen=True)
class TaskSpec:
    """What a registrant asks for; everything that determines the task ID and how to fetch it."""

    task_id: str
    raw_url: str
    task_url: str
    md5: str = ""
    identifier: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    call_system: str = ""
    dfdaemon: bool = False
    tls: TlsOptions = field(default_factory=TlsOptions)

    def conflicts_with(self, other: TaskSpec) -> bool:
        """Go's ``equalsTask`` negated: same ID but another URL, md5 or identifier (§2.1 item 6)."""
        if self.task_url != other.task_url:
            return True
        if not is_blank(self.md5):
            return self.md5 != other.md5
        return self.identifier != other.identifier


@dataclass(eq=False)
class Task:
    spec: TaskSpec
    cdn_status: CdnStatus = CdnStatus.WAITING
    http_file_length: int = -1
    piece_size: int = DEFAULT_PIECE_SIZE
    file_length: int = 0
    real_md5: str = ""
    piece_md5s: list[str] = field(default_factory=list)
    fail_reason: str = ""
    access_time: float = field(default_factory=time.time)
    clients: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.spec.task_id

    @property
    def piece_total(self) -> int:
        """Go's TaskInfo.pieceTotal: raw length over piece size while fetching, exact after success."""
        if self.cdn_status == CdnStatus.SUCCESS:
            return piece_count(self.http_file_length, self.piece_size)
        return piece_total_at_register(self.http_file_length, self.piece_size)

    def piece_md5(self, piece_num: int) -> str:
        return self.piece_md5s[piece_num] if 0 <= piece_num < len(self.piece_md5s) else ""

    def info(self) -> TaskInfo:
        spec = self.spec
        return TaskInfo(
            id=spec.task_id, call_system=spec.call_system, cdn_status=self.cdn_status, dfdaemon=spec.dfdaemon,
            file_length=self.file_length if self.cdn_status == CdnStatus.SUCCESS else 0,
            headers=_redacted(spec.headers) or None, http_file_length=max(self.http_file_length, 0),
            identifier=spec.identifier, md5=spec.md5, piece_size=self.piece_size, piece_total=self.piece_total,
            raw_url=spec.raw_url, real_md5=self.real_md5, task_url=spec.task_url,
        )


@dataclass(eq=False)
class Client:
    """One dfget download (Go's dfgetTask), keyed by ``(cid, task_id)``."""

    cid: str
    task_id: str
    peer_id: str
    path: str
    super_node_ip: str = ""
    call_system: str = ""
    serves: bool = True
    status: ClientStatus = ClientStatus.WAITING
    assigned: dict[int, float] = field(default_factory=dict)
    """Pieces handed out and not yet reported, with the (monotonic) time they were handed out."""
