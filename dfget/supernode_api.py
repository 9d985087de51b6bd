"""The supernode's legacy endpoints as Go dfget 1.0.6 calls them (spec §1.4), one method per call.

Bodies keep dfget's JSON key casing and order with empty optional fields left out, queries keep its
key order, and any answer that is not HTTP 200 is a transport-level failure, exactly as dfget treats
it: that is what makes our client interchangeable with Go's in front of either supernode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from .locator import Node
from .protocol import API_TIMEOUT, PROTOCOL_VERSION, USER_AGENT, raw_query

JSON_CONTENT_TYPE = "application/json;charset=utf-8"


class ApiError(Exception):
    """The supernode could not be reached, or answered with an HTTP status other than 200."""

    def __init__(self, node: Node, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.status = status


@dataclass(frozen=True)
class ResultInfo:
    """The ``{"code","data","msg"}`` envelope of an HTTP 200 answer (code 0 when the body has none)."""

    code: int
    msg: str = ""
    data: Any = None

    def describe(self) -> str:
        return f"code {self.code}" + (f" ({self.msg})" if self.msg else "")


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class RegisterData(_Wire):
    task_id: str = Field(alias="taskId", pattern=r"^[0-9a-f]{64}$")
    file_length: int = Field(alias="fileLength")
    piece_size: int = Field(alias="pieceSize", gt=5)
    cdn_source: str = Field("supernode", alias="cdnSource")


class PieceTask(_Wire):
    """One element of a 601 answer: fetch ``range`` of piece ``piece_num`` from ``peer_ip:peer_port{path}``."""

    range: str
    piece_num: int = Field(alias="pieceNum", ge=0)
    piece_size: int = Field(alias="pieceSize", gt=5)
    piece_md5: str = Field("", alias="pieceMd5")
    cid: str
    peer_ip: str = Field(alias="peerIp")
    peer_port: int = Field(alias="peerPort", ge=0, le=65535)
    path: str


class FinishData(_Wire):
    """The 600 answer's data: the *wrapped* CDN length and the raw file's MD5 (either may be missing)."""

    file_length: int = Field(0, alias="fileLength")
    md5: str = ""


def register_body(
    *, super_node_ip: str, raw_url: str, task_url: str, cid: str, ip: str, host_name: str, port: int, path: str,
    md5: str, identifier: str, call_system: str, headers: Sequence[str], pattern: str,
    root_cas: Sequence[str] = (), dfdaemon: bool = False, download_limit: int = 0, upload_limit: int = 0,
) -> dict[str, Any]:
    """dfget 1.0.6's RegisterRequest: ``md5`` when the user gave one, else ``identifier`` (§1.4).

    ``rootCAs`` and ``dfdaemon`` are sent only when set (dfdaemon's registers carry them), so with none of
    the extras below a dfget run's body is byte-identical to Go dfget's.

    ``downloadLimit`` and ``uploadLimit`` (bytes/s, sent when set) are ours: the rates this dfget and its
    uploader are limited to. Our supernode plans flows with them (a supernode that only times pieces cannot
    tell a client that could take a second flow from one that could not); Go's supernode ignores keys it
    does not know.
    """
    body: dict[str, Any] = {
        "superNodeIp": super_node_ip, "rawUrl": raw_url, "taskUrl": task_url, "cid": cid, "ip": ip,
        "hostName": host_name, "port": port, "path": path, "version": PROTOCOL_VERSION,
    }
    if md5:
        body["md5"] = md5
    elif identifier:
        body["identifier"] = identifier
    if call_system:
        body["callSystem"] = call_system
    if headers:
        body["headers"] = list(headers)
    body["pattern"] = pattern
    if root_cas:
        body["rootCAs"] = list(root_cas)
    if dfdaemon:
        body["dfdaemon"] = True
    if download_limit:
        body["downloadLimit"] = download_limit
    if upload_limit:
        body["uploadLimit"] = upload_limit
    return body


def metrics_body(
    *, ip: str, backsource_reason: int, cid: str, call_system: str, duration: float, file_length: int, port: int,
    success: bool, task_id: str,
) -> dict[str, Any]:
    """TaskMetricsRequest with Go's ``omitempty`` on every field (a negative length is not sent: Go rejects it)."""
    fields: list[tuple[str, Any]] = [
        ("IP", ip), ("backsourceReason", str(backsource_reason)), ("cID", cid), ("callSystem", call_system),
        ("duration", round(duration, 9)), ("fileLength", max(file_length, 0)), ("port", port),
        ("success", success), ("taskId", task_id),
    ]
    return {key: value for key, value in fields if value}


class SupernodeApi:
    """One aiohttp session's worth of supernode calls; every method names the node it talks to."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = API_TIMEOUT) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, node: Node, method: str, path: str, query: Sequence[tuple[str, object]] = (),
                    body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        target = f"{node.url}{path}" + (f"?{raw_query(query)}" if query else "")
        headers = {"User-Agent": USER_AGENT}
        data = None
        if body is not None:
            headers["Content-Type"] = JSON_CONTENT_TYPE
            data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.request(method, URL(target, encoded=True), data=data, headers=headers,
                                             timeout=self._timeout, allow_redirects=False) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(node, f"{method} {path}: cannot connect: {exc.os_error.strerror or exc.os_error}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(node, f"{method} {path} failed: {exc.__class__.__name__}: {exc}") from exc

    async def _result(self, node: Node, method: str, path: str, query: Sequence[tuple[str, object]] = (),
                      body: dict[str, Any] | None = None) -> ResultInfo:
        status, raw = await self._call(node, method, path, query, body)
        text = raw.decode("utf-8", "replace").strip()
        if status != 200:
            raise ApiError(node, f"{method} {path} answered HTTP {status}: {text[:300]}", status=status)
        try:
            obj = json.loads(text) if text else None
        except ValueError:
            raise ApiError(node, f"{method} {path} answered non-JSON: {text[:300]}", status=status) from None
        if not isinstance(obj, dict):
            return ResultInfo(0)
        code = obj.get("code")
        return ResultInfo(code if isinstance(code, int) else 0, str(obj.get("msg") or ""), obj.get("data"))

    async def register(self, node: Node, body: dict[str, Any]) -> ResultInfo:
        return await self._result(node, "POST", "/peer/registry", body=body)

    async def pull_piece_task(self, node: Node, *, src_cid: str, dst_cid: str, piece_range: str, result: int,
                              status: int, task_id: str) -> ResultInfo:
        return await self._result(node, "GET", "/peer/task", [
            ("srcCid", src_cid), ("dstCid", dst_cid), ("range", piece_range), ("result", result),
            ("status", status), ("taskId", task_id),
        ])

    async def report_piece_success(self, node: Node, *, task_id: str, cid: str, dst_cid: str,
                                   piece_range: str) -> ResultInfo:
        return await self._result(node, "GET", "/peer/piece/suc", [
            ("taskId", task_id), ("cid", cid), ("dstCid", dst_cid), ("pieceRange", piece_range),
        ])

    async def report_piece_error(self, node: Node, *, task_id: str, piece_range: str, src_cid: str, dst_cid: str,
                                 dst_ip: str, real_md5: str, expected_md5: str, error_type: str) -> None:
        """The answer is an empty 200 (or an ignored body): only the HTTP status matters."""
        status, raw = await self._call(node, "GET", "/peer/piece/error", [
            ("taskId", task_id), ("range", piece_range), ("srcCid", src_cid), ("dstCid", dst_cid),
            ("dstIp", dst_ip), ("realMd5", real_md5), ("expectedMd5", expected_md5), ("errorType", error_type),
        ])
        if status != 200:
            raise ApiError(node, f"GET /peer/piece/error answered HTTP {status}: {raw[:300]!r}", status=status)

    async def service_down(self, node: Node, *, task_id: str, cid: str) -> ResultInfo:
        return await self._result(node, "GET", "/peer/service/down", [("taskId", task_id), ("cid", cid)])

    async def report_metrics(self, node: Node, body: dict[str, Any]) -> None:
        await self._result(node, "POST", "/task/metrics", body=body)
