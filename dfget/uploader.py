"""``dfget server``: the node's uploader, serving pieces of finished and unfinished downloads (spec §3.9).

One long-lived aiohttp process per work home. dfget runs on the node register their task files
with it (``/check``) before they download, so other peers can fetch pieces as soon as they are on
disk, and tell it when they are done (``/client/finish``), so it knows which supernode to notify
when it stops serving them. Pieces are rebuilt from the raw ``{name}.service`` file with the v1
framing and streamed in chunks, paced by one bucket shared by every upload (``--totallimit``).

It serves only regular files directly inside its data directory whose task names it was told about,
is idle after ``--alivetime`` without traffic (while no local download is running), tells the
supernode ``/peer/service/down`` for every finished task when it stops, and deletes files that
expired (``--expiretime``) or that it does not know. The process around it is :mod:`dfget.daemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from aiohttp.typedefs import Handler

from dfwire import pieces

from .config import ServerConfig
from .locator import parse_node
from .protocol import PEER_PORT_MAX, PEER_PORT_MIN, PROTOCOL_VERSION
from .ratelimit import TokenBucket
from .supernode_api import ApiError, SupernodeApi

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
SERVICE_SUFFIX = ".service"
PORT_ATTEMPTS = 10
_GO_INT = re.compile(r"-?[0-9]+")


class RangeNotSatisfiable(ValueError):
    pass


@dataclass(frozen=True)
class UploadParams:
    start: int  # first byte of the range, in wrapped coordinates
    length: int  # bytes asked for (head and tail included when padded)
    piece_num: int
    piece_size: int


def _go_int(text: str | None, what: str) -> int:
    if text is None or not _GO_INT.fullmatch(text.strip()):
        raise ValueError(f"invalid {what}: {text!r}")
    return int(text)


def parse_upload_params(range_value: str | None, piece_num: str | None, piece_size: str | None) -> UploadParams:
    """Go's ``parseParams``: ``Range: bytes=S-E`` with exactly one ``=`` and one ``-``, and E > S."""
    num = _go_int(piece_num, "pieceNum")
    size = _go_int(piece_size, "pieceSize")
    value = range_value or ""
    if value.count("=") != 1 or value.split("=")[1].count("-") != 1:
        raise ValueError(f"invalid range: {value!r}")
    start_text, end_text = value.split("=")[1].split("-")
    start, end = _go_int(start_text, "range start"), _go_int(end_text, "range end")
    if end <= start or num < 0 or size <= pieces.WRAP_SIZE:
        raise ValueError(f"invalid range {value!r} for piece {num} of size {size}")
    return UploadParams(start, end - start + 1, num, size)


def amend_range(size: int, padded: bool, params: UploadParams) -> tuple[int, int]:
    """``(offset in the raw file, bytes on the wire)``, as Go's ``amendRange`` (spec §3.10).

    Piece n of a padded (wrapped) download starts at raw offset ``S - 5n``; a range past the end of
    the file shrinks to what the file holds, down to an empty 5-byte piece.
    """
    pad = pieces.WRAP_SIZE if padded else 0
    start = params.start - params.piece_num * pad
    length = params.length
    if length < pad or start < 0 or start > size or (start == size and not padded):
        raise RangeNotSatisfiable(f"range {params.start}+{params.length} beyond {size} bytes")
    if start + length - pad > size:
        length = size - start + pad
    return start, length


