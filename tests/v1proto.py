"""Test doubles that speak Dragonfly v1 exactly as Go dfget 1.0.6 does, plus the servers around them.

Every compatibility promise of the supernode is about what an unmodified dfget sends and accepts, yet
the machines that run this suite have no Go toolchain and no dfget binary. This module therefore
reproduces dfget's wire behaviour request by request (spec §1.4, §2.2, §3.3-§3.10; the recordings in
``shared/spec/transcripts``): the same paths, the same query-key order without escaping, the same JSON
key casing and order, the same header names as they appear on the wire.

- :class:`V1Uploader` is dfget's peer server: it rebuilds wrapped pieces from a raw ``.service`` file
  that may still be growing, so other clients can fetch pieces of an unfinished download.
- :class:`V1Client` is one dfget installation on a node: each :meth:`V1Client.download` is one dfget
  run (a new cid), with dfget's pull loop. It reacts to answers the way dfget does, only stricter:
  where dfget would just log (a report that is not 611) or silently migrate to another supernode (any
  unexpected code), it raises :class:`V1Error`, because in a test that is a supernode bug to report.
- :class:`OriginServer` and :class:`SupernodeProcess` are the two other ends: a counting HTTP origin
  and the real supernode run as a child process.

Everything binds to 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from dfwire import pieces
from dfwire.ids import SUPER_CID_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]

DFGET_VERSION = "1.0.6"
API_USER_AGENT = "fasthttp"  # dfget talks to the supernode and to uploaders through fasthttp
PIECE_USER_AGENT = f"dfget/{DFGET_VERSION}"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
PEER_FILE_PREFIX = "/peer/file/"

API_TIMEOUT = 5.0  # dfget's per-request timeout towards the supernode
MIN_RATE = 64 * 1024  # dfget's --minrate default, which sizes the per-piece timeout
DEFAULT_RATE = 20 * 1024 * 1024  # dfget's --locallimit default, announced to the uploader's /rate
QUEUE_POLL = 2.0  # dfget re-sends its latest pull after this long without a queued result
WAIT_FIRST, WAIT_MAX = 0.05, 1.0  # back-off after a 602, doubled each time
CHUNK = 64 * 1024

# What dfget 1.0.x sends (§1.3; it never sends result 501 or status 702).
RESULT_FAIL, RESULT_INVALID, RESULT_SEMISUC = 500, 502, 503
STATUS_START, STATUS_RUNNING = 700, 701
# What the supernode answers (§1.3).
CODE_OK = 200
CODE_URL_NOT_REACHABLE = 607
CODE_PEER_FINISH, CODE_PEER_CONTINUE, CODE_PEER_WAIT = 600, 601, 602
CODE_PIECE_REPORTED = 611

PIECE_TASK_KEYS = frozenset(
    {"range", "pieceNum", "pieceSize", "pieceMd5", "cid", "peerIp", "peerPort", "path", "downLink"}
)
# What dfget needs of a 601 item to fetch the piece (a missing pieceMd5 only skips the check).
_PIECE_TASK_NEEDED = PIECE_TASK_KEYS - {"pieceMd5", "downLink"}

_pids = itertools.count(os.getpid())
_GO_INT = re.compile(r"-?[0-9]+")


# ---------------------------------------------------------------------------------------------------
# Identifiers (§2.2)


def dfget_sign(pid: int | None = None, now: float | None = None) -> str:
    """``{pid}-{unixSeconds with 3 decimals}``: the per-run sign in dfget's cid and task file name.

    Each harness run takes its own "pid" so that two runs started in the same millisecond differ.
    """
    return f"{next(_pids) if pid is None else pid}-{time.time() if now is None else now:.3f}"


def dfget_cid(ip: str, sign: str) -> str:
    return f"{ip}-{sign}"


def task_file_name(output: str | Path, sign: str) -> str:
    return f"{Path(output).name}-{sign}"


def peer_path(file_name: str) -> str:
    """The uploader path dfget registers: ``/peer/file/{taskFileName}``."""
    return f"{PEER_FILE_PREFIX}{file_name}"


def is_supernode_cid(cid: str) -> bool:
    return cid.startswith(SUPER_CID_PREFIX)


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for servers that must be told their port up front.

    Never the same port twice in one process: the kernel may give a just-closed port to the next
    ``bind(0)``, and a supernode told the same API and download port cannot start.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def pattern_bytes(length: int) -> bytes:
    """``bytes(i % 251 for i in range(length))``, the content of the recorded transcripts, built fast."""
    block = bytes(range(251))
    return (block * (length // 251 + 1))[:length]


def go_json(value: Any) -> bytes:
    """JSON as Go's ``json.Marshal`` writes it: compact, UTF-8, with ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode()


# ---------------------------------------------------------------------------------------------------
# Raw HTTP


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, kept raw so that tests can check bytes as well as meaning."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def obj(self) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` when it is not one."""
        try:
            value = self.json()
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def code(self) -> int | None:
        """The ResultInfo (or ErrorResponse) ``code``."""
        code = (self.obj or {}).get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    @property
    def msg(self) -> str:
        obj = self.obj or {}
        return str(obj.get("msg") or obj.get("message") or "")

    @property
    def data(self) -> Any:
        return (self.obj or {}).get("data")

    def brief(self, limit: int = 300) -> str:
        text = self.text
        return f"HTTP {self.status} {text[:limit]}{'...' if len(text) > limit else ''}"


