"""Pydantic models of every request and response of the SuperNode API and the dfget v1 endpoints.

Field aliases are the JSON keys of the Go structs (``rawURL``, ``cID``, ``IP``...). Real dfget sends
keys in another case (``rawUrl``, ``cid``, ``ip``) and Go matches keys case-insensitively, so every
request model accepts any casing of its keys (:class:`WireModel`). Responses are dumped by alias;
``omitempty`` Go fields are dropped when empty, as the Go supernode does.
"""

from __future__ import annotations

import enum
import ipaddress
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, model_validator


def _ipv4(value: str) -> str:
    if value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"must be of type ipv4: {value!r}") from None
    return value


IPv4 = Annotated[str, AfterValidator(_ipv4)]


def _peer_port(value: int) -> int:
    if value and not 15000 <= value <= 65000:
        raise ValueError("port must be 0 or in [15000, 65000]")
    return value


PeerPort = Annotated[int, AfterValidator(_peer_port)]


class WireModel(BaseModel):
    """Base of request models: keys are matched case-insensitively, unknown keys are ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    _keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        keys: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            keys[alias.lower()] = alias
            keys[name.lower()] = alias
        cls._keys = keys

    @model_validator(mode="before")
    @classmethod
    def _fold_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {cls._keys.get(str(k).lower(), k): v for k, v in data.items()}

    def wire(self, *, omit_empty: bool = False) -> dict[str, Any]:
        """JSON-ready dict by alias; ``omit_empty`` mimics Go's ``omitempty``."""
        data = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        if omit_empty:
            data = {k: v for k, v in data.items() if v not in ("", 0, False, [], {})}
        return data


class ErrorResponse(WireModel):
    code: int
    message: str


# ---------------------------------------------------------------- dfget v1 (legacy) endpoints


class RegisterRequest(WireModel):
    """``POST /peer/registry``: a peer and its download task in one call (server schema §1.4)."""

    ip: IPv4 = Field("", alias="IP")
    as_seed: bool = Field(False, alias="asSeed")
    cid: str = Field("", alias="cID")
    call_system: str = Field("", alias="callSystem")
    dfdaemon: bool = False
    file_length: int = Field(0, alias="fileLength", ge=-(2**63), le=2**63 - 1)  # Go's int64
    headers: list[str] | None = None
    host_name: str = Field("", alias="hostName")
    identifier: str = ""
    insecure: bool = False
    md5: str = ""
    path: str = ""
    port: PeerPort = 0
    raw_url: str = Field("", alias="rawURL")
    root_cas: list[str] | None = Field(None, alias="rootCAs")
    super_node_ip: str = Field("", alias="superNodeIp")
    task_id: str = Field("", alias="taskId")
    task_url: str = Field("", alias="taskURL")
    version: str = ""
    pattern: str = ""
    download_limit: int = Field(0, alias="downloadLimit", ge=0, le=2**63 - 1)
    """Ours, not Go's: the download rate limit (bytes/s) of the registering dfget; 0 or absent: not told. Go's
    supernode ignores the key, and Go's dfget does not send it."""
    upload_limit: int = Field(0, alias="uploadLimit", ge=0, le=2**63 - 1)
    """Ours too: the upload rate limit (bytes/s) of the peer's uploader (its ``--totallimit``); 0: none or not told."""


class RegisterResult(WireModel):
    task_id: str = Field(alias="taskId")
    file_length: int = Field(alias="fileLength")
    piece_size: int = Field(alias="pieceSize")
    cdn_source: str = Field("supernode", alias="cdnSource")
    as_seed: bool = Field(False, alias="asSeed")
    seed_task_id: str = Field("", alias="seedTaskID")


class PieceTaskItem(WireModel):
    """One piece handed to a client by ``/peer/task`` (code 601); keys are exactly dfget's."""

    range: str
    piece_num: int = Field(alias="pieceNum")
    piece_size: int = Field(alias="pieceSize")
    piece_md5: str = Field(alias="pieceMd5")
    cid: str
    peer_ip: str = Field(alias="peerIp")
    peer_port: int = Field(alias="peerPort")
    path: str
    down_link: int = Field(0, alias="downLink")


class FinishData(WireModel):
    file_length: int = Field(alias="fileLength")
    md5: str


class TaskMetricsRequest(WireModel):
    """``POST /task/metrics``: dfget's report at the end of a download."""

    ip: IPv4 = Field("", alias="IP")
    backsource_reason: str = Field("", alias="backsourceReason")
    cid: str = Field("", alias="cID")
    call_system: str = Field("", alias="callSystem")
    # Both feed Prometheus counters and histograms: a NaN, an infinity or an integer beyond float range
    # from one client would poison (or crash) every later scrape of these series.
    duration: float = Field(0.0, ge=0, allow_inf_nan=False)
    file_length: int = Field(0, alias="fileLength", ge=-(2**63), le=2**63 - 1)  # Go's int64
    port: PeerPort = 0
    success: bool = False
    task_id: str = Field("", alias="taskId")