def valid_task_name(name: str) -> bool:
    """Task file names are single path components: nothing can point outside the data directory."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


@dataclass
class UploadTask:
    """What the uploader knows of one task file (``/check`` creates it, ``/client/finish`` completes it)."""

    rate_limit: int = 0
    finished: bool = False
    task_id: str = ""
    cid: str = ""
    super_node: str = ""
    last_served: float = 0.0


def _octets(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, body=text.encode(), content_type="application/octet-stream")


class Uploader:
    """The uploader's state and handlers; :func:`serve` runs it as a process."""

    def __init__(self, config: ServerConfig, api: SupernodeApi | None = None) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.tasks: dict[str, UploadTask] = {}
        self.bucket = TokenBucket(config.total_limit)
        self.last_activity = time.monotonic()
        self.port = 0
        self._delegated_runs = 0  # downloads the daemon is running for dfget processes (dfget.control)
        self._api = api

    # ------------------------------------------------------------------ the app

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._activity])
        app.router.add_get("/peer/file/{name:.*}", self.upload)
        app.router.add_get("/rate/{name:.*}", self.rate)
        app.router.add_get("/check/{name:.*}", self.check)
        app.router.add_get("/client/finish", self.finish)
        app.router.add_get("/server/ping", self.ping)
        return app

    @web.middleware
    async def _activity(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/server/ping":
            self.last_activity = time.monotonic()
        return await handler(request)

    def service_file(self, name: str) -> Path:
        return self.data_dir / f"{name}{SERVICE_SUFFIX}"

    def _open_service_file(self, name: str) -> BinaryIO:
        """The task's service file, if it is a regular file and not a symbolic link (which could lead out)."""
        fd = os.open(self.service_file(name), os.O_RDONLY | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(name)
        return os.fdopen(fd, "rb")

    async def ping(self, _: web.Request) -> web.Response:
        return _octets("success")

    async def check(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not valid_task_name(name):
            return _octets(f"invalid task file name: {name!r}", 400)
        data_dir = request.headers.get("dataDir", "").strip()
        if data_dir and await asyncio.to_thread(Path(data_dir).resolve) != self.data_dir:
            return _octets(f"this uploader serves {self.data_dir}, not {data_dir}", 400)
        with contextlib.suppress(ValueError):
            total = _go_int(request.headers.get("totalLimit"), "totalLimit")
            if total > 0:
                self.bucket.rate = total
        self.tasks.setdefault(name, UploadTask())
        log.info("task %s registered", name)
        return _octets(f"{name}@{PROTOCOL_VERSION}")

    async def rate(self, request: web.Request) -> web.Response:
        """A download's share of the node's total limit: ``ceil(N * total / sum of running rates)``."""
        name = request.match_info["name"]
        try:
            client_rate = _go_int(request.headers.get("rateLimit"), "rateLimit")
        except ValueError as exc:
            return _octets(str(exc), 400)
        task = self.tasks.get(name)
        if task is not None:
            task.rate_limit = client_rate
        total = self.bucket.rate
        running = sum(t.rate_limit for t in self.tasks.values() if not t.finished)
        if total > 0 and running > total:
            client_rate = math.ceil(client_rate * total / running)
        return _octets(str(client_rate))

    async def finish(self, request: web.Request) -> web.Response:
        query = request.query
        name = query.get("taskFileName", "")
        params = {"task_id": query.get("taskID") or query.get("taskId") or "", "cid": query.get("cid", ""),
                  "super_node": query.get("superNode", "")}
        if not valid_task_name(name) or not all(params.values()):
            return _octets("invalid params", 400)
        task = self.tasks.setdefault(name, UploadTask())
        task.finished = True
        task.task_id, task.cid, task.super_node = params["task_id"], params["cid"], params["super_node"]
        log.info("task %s finished (task %s, cid %s, supernode %s)", name, task.task_id, task.cid, task.super_node)
        return _octets("success")

    async def upload(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            params = parse_upload_params(request.headers.get("Range"), request.headers.get("pieceNum"),
                                         request.headers.get("pieceSize"))
        except ValueError as exc:
            return _octets(str(exc), 400)
        task = self.tasks.get(name) if valid_task_name(name) else None
        if task is None:
            return _octets(f"failed to get taskPath: {name}", 500)
        try:
            handle = await asyncio.to_thread(self._open_service_file, name)
        except FileNotFoundError:
            return _octets(f"no such file: {name}", 404)
        except PermissionError:
            return _octets(f"permission denied: {name}", 403)
        except OSError as exc:
            return _octets(f"cannot open {name}: {exc.strerror}", 500)
        with handle:
            size = os.fstat(handle.fileno()).st_size
            padded = request.headers.get("cdnSource", "") != "source"
            try:
                offset, length = amend_range(size, padded, params)
            except RangeNotSatisfiable:
                return _octets("range not satisfiable", 416)
            task.last_served = time.time()
            resp = web.StreamResponse(status=206, headers={"Content-Type": "application/octet-stream"})
            resp.content_length = length
            await resp.prepare(request)
            data_len = length - (pieces.WRAP_SIZE if padded else 0)
            with contextlib.suppress(ConnectionError):
                if padded:
                    await resp.write(pieces.piece_head(data_len, params.piece_size))
                sent = 0
                while sent < data_len:
                    block = await asyncio.to_thread(os.pread, handle.fileno(), min(CHUNK, data_len - sent),
                                                    offset + sent)
                    if not block:
                        log.warning("%s shrank while serving piece %d", name, params.piece_num)
                        return resp  # the peer sees a short body and fetches the piece elsewhere
                    await self.bucket.acquire(len(block))
                    await resp.write(block)
                    sent += len(block)
                if padded:
                    await resp.write(bytes([pieces.TAIL_BYTE]))
                await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ lifecycle

    def local_download_running(self, now: float) -> bool:
        """An unfinished task whose file was written recently: a download on this node is still going."""
        for name, task in self.tasks.items():
            if task.finished:
                continue
            with contextlib.suppress(OSError):
                if now - self.service_file(name).stat().st_mtime < self.config.alive_time:
                    return True
        return False

    def idle(self) -> bool:
        return (time.monotonic() - self.last_activity >= self.config.alive_time and not self._delegated_runs
                and not self.local_download_running(time.time()))

    def delegated_run_started(self) -> None:
        self._delegated_runs += 1

    def delegated_run_ended(self) -> None:
        """The idle time counts from the end of the last run, which may not have used the uploader at all."""
        self._delegated_runs -= 1
        self.last_activity = time.monotonic()

    async def service_down(self, name: str, task: UploadTask) -> None:
        if self._api is None or not task.finished or not task.super_node:
            return
        try:
            node = parse_node(task.super_node)
            answer = await self._api.service_down(node, task_id=task.task_id, cid=task.cid)
        except (ValueError, ApiError) as exc:
            log.warning("service down for %s failed: %s", name, exc)
            return
        log.info("service down for %s: %s", name, answer.describe())

    def _remove(self, name: str) -> None:
        for path in (self.service_file(name), self.data_dir / name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def collect_garbage(self) -> None:
        """Delete expired task files (after telling the supernode), unknown files and sub-directories."""
        now = time.time()
        expired: list[str] = []
        for entry in await asyncio.to_thread(lambda: list(os.scandir(self.data_dir))):
            name = entry.name.removesuffix(SERVICE_SUFFIX)
            task = self.tasks.get(name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    await asyncio.to_thread(shutil.rmtree, entry.path, True)
                    log.info("gc: removed directory %s", entry.path)
                elif task is None:
                    os.unlink(entry.path)
                    log.info("gc: removed unknown file %s", entry.path)
                elif now - max(entry.stat(follow_symlinks=False).st_mtime, task.last_served) \
                        > self.config.expire_time and name not in expired:
                    expired.append(name)
            except OSError as exc:
                log.warning("gc: %s: %s", entry.path, exc)
        for name in expired:
            task = self.tasks.pop(name)
            await self.service_down(name, task)
            self._remove(name)
            log.info("gc: expired %s", name)

    async def shut_down(self) -> None:
        """Tell the supernodes this node stops serving its finished tasks, and delete the task files."""
        tasks, self.tasks = self.tasks, {}
        await asyncio.gather(*(self.service_down(name, task) for name, task in tasks.items()))
        for name in tasks:
            self._remove(name)


def generated_ports(now: float) -> list[int]:
    """Go's choice: ``(unixSeconds/300) % 50000 + 15000 + attempt``, so a node keeps its port for 5 minutes."""
    base = int(now) // 300 % 50000 + PEER_PORT_MIN
    return [min(base + attempt, PEER_PORT_MAX) for attempt in range(PORT_ATTEMPTS)]


def write_meta(path: Path, port: int) -> None:
    """``{"servicePort": N}`` as Go dfget writes it, plus our pid so tools can stop the uploader."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps({"servicePort": port, "pid": os.getpid() if port else 0}))
    os.replace(temp, path)


def read_meta(path: Path) -> tuple[int, int]:
    """``(servicePort, pid)`` of the meta file; ``(0, 0)`` when it is missing or unreadable."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0, 0
    if not isinstance(meta, dict):
        return 0, 0
    port, pid = meta.get("servicePort"), meta.get("pid")
    return (port if isinstance(port, int) else 0), (pid if isinstance(pid, int) else 0)