async def raw_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    time_limit: float = API_TIMEOUT,
) -> Answer:
    """Send ``url`` exactly as given (no re-escaping of the query) with only the given headers.

    aiohttp's automatic ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type`` are suppressed
    so that the request carries what dfget sends and nothing else (aiohttp still adds Host and
    Content-Length, as every client does).
    """
    async with session.request(
        method,
        URL(url, encoded=True),
        data=body,
        headers=CIMultiDict(headers),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=time_limit),
        allow_redirects=False,
    ) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def raw_query(pairs: Sequence[tuple[str, object]]) -> str:
    """dfget's query strings: keys in its order, values unescaped, empty values as ``key=``."""
    return "&".join(f"{key}={value}" for key, value in pairs)


class V1Api:
    """The supernode's legacy endpoints, one method per call dfget makes (§1.4)."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str) -> None:
        self.session = session
        self.api_url = api_url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, object]] = (),
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Answer:
        headers = [("User-Agent", API_USER_AGENT)]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        target = f"{path}?{raw_query(query)}" if query else path
        return await raw_request(self.session, method, self.api_url + target, body=body, headers=headers)

    async def register(self, body: Mapping[str, Any]) -> Answer:
        return await self.call("POST", "/peer/registry", body=go_json(body), content_type=JSON_CONTENT_TYPE)

    async def pull_piece_task(
        self, *, src_cid: str, dst_cid: str, piece_range: str, result: int | str, status: int | str,
        task_id: str,
    ) -> Answer:
        return await self.call("GET", "/peer/task", [
            ("srcCid", src_cid), ("dstCid", dst_cid), ("range", piece_range),
            ("result", result), ("status", status), ("taskId", task_id),
        ])

    async def report_piece_suc(self, *, task_id: str, cid: str, dst_cid: str, piece_range: str) -> Answer:
        return await self.call("GET", "/peer/piece/suc", [
            ("taskId", task_id), ("cid", cid), ("dstCid", dst_cid), ("pieceRange", piece_range),
        ])

    async def report_piece_error(
        self, *, task_id: str, piece_range: str, src_cid: str, dst_cid: str, dst_ip: str, real_md5: str,
        expected_md5: str, error_type: str,
    ) -> Answer:
        return await self.call("GET", "/peer/piece/error", [
            ("taskId", task_id), ("range", piece_range), ("srcCid", src_cid), ("dstCid", dst_cid),
            ("dstIp", dst_ip), ("realMd5", real_md5), ("expectedMd5", expected_md5),
            ("errorType", error_type),
        ])

    async def service_down(self, *, task_id: str, cid: str) -> Answer:
        return await self.call("GET", "/peer/service/down", [("taskId", task_id), ("cid", cid)])

    async def task_metrics(self, body: Mapping[str, Any]) -> Answer:
        return await self.call("POST", "/task/metrics", body=go_json(body), content_type=JSON_CONTENT_TYPE)


def register_body(
    *,
    super_node_ip: str,
    raw_url: str,
    task_url: str,
    cid: str,
    ip: str,
    host_name: str,
    port: int,
    path: str,
    md5: str | None = None,
    identifier: str | None = None,
    call_system: str | None = None,
    headers: Sequence[str] = (),
    pattern: str = "p2p",
) -> dict[str, Any]:
    """dfget 1.0.6's RegisterRequest: its key casing and order, empty optional fields left out.

    dfget sends ``md5`` when the user gave one, else ``identifier`` (§1.4; transcripts).
    """
    body: dict[str, Any] = {
        "superNodeIp": super_node_ip, "rawUrl": raw_url, "taskUrl": task_url, "cid": cid, "ip": ip,
        "hostName": host_name, "port": port, "path": path, "version": DFGET_VERSION,
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
    return body


# ---------------------------------------------------------------------------------------------------
# Rate limiting


class RateLimiter:
    """Paces byte streams to ``rate`` bytes per second, shared by everyone holding it (dfget ``-s``)."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._free_at = 0.0

    async def take(self, size: int) -> None:
        now = asyncio.get_running_loop().time()
        self._free_at = max(self._free_at, now) + size / self.rate
        await asyncio.sleep(self._free_at - now)


# ---------------------------------------------------------------------------------------------------
# Uploader (dfget's peer server, §3.9, §3.10)


class RangeNotSatisfiable(ValueError):
    """The requested piece lies beyond what the service file holds (answered with 416)."""


@dataclass(frozen=True)
class UploadParams:
    start: int
    length: int
    piece_num: int
    piece_size: int


def _go_int(text: str | None, what: str) -> int:
    if text is None or not _GO_INT.fullmatch(text):
        raise ValueError(f"invalid {what}: {text!r}")
    return int(text)


