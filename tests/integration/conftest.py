"""An in-process supernode and a scriptable origin, for the CDN integration tests.

The origin is a real aiohttp server on 127.0.0.1 that speaks enough HTTP for a CDN: ``ETag`` and
``Last-Modified``, ``Range``/206/416, ``If-None-Match``/``If-Modified-Since``/304 and ``If-Range``. It
records every request per path (headers, answered status, body bytes written) and can be told to
misbehave per path (see :class:`Behaviour`). The supernode is the real :class:`supernode.node.Supernode`
on free loopback ports with a temporary home; tests drive it only through its HTTP ports, the way
dfget does. Everything started here is stopped at teardown, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dfwire import pieces
from supernode.config import Settings
from supernode.node import Supernode
from tests.v1proto import free_port

MIB = 1024 * 1024
PIECE_SIZE = pieces.DEFAULT_PIECE_SIZE
PER_PIECE = pieces.data_size(PIECE_SIZE)
WAIT = 10.0  # upper bound of every wait in these tests, seconds

# ---------------------------------------------------------------------------------------------------
# Content helpers


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def pattern_bytes(length: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-per-piece content (so a misplaced piece changes every MD5)."""
    block = hashlib.sha256(f"origin-{seed}".encode()).digest() * 64  # 2 KiB
    out = bytearray()
    for n in itertools.count():
        if len(out) >= length:
            break
        out += n.to_bytes(8, "big") + block
    return bytes(out[:length])


def wrapped_file(data: bytes, piece_size: int = PIECE_SIZE) -> bytes:
    """The CDN data file for ``data``: every piece framed and placed back to back (§3.10)."""
    per = pieces.data_size(piece_size)
    chunks = [data[i:i + per] for i in range(0, len(data), per)] or [b""]
    return b"".join(pieces.wrap(chunk, piece_size) for chunk in chunks)


def piece_md5s(data: bytes, piece_size: int = PIECE_SIZE) -> list[str]:
    per = pieces.data_size(piece_size)
    chunks = [data[i:i + per] for i in range(0, len(data), per)] or [b""]
    return [pieces.wrapped_md5(chunk, piece_size) for chunk in chunks]


# ---------------------------------------------------------------------------------------------------
# The origin


@dataclass
class Behaviour:
    """How the origin misbehaves for one path; the default is a well-behaved static file server."""

    status: int | None = None  # answer every request with this status and a short text body
    ignore_conditional: bool = False  # If-None-Match / If-Modified-Since are not looked at (always 200)
    ignore_range: bool = False  # Range (and If-Range) are not looked at
    ignore_if_range: bool = False  # Range is honoured even when If-Range no longer matches
    etag: bool = True  # send ETag
    last_modified: bool = True  # send Last-Modified
    header_gate: asyncio.Event | None = None  # the status line waits for this event (bounded by WAIT * 3)
    header_delay: float = 0.0  # seconds before the status line
    body_gate_at: int | None = None  # after this many body bytes of a response ...
    body_gate: asyncio.Event | None = None  # ... wait for this event (bounded by WAIT * 3)
    close_after: int | None = None  # cut the connection after this many body bytes (Content-Length stays full)
    short_by: int = 0  # end the response this many bytes early, leaving the connection open
    chunked: bool = False  # no Content-Length: the length is unknown until the body ends
    chunk_size: int = 64 * 1024
    chunk_delay: float = 0.0  # pause between chunks