class NetworkInfoResponse(WireModel):
    nodes: list[dict[str, Any]] | None = None


class HeartbeatResponse(WireModel):
    seed_task_ids: list[str] | None = Field(None, alias="seedTaskIDs")


class PieceErrorType(enum.StrEnum):
    FILE_NOT_EXIST = "FILE_NOT_EXIST"
    FILE_MD5_NOT_MATCH = "FILE_MD5_NOT_MATCH"


class PieceErrorRequest(WireModel):
    dst_ip: str = Field("", alias="dstIP")
    dst_pid: str = Field("", alias="dstPid")
    error_type: str = Field("", alias="errorType")
    expected_md5: str = Field("", alias="expectedMd5")
    range: str = ""
    real_md5: str = Field("", alias="realMd5")
    src_cid: str = Field("", alias="srcCid")
    task_id: str = Field("", alias="taskId")


# ---------------------------------------------------------------- REST API (supernode-api.md)


class SortDirection(enum.StrEnum):
    ASC = "ASC"
    DESC = "DESC"


class PeerCreateRequest(WireModel):
    ip: IPv4 = Field(alias="IP", min_length=1)
    host_name: str = Field(alias="hostName", min_length=1, max_length=253,
                           pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
    port: int = Field(ge=15000, le=65000)
    version: str = ""


class PeerCreateResponse(WireModel):
    id: str = Field(alias="ID")


class PeerInfo(WireModel):
    id: str = Field(alias="ID")
    ip: str = Field(alias="IP")
    created: datetime
    host_name: str = Field(alias="hostName")
    port: int
    version: str = ""

    @field_serializer("created")
    def _rfc3339_millis(self, value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class CdnStatus(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESS = "SUCCESS"
    SOURCE_ERROR = "SOURCE_ERROR"


class TaskCreateRequest(WireModel):
    cid: str = Field(alias="cID", min_length=1)
    call_system: str = Field("", alias="callSystem")
    dfdaemon: bool = False
    filter: list[str] | None = None
    headers: dict[str, str] | None = None
    identifier: str = ""
    md5: str = ""
    path: str = ""
    raw_url: str = Field(alias="rawURL", min_length=1)
    task_url: str = Field("", alias="taskURL")
    peer_id: str = Field(alias="peerID", min_length=1,
                         description="the registered peer (POST /peers) that runs this download")
    super_node_ip: str = Field("", alias="superNodeIp")


class TaskCreateResponse(WireModel):
    id: str = Field(alias="ID")
    file_length: int = Field(alias="fileLength")
    piece_size: int = Field(alias="pieceSize")
    cdn_source: str = Field("supernode", alias="cdnSource")


class TaskInfo(WireModel):
    id: str = Field(alias="ID")
    as_seed: bool = Field(False, alias="asSeed")
    call_system: str = Field("", alias="callSystem")
    cdn_status: CdnStatus = Field(alias="cdnStatus")
    dfdaemon: bool = False
    file_length: int = Field(0, alias="fileLength")
    headers: dict[str, str] | None = None
    http_file_length: int = Field(0, alias="httpFileLength")
    identifier: str = ""
    md5: str = ""
    path: str = ""
    piece_size: int = Field(0, alias="pieceSize")
    piece_total: int = Field(0, alias="pieceTotal")
    raw_url: str = Field("", alias="rawURL")
    real_md5: str = Field("", alias="realMd5")
    task_url: str = Field("", alias="taskURL")


class TaskUpdateRequest(WireModel):
    peer_id: str = Field(alias="peerID", min_length=1)


class DfgetTaskStatus(enum.StrEnum):
    STARTED = "STARTED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"


class PieceResult(enum.StrEnum):
    FAILED = "FAILED"
    SUCCESS = "SUCCESS"
    INVALID = "INVALID"
    SEMISUC = "SEMISUC"


class PiecePullRequest(WireModel):
    dfget_task_status: DfgetTaskStatus = Field(DfgetTaskStatus.STARTED, alias="dfgetTaskStatus")
    dst_pid: str = Field("", alias="dstPID")
    piece_range: str = Field("", alias="pieceRange")
    piece_result: PieceResult = Field(PieceResult.INVALID, alias="pieceResult")


class PieceInfo(WireModel):
    pid: str = Field(alias="pID")
    path: str
    peer_ip: str = Field(alias="peerIP")
    peer_port: int = Field(alias="peerPort")
    piece_md5: str = Field(alias="pieceMD5")
    piece_range: str = Field(alias="pieceRange")
    piece_size: int = Field(alias="pieceSize")


class PieceUpdateRequest(WireModel):
    client_id: str = Field(alias="clientID", min_length=1)
    dst_pid: str = Field(alias="dstPID", min_length=1)
    piece_status: PieceResult = Field(alias="pieceStatus")


class VersionInfo(WireModel):
    arch: str = Field(alias="Arch")
    build_date: str = Field("", alias="BuildDate")
    go_version: str = Field("", alias="GoVersion")
    os: str = Field(alias="OS")
    revision: str = Field("", alias="Revision")
    version: str = Field(alias="Version")