def parse_upload_params(range_value: str | None, piece_num: str | None, piece_size: str | None) -> UploadParams:
    """The uploader's ``parseParams``: ``Range: bytes=S-E`` with exactly one ``=`` and one ``-``, E > S."""
    num = _go_int(piece_num, "pieceNum")
    size = _go_int(piece_size, "pieceSize")
    value = range_value or ""
    if value.count("=") != 1:
        raise ValueError(f"invalid range: {value!r}")
    spec = value.split("=")[1]
    if spec.count("-") != 1:
        raise ValueError(f"invalid range: {spec!r}")
    start_text, end_text = spec.split("-")
    start, end = _go_int(start_text, "range start"), _go_int(end_text, "range end")
    if end <= start:
        raise ValueError(f"invalid range: {spec!r}")
    return UploadParams(start, end - start + 1, num, size)


def amend_range(size: int, padded: bool, params: UploadParams) -> tuple[int, int]:
    """``(offset in the raw file, bytes on the wire)`` for a request, as the uploader's ``amendRange``.

    A padded (wrapped) piece n starts at raw offset ``S - 5n``; a request past the end of a growing
    file shrinks to what the file holds, down to an empty 5-byte piece. Go would compute a negative
    length when the offset lies beyond the file; this double answers 416 there instead.
    """
    pad = pieces.WRAP_SIZE if padded else 0
    start = params.start - params.piece_num * pad
    length = params.length
    if length < pad or start < 0 or start > size or (start == size and not padded):
        raise RangeNotSatisfiable(f"range {params.start}+{params.length} beyond {size} bytes")
    if start + length - pad > size:
        length = size - start + pad
    return start, length


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


@dataclass
class UploadTask:
    """What the uploader knows of one task file: registered by ``/check`` or ``/client/finish``."""

    data_dir: Path
    rate_limit: int = 0
    finished: bool = False
    finish_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadRecord:
    task_file_name: str
    piece_num: int
    offset: int
    wire_length: int
    corrupted: bool