@dataclass
class Hit:
    """One request the origin received and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0
    completed: bool = False  # the whole announced body was written

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Resource:
    data: bytes
    etag: str
    modified: datetime

    @property
    def last_modified(self) -> str:
        return format_datetime(self.modified, usegmt=True)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single ``bytes=`` range; ``None`` if unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise ValueError(value)
    first, _, last = spec.strip().partition("-")
    if not first:
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class Origin:
    """A static HTTP origin on 127.0.0.1 with per-path request logs and misbehaviour switches."""

    _epoch = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.hits: dict[str, list[Hit]] = {}
        self._versions = itertools.count(1)
        self._gates: list[asyncio.Event] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- content

    def put(self, path: str, data: bytes) -> Resource:
        """Publish ``data`` at ``path``; every call gives a new ETag and a later Last-Modified."""
        version = next(self._versions)
        resource = Resource(data, f'"{md5_hex(data)[:16]}-v{version}"', self._epoch + timedelta(seconds=version))
        self.resources[path] = resource
        return resource

    def misbehave(self, path: str, **switches: Any) -> Behaviour:
        """Replace the behaviour of ``path`` (switches are :class:`Behaviour` fields)."""
        behaviour = Behaviour(**switches)
        self.behaviour[path] = behaviour
        self._gates.extend(g for g in (behaviour.header_gate, behaviour.body_gate) if g is not None)
        return behaviour

    def behave(self, path: str) -> None:
        self.behaviour.pop(path, None)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- counters

    def requests(self, path: str) -> list[Hit]:
        return list(self.hits.get(path, []))

    def body_bytes(self, path: str) -> int:
        return sum(hit.body_bytes for hit in self.hits.get(path, []))

    def describe(self, path: str) -> str:
        return "; ".join(f"{h.status} {h.body_bytes}B {({k: v for k, v in h.headers.items() if k.startswith('If')})}"
                         f" range={h.header('Range')}" for h in self.hits.get(path, []))

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for gate in self._gates:  # let every parked handler finish
            gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        hit = Hit(request.method, path, dict(request.headers))
        self.hits.setdefault(path, []).append(hit)
        b = self.behaviour.get(path, Behaviour())
        if b.header_gate is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(b.header_gate.wait(), WAIT * 3)
        if b.header_delay:
            await asyncio.sleep(b.header_delay)
        resource = self.resources.get(path)
        if b.status is not None or resource is None:
            hit.status = b.status if b.status is not None else 404
            hit.completed = True
            return web.Response(status=hit.status, text=f"origin says {hit.status}\n")
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if b.etag:
            headers["ETag"] = resource.etag
        if b.last_modified:
            headers["Last-Modified"] = resource.last_modified
        if not b.ignore_conditional and self._not_modified(request, resource, b):
            hit.status = 304
            hit.completed = True
            return web.Response(status=304, headers=headers)
        size = len(resource.data)
        start, end, status = 0, size - 1, 200
        range_value = request.headers.get("Range")
        if range_value and not b.ignore_range and self._if_range_holds(request, resource, b):
            try:
                span = _parse_range(range_value, size)
            except ValueError:
                span = (0, size - 1)
            if span is None:
                hit.status = 416
                hit.completed = True
                return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        hit.status = status
        response = web.StreamResponse(status=status, headers=headers)
        if not b.chunked:
            response.content_length = end - start + 1
        try:
            await response.prepare(request)
        except ConnectionError:  # the supernode gave up waiting for the status line
            return response
        await self._send(request, response, resource.data, start, end + 1 - b.short_by, b, hit)
        return response

    @staticmethod
    def _not_modified(request: web.Request, resource: Resource, b: Behaviour) -> bool:
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            return b.etag and resource.etag in [tag.strip() for tag in if_none_match.split(",")]
        since = request.headers.get("If-Modified-Since")
        if since is None or not b.last_modified:
            return False
        try:
            return resource.modified <= parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False

    @staticmethod
    def _if_range_holds(request: web.Request, resource: Resource, b: Behaviour) -> bool:
        if_range = request.headers.get("If-Range")
        if if_range is None or b.ignore_if_range:
            return True
        if if_range.startswith('"'):
            return b.etag and if_range == resource.etag
        return b.last_modified and if_range == resource.last_modified

    async def _send(self, request: web.Request, response: web.StreamResponse, data: bytes, start: int, stop: int,
                    b: Behaviour, hit: Hit) -> None:
        offset = start
        gated = False
        try:
            while True:
                if b.body_gate is not None and not gated and hit.body_bytes == b.body_gate_at:
                    gated = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(b.body_gate.wait(), WAIT * 3)
                if b.close_after is not None and hit.body_bytes >= b.close_after:
                    assert request.transport is not None
                    request.transport.close()
                    return
                if offset >= stop:
                    break
                limit = stop
                for mark in (b.body_gate_at, b.close_after):
                    if mark is not None and mark > hit.body_bytes:
                        limit = min(limit, offset + mark - hit.body_bytes)
                n = min(b.chunk_size, limit - offset)
                await response.write(data[offset:offset + n])
                offset += n
                hit.body_bytes += n
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            hit.completed = b.short_by == 0
        except (ConnectionError, RuntimeError):  # the supernode went away mid-body
            return


# ---------------------------------------------------------------------------------------------------
# The supernode and a dfget-shaped client


class Node:
    """One in-process supernode; ``api`` and ``cdn`` are its two base URLs."""

    def __init__(self, home: Path, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "home_dir": home, "listen_host": "127.0.0.1", "advertise_ip": "127.0.0.1",
            "port": free_port("127.0.0.1"), "download_port": free_port("127.0.0.1"),
            "gc_initial_delay": 3600.0,  # no GC sweeps the cache between the steps of a test
            "source_probe_timeout": 3.0, "source_read_timeout": 5.0,
        }
        values.update(overrides)
        self.settings = Settings(**values)
        self.node = Supernode(self.settings)
        self.home = home
        self.running = False

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.settings.download_port}"

    async def start(self) -> None:
        await self.node.start()
        self.running = True

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self.node.stop()

    def data_path(self, task_id: str) -> Path:
        return self.home / "repo" / "download" / task_id[:3] / task_id


class Peer:
    """A dfget double: registers, pulls piece tasks and fetches pieces over HTTP, nothing more."""

    _serial = itertools.count(1)

    def __init__(self, session: aiohttp.ClientSession, node: Node, ip: str = "127.0.0.2") -> None:
        self.session = session
        self.node = node
        self.ip = ip
        serial = next(self._serial)
        self.cid = f"{ip}-{40000 + serial}-{time.time():.3f}"
        self.port = 15000 + serial

    async def register(self, url: str, *, md5: str | None = None, identifier: str | None = None,
                       headers: Iterable[str] = ()) -> dict[str, Any]:
        """POST /peer/registry as dfget 1.0.6 does; returns the ResultInfo (HTTP must be 200)."""
        body: dict[str, Any] = {
            "superNodeIp": "127.0.0.1", "rawUrl": url, "taskUrl": url, "cid": self.cid, "ip": self.ip,
            "hostName": f"host-{self.ip}", "port": self.port, "path": f"/peer/file/out-{self.cid}",
            "version": "1.0.6",
        }
        if md5:
            body["md5"] = md5
        elif identifier:
            body["identifier"] = identifier
        if headers:
            body["headers"] = list(headers)
        body["pattern"] = "p2p"
        async with self.session.post(f"{self.node.api}/peer/registry", json=body,
                                     headers={"Content-Type": "application/json;charset=utf-8"}) as resp:
            assert resp.status == 200, f"register answered HTTP {resp.status}: {await resp.text()}"
            answer: dict[str, Any] = await resp.json(content_type=None)
            return answer

    async def pull(self, task_id: str, *, status: int = 700, result: int = 502, range_: str = "",
                   dst_cid: str = "") -> dict[str, Any]:
        """GET /peer/task with dfget's raw, unescaped query; returns the ResultInfo."""
        query = f"srcCid={self.cid}&dstCid={dst_cid}&range={range_}&result={result}&status={status}&taskId={task_id}"
        async with self.session.get(f"{self.node.api}/peer/task?{query}") as resp:
            assert resp.status == 200, f"/peer/task answered HTTP {resp.status}"
            answer: dict[str, Any] = await resp.json(content_type=None)
            return answer

    async def wait_pull(self, task_id: str, done: Callable[[dict[str, Any]], bool],
                        within: float = WAIT) -> dict[str, Any]:
        """Pull (status 700) until ``done(answer)``; fails the test after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            answer = await self.pull(task_id)
            if done(answer):
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"/peer/task still answers {answer} after {within}s")
            await asyncio.sleep(0.02)

    async def piece(self, task_id: str, range_text: str, *, path: str | None = None) -> tuple[int, bytes]:
        """GET a piece from the download port with ``Range: bytes=range_text``."""
        url = f"{self.node.cdn}{path or f'/download/{task_id[:3]}/{task_id}'}"
        async with self.session.get(url, headers={"Range": f"bytes={range_text}"}) as resp:
            return resp.status, await resp.read()


class Api:
    """The REST side of the supernode used by the tests."""

    def __init__(self, session: aiohttp.ClientSession, node: Node) -> None:
        self.session = session
        self.node = node

    async def task(self, task_id: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.node.api}/api/v1/tasks/{task_id}") as resp:
            return resp.status, await resp.json(content_type=None)

    async def delete_task(self, task_id: str, *, full: bool = False) -> int:
        suffix = "?full=true" if full else ""
        async with self.session.delete(f"{self.node.api}/api/v1/tasks/{task_id}{suffix}") as resp:
            return resp.status

    async def wait_cdn(self, task_id: str, statuses: Iterable[str], within: float = WAIT) -> dict[str, Any]:
        """Poll GET /api/v1/tasks/{id} until cdnStatus is one of ``statuses``."""
        wanted = set(statuses)
        deadline = time.monotonic() + within
        while True:
            status, info = await self.task(task_id)
            if status == 200 and info.get("cdnStatus") in wanted:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {status} {info} after {within}s, wanted {wanted}")
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
async def start_node(home: Path) -> AsyncIterator[NodeFactory]:
    """``await start_node(**settings)``: a started supernode on ``home`` (stopped at teardown)."""
    started: list[Node] = []

    async def start(**overrides: Any) -> Node:
        node_home = overrides.pop("home_dir", home)
        for attempt in range(3):  # a free port may be taken by another process before we bind it
            node = Node(node_home, **overrides)
            try:
                await node.start()
            except OSError:
                await node.node.stop()
                if attempt == 2 or "port" in overrides or "download_port" in overrides:
                    raise
                continue
            started.append(node)
            return node
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for node in reversed(started):
            await node.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2)) as client:
        yield client
