"""The paced download port (``cdn_rate_limit``) answers exactly as the unlimited one, only slower.

Two download apps serve the same cache: the node's own (unlimited) and one built by
``build_download_app`` with a limit, on its own loopback port. Every answer (status, headers, body)
must be the same on both, and the metric of served bytes must count the same. The paced body goes
through aiohttp's private ``FileResponse._sendfile`` step; the pin tests below fail if aiohttp stops
calling it (the limit would then silently not apply).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from dfwire import pieces
from supernode.cdn.server import build_download_app
from supernode.metrics import Metrics
from tests.unit.test_metrics import sample_value

from .conftest import MIB, PIECE_SIZE, Node, NodeFactory, Origin, eventually, pattern_bytes, wrapped_file
from .test_download_port import WRAPPED, finished_task

SIZE = 10 * MIB
RATE = 2 * MIB
LAST = 2 * PIECE_SIZE  # the last piece starts here and is announced at full size
# Answer headers that must agree; Date and Server are the clock's and the stack's.
HEADERS = ("Content-Length", "Content-Range", "Content-Type", "Accept-Ranges", "ETag", "Last-Modified", "Allow")


@dataclass
class Ports:
    node: Node
    task_id: str
    data: bytes
    paced_url: str
    paced_metrics: Metrics

    @property
    def path(self) -> str:
        return f"/download/{self.task_id[:3]}/{self.task_id}"


@pytest.fixture
async def ports(origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> AsyncIterator[Ports]:
    data = pattern_bytes(SIZE, seed=40)
    node = await start_node()
    task_id = await finished_task(origin, node, session, data)
    metrics = Metrics("test")
    runner = web.AppRunner(build_download_app(node.node.store, metrics, RATE), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Ports(node, task_id, data, f"http://127.0.0.1:{port}", metrics)
    finally:
        await runner.cleanup()


async def ask(session: aiohttp.ClientSession, method: str, url: str, range_value: str | None
              ) -> tuple[int, Mapping[str, str | None], bytes]:
    headers = {"Range": range_value} if range_value is not None else {}
    async with session.request(method, url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, {name: resp.headers.get(name) for name in HEADERS}, body


async def served(ports: Ports, expected: int) -> None:
    """``cdn_served_bytes_total`` of the paced port reaches ``expected`` (it is counted once the handler
    returns, which may be a moment after the client has the last byte) and stays there."""
    def count() -> float:
        return sample_value(ports.paced_metrics, "dragonfly_supernode_cdn_served_bytes_total")

    await eventually(lambda: count() >= expected, f"{expected} served bytes counted")
    await asyncio.sleep(0.05)
    assert count() == expected


# (method, Range): ranges inside, across and past the end of the file, bad ranges, and the non-GET methods.
CASES: list[tuple[str, str | None]] = [
    ("GET", "bytes=0-0"),
    ("GET", "bytes=100-70000"),
    ("GET", f"bytes={PIECE_SIZE}-{PIECE_SIZE + 300_000}"),
    ("GET", "bytes=-5"),
    ("GET", f"bytes={WRAPPED - 1}-{WRAPPED + 100}"),
    ("GET", f"bytes={WRAPPED}-{WRAPPED + PIECE_SIZE - 1}"),  # past the end: 416
    ("GET", "bytes=5-2"),  # not a valid range
    ("HEAD", None),
    ("HEAD", "bytes=0-99"),
    ("POST", "bytes=0-99"),
]


async def test_paced_answers_equal_unlimited_ones(ports: Ports, session: aiohttp.ClientSession) -> None:
    """One node for every case (each would otherwise fetch its own cache); the case is in each message."""
    expected = 0
    for method, range_value in CASES:
        unlimited = await ask(session, method, f"{ports.node.cdn}{ports.path}", range_value)
        paced = await ask(session, method, f"{ports.paced_url}{ports.path}", range_value)
        assert paced == unlimited, (method, range_value)
        expected += len(paced[2]) if paced[0] in (200, 206) else 0
        await served(ports, expected)


async def test_last_piece_is_clamped_correct_and_paced(ports: Ports, session: aiohttp.ClientSession) -> None:
    """dfget announces the last piece at full size: 206, clamped, the right bytes, at most RATE."""
    started = time.monotonic()
    status, headers, body = await ask(session, "GET", f"{ports.paced_url}{ports.path}",
                                      f"bytes={LAST}-{LAST + PIECE_SIZE - 1}")
    elapsed = time.monotonic() - started
    assert status == 206 and headers["Content-Range"] == f"bytes {LAST}-{WRAPPED - 1}/{WRAPPED}"
    assert body == wrapped_file(ports.data)[LAST:] and pieces.unwrap(body) == ports.data[2 * (PIECE_SIZE - 5):]
    # One chunk may go at once, the rest at RATE; slowness only adds time, so this bound cannot flake.
    floor = (len(body) - 256 * 1024) / RATE
    assert elapsed >= floor, f"{len(body)} bytes in {elapsed:.2f}s: faster than {RATE} B/s, the limit was bypassed"
    await served(ports, len(body))


async def test_connections_share_one_rate(ports: Ports, session: aiohttp.ClientSession) -> None:
    """Three pieces at once take as long as their total at RATE, not as one of them."""
    ranges = [(0, MIB - 1), (PIECE_SIZE, PIECE_SIZE + MIB - 1), (LAST, LAST + MIB - 1)]
    url = f"{ports.paced_url}{ports.path}"
    started = time.monotonic()
    answers = await asyncio.gather(*(ask(session, "GET", url, f"bytes={a}-{b}") for a, b in ranges))
    elapsed = time.monotonic() - started
    wrapped = wrapped_file(ports.data)
    assert [body for _, _, body in answers] == [wrapped[a:b + 1] for a, b in ranges]
    total = sum(len(body) for _, _, body in answers)
    assert elapsed >= (total - 256 * 1024) / RATE, f"{total} bytes over 3 connections in {elapsed:.2f}s"


async def test_a_dropped_connection_stops_drawing_from_the_bucket(ports: Ports,
                                                                  session: aiohttp.ClientSession) -> None:
    """Six clients that hang up after 64 KiB of a 4 MiB piece must not keep sending: were they still
    pacing, a 2 MiB fetch would get 1/7 of RATE and take at least 7 s instead of about 1 s."""
    url = f"{ports.paced_url}{ports.path}"
    for _ in range(6):
        resp = await session.get(url, headers={"Range": f"bytes=0-{PIECE_SIZE - 1}"})
        await resp.content.readexactly(64 * 1024)
        resp.close()
    started = time.monotonic()
    _, _, body = await ask(session, "GET", url, f"bytes={PIECE_SIZE}-{PIECE_SIZE + 2 * MIB - 1}")
    elapsed = time.monotonic() - started
    assert body == wrapped_file(ports.data)[PIECE_SIZE:PIECE_SIZE + 2 * MIB]
    assert elapsed < 5.0, f"2 MiB took {elapsed:.1f}s at {RATE} B/s: the dropped connections still take turns"


def test_aiohttp_sends_file_bodies_through_the_overridden_step() -> None:
    """The private hook, as aiohttp 3.14 has it: the body is sent by ``_sendfile(request, fobj, offset,
    count)``, called from ``_prepare_open_file`` once status, headers and range are settled."""
    params = list(inspect.signature(web.FileResponse._sendfile).parameters)
    assert params == ["self", "request", "fobj", "offset", "count"]
    assert "self._sendfile(request, fobj, offset, count)" in inspect.getsource(web.FileResponse._prepare_open_file)