class V1Uploader:
    """dfget's peer server on one loopback IP, serving ``{dataDir}/{taskFileName}.service`` files.

    The service file is re-read on every request, so pieces written after the download started are
    served as soon as they are on disk. ``total_limit`` caps the upload rate (``--totallimit``);
    ``corrupt`` flips one byte of every served piece (``True``) or of the listed piece numbers, for
    tests of how the supernode handles a lying peer.
    """

    def __init__(
        self,
        ip: str,
        data_dir: Path,
        *,
        port: int = 0,
        total_limit: int = 0,
        corrupt: bool | Collection[int] = False,
    ) -> None:
        if not ip.startswith("127."):
            raise ValueError("test servers bind loopback addresses only")
        self.ip = ip
        self.data_dir = data_dir
        self.corrupt = corrupt
        self.tasks: dict[str, UploadTask] = {}
        self.uploads: list[UploadRecord] = []
        self._requested_port = port
        self._limiter: RateLimiter | None = None
        self.total_limit = total_limit
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def total_limit(self) -> int:
        return self._limiter.rate if self._limiter else 0

    @total_limit.setter
    def total_limit(self, rate: int) -> None:
        self._limiter = RateLimiter(rate) if rate > 0 else None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def add_task(self, name: str, data_dir: Path | None = None) -> UploadTask:
        """Make ``{data_dir}/{name}.service`` servable, as ``/check/{name}`` does."""
        task = self.tasks.setdefault(name, UploadTask(data_dir or self.data_dir))
        task.data_dir = data_dir or task.data_dir
        return task

    def service_file(self, name: str) -> Path:
        task = self.tasks.get(name)
        return (task.data_dir if task else self.data_dir) / f"{name}.service"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/peer/file/{name:.*}", self._upload)
        app.router.add_get("/server/ping", self._ping)
        app.router.add_get("/check/{name:.*}", self._check)
        app.router.add_get("/rate/{name:.*}", self._rate)
        app.router.add_get("/client/finish", self._finish)
        return app

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, self._requested_port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> V1Uploader:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _corrupts(self, piece_num: int) -> bool:
        if isinstance(self.corrupt, bool):
            return self.corrupt
        return piece_num in self.corrupt

    @staticmethod
    def _octets(text: str, status: int = 200) -> web.Response:
        return web.Response(status=status, body=text.encode(), content_type="application/octet-stream")

    async def _ping(self, _: web.Request) -> web.Response:
        return self._octets("success")

    async def _check(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data_dir = request.headers.get("dataDir")
        self.add_task(name, Path(data_dir) if data_dir else None)
        with contextlib.suppress(ValueError):
            total = _go_int(request.headers.get("totalLimit"), "totalLimit")
            if total > 0:
                self.total_limit = total
        return self._octets(f"{name}@{DFGET_VERSION}")

    async def _rate(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            client_rate = _go_int(request.headers.get("rateLimit"), "rateLimit")
        except ValueError as exc:
            return self._octets(str(exc), 400)
        if name in self.tasks:
            self.tasks[name].rate_limit = client_rate
        total = self.total_limit
        if total <= 0:
            return self._octets(str(client_rate))
        running = sum(task.rate_limit for task in self.tasks.values() if not task.finished)
        if running > total:
            client_rate = math.ceil(client_rate * total / running)
        return self._octets(str(client_rate))

    async def _finish(self, request: web.Request) -> web.Response:
        params = {key: request.query.get(key, "") for key in ("taskFileName", "taskID", "cid", "superNode")}
        if not all(params.values()):
            return self._octets("invalid params", 400)
        task = self.tasks.setdefault(params["taskFileName"], UploadTask(self.data_dir))
        task.finished = True
        task.finish_params = params
        return self._octets("success")

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            params = parse_upload_params(
                request.headers.get("Range"), request.headers.get("pieceNum"), request.headers.get("pieceSize")
            )
        except ValueError as exc:
            return self._octets(str(exc), 400)
        if name not in self.tasks or "/" in name or name in {".", ".."}:
            return self._octets(f"failed to get taskPath: {name}", 500)
        path = self.service_file(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return web.Response(status=404)
        except PermissionError:
            return web.Response(status=403)
        padded = request.headers.get("cdnSource", "") != "source"
        try:
            offset, length = amend_range(size, padded, params)
        except RangeNotSatisfiable:
            return self._octets("range not satisfiable", 416)
        data = await asyncio.to_thread(_read_at, path, offset, length - (pieces.WRAP_SIZE if padded else 0))
        body = pieces.wrap(data, params.piece_size) if padded else data
        corrupted = self._corrupts(params.piece_num) and len(body) > 0
        if corrupted:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0xFF
            body = bytes(flipped)
        self.uploads.append(UploadRecord(name, params.piece_num, offset, len(body), corrupted))
        resp = web.StreamResponse(status=206, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(body)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for pos in range(0, len(body), CHUNK):
                chunk = body[pos:pos + CHUNK]
                if self._limiter is not None:
                    await self._limiter.take(len(chunk))
                await resp.write(chunk)
            await resp.write_eof()
        return resp


# ---------------------------------------------------------------------------------------------------
# Client (dfget's register, pull loop, piece download and reports, §3.3-§3.7)


class V1Error(Exception):
    """A download that real dfget would not have completed through this supernode.

    ``stage`` says where: ``register``, ``pull``, ``report``, ``finish``, ``uploader`` or ``timeout``;
    ``status``/``code`` carry the HTTP status and ResultInfo code of the answer that ended it.
    """

    def __init__(
        self, stage: str, message: str, *, status: int | None = None, code: int | None = None,
        answer: Answer | None = None,
    ) -> None:
        super().__init__(f"[{stage}] {message}")
        self.stage = stage
        self.status = status
        self.code = code
        self.answer = answer
        self.cid = ""
        self.task_id = ""

    def __str__(self) -> str:
        where = f" (cid {self.cid}, task {self.task_id or '-'})" if self.cid else ""
        return f"{super().__str__()}{where}"


@dataclass(frozen=True)
class PieceTask:
    """One element of a 601 answer."""

    range: str
    piece_num: int
    piece_size: int
    piece_md5: str
    cid: str
    peer_ip: str
    peer_port: int
    path: str

    @classmethod
    def from_json(cls, item: Any) -> PieceTask:
        if not isinstance(item, dict) or not item.keys() >= _PIECE_TASK_NEEDED:
            raise V1Error("pull", f"601 item without the keys {sorted(_PIECE_TASK_NEEDED)}: {item!r}")
        try:
            return cls(
                str(item["range"]), int(item["pieceNum"]), int(item["pieceSize"]), str(item.get("pieceMd5") or ""),
                str(item["cid"]), str(item["peerIp"]), int(item["peerPort"]), str(item["path"]),
            )
        except (TypeError, ValueError) as exc:
            raise V1Error("pull", f"601 item with a badly typed value: {item!r}") from exc


@dataclass(frozen=True)
class PieceRecord:
    """Where a piece the client holds came from."""

    piece_num: int
    range: str
    dst_cid: str
    peer_ip: str
    peer_port: int
    path: str
    piece_md5: str
    wrapped_len: int

    @property
    def from_peer(self) -> bool:
        return not is_supernode_cid(self.dst_cid)


@dataclass(frozen=True)
class PieceFailure:
    piece_num: int
    range: str
    dst_cid: str
    reason: str
    error_type: str = ""  # FILE_NOT_EXIST or FILE_MD5_NOT_MATCH when dfget reports /peer/piece/error
    real_md5: str = ""
    expected_md5: str = ""


@dataclass
class DownloadResult:
    task_id: str
    cid: str
    task_file_name: str
    register: dict[str, Any]  # data of the register answer
    finish: dict[str, Any]  # data of the 600 answer
    output: Path
    pieces: dict[int, PieceRecord]
    failures: list[PieceFailure]
    pulls: int

    @property
    def file_length(self) -> int:
        return int(self.register["fileLength"])

    @property
    def piece_size(self) -> int:
        return int(self.register["pieceSize"])

    @property
    def peer_pieces(self) -> list[PieceRecord]:
        return [record for record in self.pieces.values() if record.from_peer]


@dataclass(frozen=True)
class _Item:
    """A pull request waiting in dfget's queue: what to tell the supernode about one piece."""

    status: int
    result: int
    range: str = ""
    dst_cid: str = ""


@dataclass
class _Run:
    """The state of one dfget run."""

    cid: str
    task_file_name: str
    service: Path
    output: Path
    fd: int = -1
    task_id: str = ""
    register: dict[str, Any] = field(default_factory=dict)
    queue: asyncio.Queue[_Item | V1Error] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    done: dict[str, PieceRecord] = field(default_factory=dict)
    failures: list[PieceFailure] = field(default_factory=list)
    pulls: int = 0

    async def close(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class V1Client:
    """One node running dfget 1.0.6 against one supernode; every :meth:`download` is a new dfget run.

    With an ``uploader`` the client is a p2p peer (it registers the uploader's port and writes pieces
    into the uploader's data dir, so others can fetch them at once); without one it is a cdn-pattern
    client (port 0). ``rate_limit`` caps its download rate like ``-s``; ``timeout`` bounds each run.
    """

    def __init__(
        self,
        api_url: str,
        work_dir: Path,
        *,
        ip: str = "127.0.0.1",
        uploader: V1Uploader | None = None,
        rate_limit: int = 0,
        timeout: float = 60.0,
        host_name: str = "vm",
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.work_dir = work_dir
        self.ip = ip
        self.uploader = uploader
        self.rate_limit = rate_limit
        self.timeout = timeout
        self.host_name = host_name
        api = URL(self.api_url)
        self.super_node_ip = api.host or "127.0.0.1"
        self.super_node = f"{self.super_node_ip}:{api.port}"
        self._limiter = RateLimiter(rate_limit) if rate_limit > 0 else None
        self._session: aiohttp.ClientSession | None = None
        self._api: V1Api | None = None

    async def open(self) -> None:
        if self._session is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._api = V1Api(self._session, self.api_url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._api = None

    async def __aenter__(self) -> V1Client:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("V1Client is not open: use 'async with' or await open()")
        return self._session

    @property
    def api(self) -> V1Api:
        if self._api is None:
            raise RuntimeError("V1Client is not open: use 'async with' or await open()")
        return self._api

    async def download(
        self,
        url: str,
        *,
        output: str = "out",
        task_url: str | None = None,
        md5: str | None = None,
        identifier: str | None = None,
        headers: Sequence[str] = (),
    ) -> DownloadResult:
        """Download ``url`` through the supernode as one dfget run; raise :class:`V1Error` otherwise."""
        sign = dfget_sign()
        name = task_file_name(output, sign)
        service = (
            self.uploader.data_dir / f"{name}.service" if self.uploader else self.work_dir / f"dfget-{sign}.tmp"
        )
        run = _Run(dfget_cid(self.ip, sign), name, service, self.work_dir / output)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                result = await self._download(run, url, task_url or url, md5, identifier, headers)
        except TimeoutError as exc:
            await self._report_metrics(run, started, success=False)
            error = V1Error("timeout", f"download of {url} not finished after {self.timeout:g}s")
            error.cid, error.task_id = run.cid, run.task_id
            raise error from exc
        except V1Error as exc:
            await self._report_metrics(run, started, success=False)
            exc.cid, exc.task_id = run.cid, run.task_id
            raise
        finally:
            await run.close()
        await self._report_metrics(run, started, success=True)
        return result

    async def _download(
        self, run: _Run, url: str, task_url: str, md5: str | None, identifier: str | None,
        headers: Sequence[str],
    ) -> DownloadResult:
        run.service.parent.mkdir(parents=True, exist_ok=True)
        run.fd = os.open(run.service, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if self.uploader is not None:
            await self._check_uploader(run)
        await self._register(run, url, task_url, md5, identifier, headers)
        finish = await self._pull_loop(run)
        await self._finish(run, finish)
        return DownloadResult(
            task_id=run.task_id, cid=run.cid, task_file_name=run.task_file_name, register=run.register,
            finish=finish, output=run.output, pieces={rec.piece_num: rec for rec in run.done.values()},
            failures=list(run.failures), pulls=run.pulls,
        )

    async def _uploader_call(self, path: str, headers: Sequence[tuple[str, str]] = ()) -> Answer:
        assert self.uploader is not None
        try:
            answer = await raw_request(
                self.session, "GET", self.uploader.url + path, headers=[("User-Agent", API_USER_AGENT), *headers]
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise V1Error("uploader", f"GET {path} on the local uploader failed: {exc!r}") from exc
        if answer.status != 200:
            raise V1Error("uploader", f"GET {path} on the local uploader: {answer.brief()}")
        return answer

    async def _check_uploader(self, run: _Run) -> None:
        """dfget pings its uploader and registers the task file with it before registering (§14.6)."""
        assert self.uploader is not None
        await self._uploader_call("/server/ping")
        answer = await self._uploader_call(
            f"/check/{run.task_file_name}",
            [("Datadir", str(self.uploader.data_dir)), ("Totallimit", "0")],
        )
        if answer.text != f"{run.task_file_name}@{DFGET_VERSION}":
            raise V1Error("uploader", f"unexpected /check answer {answer.text!r}")

    async def _api_call(self, stage: str, call: Awaitable[Answer]) -> Answer:
        try:
            return await call
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise V1Error(stage, f"transport error talking to the supernode: {exc!r}") from exc

    async def _register(
        self, run: _Run, url: str, task_url: str, md5: str | None, identifier: str | None,
        headers: Sequence[str],
    ) -> None:
        body = register_body(
            super_node_ip=self.super_node_ip, raw_url=url, task_url=task_url, cid=run.cid, ip=self.ip,
            host_name=self.host_name, port=self.uploader.port if self.uploader else 0,
            path=peer_path(run.task_file_name), md5=md5, identifier=identifier, headers=headers,
            pattern="p2p" if self.uploader else "cdn",
        )
        answer = await self._api_call("register", self.api.register(body))
        if answer.status != 200:
            raise V1Error("register", answer.brief(), status=answer.status, code=answer.code, answer=answer)
        if answer.code != CODE_OK:
            raise V1Error(
                "register", f"code {answer.code}: {answer.msg}", status=200, code=answer.code, answer=answer
            )
        data = answer.data
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("taskId"), str)
            or not isinstance(data.get("pieceSize"), int)
            or not isinstance(data.get("fileLength"), int)
            or data["pieceSize"] <= pieces.WRAP_SIZE
        ):
            raise V1Error("register", f"malformed register data: {answer.brief()}", status=200, code=CODE_OK)
        if data.get("cdnSource") == "source":
            raise V1Error("register", "source-CDN mode (cdnSource=source) is not supported by this harness")
        run.task_id, run.register = data["taskId"], data

    async def _pull(self, run: _Run, item: _Item) -> Answer:
        run.pulls += 1
        answer = await self._api_call("pull", self.api.pull_piece_task(
            src_cid=run.cid, dst_cid=item.dst_cid, piece_range=item.range, result=item.result,
            status=item.status, task_id=run.task_id,
        ))
        if answer.status != 200:
            raise V1Error("pull", answer.brief(), status=answer.status, code=answer.code, answer=answer)
        return answer

    async def _pull_loop(self, run: _Run) -> dict[str, Any]:
        """dfget's ``P2PDownloader.run`` until a 600; returns the 600 ``data``.

        As in dfget, a success is not pulled on its own while more results are queued or more than
        two pieces are running (a later pull carries the news), and the latest pull is re-sent after
        two quiet seconds.
        """
        latest = _Item(STATUS_START, RESULT_INVALID)
        run.queue.put_nowait(latest)
        wait = WAIT_FIRST
        while True:
            try:
                got: _Item | V1Error | None = await asyncio.wait_for(run.queue.get(), QUEUE_POLL)
            except TimeoutError:
                got = None
            if isinstance(got, V1Error):
                raise got
            if got is not None:
                latest = got
                if got.result == RESULT_SEMISUC and (not run.queue.empty() or len(run.running) > 2):
                    continue
            answer = await self._pull(run, latest)
            code = answer.code
            if code == CODE_PEER_WAIT:
                run.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.wake.wait(), wait)
                wait = min(wait * 2, WAIT_MAX)
                if run.queue.empty():
                    run.queue.put_nowait(latest)
                continue
            wait = WAIT_FIRST
            if code == CODE_PEER_CONTINUE:
                await self._start_pieces(run, answer)
            elif code == CODE_PEER_FINISH:
                if not isinstance(answer.data, dict):
                    raise V1Error("pull", f"600 without data: {answer.brief()}", status=200, code=code)
                return answer.data
            else:
                raise V1Error("pull", f"code {code}: {answer.msg}", status=200, code=code, answer=answer)

    async def _start_pieces(self, run: _Run, answer: Answer) -> None:
        """601: one task per piece not yet held or running; pieces already held are reported again."""
        data = answer.data
        if data is not None and not isinstance(data, list):
            raise V1Error("pull", f"601 data is not a list: {answer.brief()}", status=200, code=CODE_PEER_CONTINUE)
        if self.uploader is not None:
            rate = self.rate_limit or DEFAULT_RATE
            await self._uploader_call(f"/rate/{run.task_file_name}", [("Ratelimit", str(rate))])
        for task in map(PieceTask.from_json, data or []):
            held = run.done.get(task.range)
            if held is not None:
                run.queue.put_nowait(_Item(STATUS_RUNNING, RESULT_SEMISUC, task.range, held.dst_cid))
            elif task.range not in run.running:
                run.running[task.range] = asyncio.create_task(self._piece(run, task))

    async def _piece(self, run: _Run, task: PieceTask) -> None:
        """One of dfget's PowerClient goroutines; always leaves exactly one result in the queue."""
        try:
            item = await self._piece_outcome(run, task)
        finally:
            run.running.pop(task.range, None)
        run.queue.put_nowait(item)
        run.wake.set()

    async def _piece_outcome(self, run: _Run, task: PieceTask) -> _Item | V1Error:
        try:
            failure = await self._fetch_piece(run, task)
            if failure is None:
                await self._report_success(run, task)
        except V1Error as exc:
            return exc
        if failure is None:
            return _Item(STATUS_RUNNING, RESULT_SEMISUC, task.range, task.cid)
        run.failures.append(failure)
        if failure.error_type:
            with contextlib.suppress(V1Error):
                await self._api_call("report", self.api.report_piece_error(
                    task_id=run.task_id, piece_range=task.range, src_cid=run.cid, dst_cid=task.cid,
                    dst_ip=task.peer_ip, real_md5=failure.real_md5, expected_md5=failure.expected_md5,
                    error_type=failure.error_type,
                ))
        await asyncio.sleep(0.02)  # dfget queues the failed piece 20 ms later
        return _Item(STATUS_RUNNING, RESULT_FAIL, task.range, task.cid)

    async def _fetch_piece(self, run: _Run, task: PieceTask) -> PieceFailure | None:
        """Download, check and store one piece; ``None`` on success.

        The piece is written before it is reported (dfget queues the report first and writes in
        another goroutine): this way the supernode never sends another peer to us for bytes that are
        not on disk yet.
        """
        def failed(reason: str, **kw: str) -> PieceFailure:
            return PieceFailure(task.piece_num, task.range, task.cid, reason, **kw)

        url = f"http://{task.peer_ip}:{task.peer_port}{task.path}"
        headers = [
            ("User-Agent", PIECE_USER_AGENT), ("Range", f"bytes={task.range}"),
            ("Piecenum", str(task.piece_num)), ("Piecesize", str(task.piece_size)),
        ]
        timeout = aiohttp.ClientTimeout(total=task.piece_size / MIN_RATE + 10)
        try:
            async with self.session.get(
                URL(url, encoded=True), headers=headers, timeout=timeout,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            ) as resp:
                if resp.status == 416:
                    return failed("HTTP 416 range not satisfiable")
                if not 200 <= resp.status < 300:
                    return failed(
                        f"HTTP {resp.status} from {url}",
                        error_type="FILE_NOT_EXIST" if resp.status == 404 else "",
                    )
                body = await self._read_limited(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return failed(f"transport error from {url}: {exc!r}")
        expected = task.piece_md5.partition(":")[0]
        real = hashlib.md5(body).hexdigest()
        if expected and real != expected:
            return failed("piece md5 mismatch", error_type="FILE_MD5_NOT_MATCH", real_md5=real, expected_md5=expected)
        try:
            data = pieces.unwrap(body)
        except ValueError as exc:
            return failed(f"bad piece frame: {exc}")
        if len(data) > task.piece_size - pieces.WRAP_SIZE:
            return failed(f"piece holds {len(data)} data bytes, more than pieceSize {task.piece_size} allows")
        await asyncio.to_thread(os.pwrite, run.fd, data, task.piece_num * (task.piece_size - pieces.WRAP_SIZE))
        run.done[task.range] = PieceRecord(
            task.piece_num, task.range, task.cid, task.peer_ip, task.peer_port, task.path,
            pieces.piece_md5_text(real, len(body)), len(body),
        )
        return None

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            if self._limiter is not None:
                await self._limiter.take(len(chunk))
            buf += chunk
        return bytes(buf)

    async def _report_success(self, run: _Run, task: PieceTask) -> None:
        """``/peer/piece/suc``, retried up to 3 times like dfget; anything but 611 in the end is an error."""
        answer: Answer | None = None
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(random.uniform(0.05, 0.55))
            with contextlib.suppress(V1Error):
                answer = await self._api_call("report", self.api.report_piece_suc(
                    task_id=run.task_id, cid=run.cid, dst_cid=task.cid, piece_range=task.range,
                ))
                if answer.status == 200 and answer.code == CODE_PIECE_REPORTED:
                    return
        got = answer.brief() if answer else "no answer"
        raise V1Error(
            "report", f"/peer/piece/suc for {task.range} from {task.cid}: expected code 611, got {got}",
            status=answer.status if answer else None, code=answer.code if answer else None, answer=answer,
        )

    async def _finish(self, run: _Run, finish: dict[str, Any]) -> None:
        """Check the whole-file MD5 announced by the 600, publish the output, tell the uploader."""
        expected = finish.get("md5") or ""
        if expected:
            real = await asyncio.to_thread(_file_md5, run.service)
            if real != expected:
                raise V1Error("finish", f"file md5 {real} differs from {expected} announced by the 600 answer")
        run.output.unlink(missing_ok=True)
        if self.uploader is None:
            os.replace(run.service, run.output)
        else:
            try:
                os.link(run.service, run.output)
            except OSError:
                shutil.copyfile(run.service, run.output)
            await self._uploader_call("/client/finish?" + raw_query([
                ("taskFileName", run.task_file_name), ("taskID", run.task_id), ("cid", run.cid),
                ("superNode", self.super_node),
            ]))

    async def _report_metrics(self, run: _Run, started: float, *, success: bool) -> None:
        """``POST /task/metrics``, sent twice as dfget 1.0.6 does; a failed run is reported best-effort.

        Nothing is reported when registration never succeeded, as in dfget. A failed run reports
        reason 1003 (download error, not back-sourced: this harness never goes to the source).
        """
        if not run.task_id:
            return
        body = {
            "IP": self.ip, "backsourceReason": "0" if success else "1003", "cID": run.cid,
            "duration": round(time.monotonic() - started, 9), "fileLength": int(run.register["fileLength"]),
            "port": self.uploader.port if self.uploader else 0, "success": success, "taskId": run.task_id,
        }
        for _ in range(2):
            try:
                answer = await self._api_call("metrics", self.api.task_metrics(body))
            except V1Error:
                if success:
                    raise
                return
            if success and answer.status != 200:
                raise V1Error("metrics", f"POST /task/metrics: {answer.brief()}", status=answer.status)


UploaderFactory = Callable[..., Awaitable[V1Uploader]]
"""Type of the ``make_uploader`` fixture."""
ClientFactory = Callable[..., Awaitable[V1Client]]
"""Type of the ``make_client`` fixture."""


# ---------------------------------------------------------------------------------------------------
# Origin


@dataclass(frozen=True)
class OriginRequest:
    method: str
    path: str
    headers: dict[str, str]


class OriginServer:
    """The source of the files: an HTTP server with validators and ranges that counts what it sends.

    Put content in ``files`` (path -> bytes). ``bytes_sent`` counts body bytes written per path;
    ``full_transfers`` counts responses that delivered a whole file, so a test can tell a length
    probe that was cut short from a second download of the source.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.files: dict[str, bytes] = {}
        self.last_modified = datetime.now(UTC).replace(microsecond=0)
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.full_transfers: Counter[str] = Counter()
        self.log: list[OriginRequest] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _not_modified(self, request: web.Request, etag: str) -> bool:
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {tag.strip() for tag in if_none_match.split(",")}
            return etag in tags or "*" in tags
        since = request.headers.get("If-Modified-Since")
        if since is None:
            return False
        try:
            return self.last_modified <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False

    @staticmethod
    def _byte_range(header: str, size: int) -> tuple[int, int] | None:
        """``(first, last)`` of a single ``bytes=`` range; ``None`` when it cannot be satisfied."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if match is None or match.groups() == ("", ""):
            return None
        first_text, last_text = match.groups()
        if first_text == "":
            first, last = max(size - int(last_text), 0), size - 1
        else:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        return (first, last) if first <= last else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        self.log.append(OriginRequest(request.method, path, dict(request.headers)))
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404, text="not found\n")
        if request.method not in {"GET", "HEAD"}:
            return web.Response(status=405, text="method not allowed\n")
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        headers = {
            "ETag": etag, "Last-Modified": format_datetime(self.last_modified, usegmt=True),
            "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
        }
        if self._not_modified(request, etag):
            return web.Response(status=304, headers=headers)
        status, first, last = 200, 0, len(data) - 1
        if "Range" in request.headers:
            byte_range = self._byte_range(request.headers["Range"], len(data))
            if byte_range is None:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return web.Response(status=416, headers=headers)
            status, (first, last) = 206, byte_range
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = last - first + 1
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            for pos in range(first, last + 1, CHUNK):
                chunk = data[pos:min(pos + CHUNK, last + 1)]
                await resp.write(chunk)
                self.bytes_sent[path] += len(chunk)
            await resp.write_eof()
        except ConnectionError:
            return resp
        if first == 0 and last == len(data) - 1:
            self.full_transfers[path] += 1
        return resp


# ---------------------------------------------------------------------------------------------------
# The supernode under test


class SupernodeStartError(RuntimeError):
    """The supernode did not answer ``/_ping`` in time; the message carries its stderr."""


class SupernodeProcess:
    """``python -m supernode`` as a child process on fixed ports, with its output kept in files.

    Ports and home stay the same across :meth:`restart`, so a test can check what survives a restart
    (the on-disk CDN cache) and what must not (in-memory tasks and peers).
    """

    def __init__(self, home: Path, log_dir: Path, *, api_port: int, cdn_port: int,
                 advertise_ip: str = "127.0.0.1", extra_args: Sequence[str] = ()) -> None:
        self.home = home
        self.extra_args = list(extra_args)  # more command-line options, e.g. ("--cdn-task-limit", "1")
        self.log_dir = log_dir
        self.api_port = api_port
        self.cdn_port = cdn_port
        self.advertise_ip = advertise_ip
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = log_dir / "supernode.stderr"
        self.stdout_path = log_dir / "supernode.stdout"
        self._logs: list[IO[bytes]] = []

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "supernode", "--home-dir", str(self.home), "--port", str(self.api_port),
            "--download-port", str(self.cdn_port), "--advertise-ip", self.advertise_ip, *self.extra_args,
        ]

    def stderr_text(self, tail: int = 6000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    async def start(self, ready_within: float = 20.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._logs = [self.stdout_path.open("ab"), self.stderr_path.open("ab")]
        self.proc = await asyncio.to_thread(
            subprocess.Popen, self.argv(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self._logs[0], stderr=self._logs[1],
        )
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    answer = await raw_request(session, "GET", f"{self.api_url}/_ping", time_limit=1.0)
                    if answer.status == 200:
                        return
                await asyncio.sleep(0.1)
        code = self.proc.poll()
        await self.stop()
        state = f"exited with code {code}" if code is not None else f"no /_ping answer within {ready_within:g}s"
        raise SupernodeStartError(
            f"supernode {state}: {' '.join(self.argv())}\n--- stderr ({self.stderr_path}) ---\n{self.stderr_text()}"
        )

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = await asyncio.to_thread(proc.wait)
        for log in self._logs:
            log.close()
        self._logs = []
        return code

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def running(node: SupernodeProcess) -> AsyncIterator[SupernodeProcess]:
    """Start ``node`` (a failed start fails the test with its stderr), stop it at the end and print its stderr tail,
    so that it shows up in the report of a failed test."""
    try:
        await node.start()
    except SupernodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        code = await node.stop()
        print(f"supernode exited with {code}; stderr tail ({node.stderr_path}):\n{node.stderr_text(3000)}")
