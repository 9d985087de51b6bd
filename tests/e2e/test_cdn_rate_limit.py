"""``supernode --cdn-rate-limit 4M``: the real process keeps its piece port under 4 MiB/s in total.

The supernode caches a file from a local origin, then three connections fetch three pieces from its
download port at once (the last one announced at full size, as dfget does). Every byte must be right;
the bytes sent after the first burst, over the time they took, must stay under 1.3x the limit. Only
that upper bound is asserted: a loaded machine makes the transfer slower, never faster. The process
runs on uvloop when it is installed, so this is also the path without ``loop.sendfile``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dfwire import pieces
from supernode.cdn.egress import chunk_size_for
from tests.v1proto import (
    OriginServer,
    SupernodeProcess,
    V1Api,
    free_port,
    pattern_bytes,
    peer_path,
    register_body,
    running,
)

MIB = 1024 * 1024
LIMIT = 4 * MIB
SIZE = 10 * MIB


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[SupernodeProcess]:
    """``python -m supernode`` with ``--cdn-rate-limit 4M``."""
    node = SupernodeProcess(tmp_path / "home", tmp_path, api_port=free_port(), cdn_port=free_port(),
                            extra_args=("--listen-host", "127.0.0.1", "--cdn-rate-limit", "4M"))
    async with running(node):
        yield node


async def cached_task(session: aiohttp.ClientSession, node: SupernodeProcess, url: str) -> str:
    """Register a cdn-pattern client for ``url`` and wait (bounded) until the CDN has the whole file."""
    api = V1Api(session, node.api_url)
    answer = await api.register(register_body(
        super_node_ip="127.0.0.1", raw_url=url, task_url=url, cid="127.0.0.2-1-1.000", ip="127.0.0.2",
        host_name="limited-test", port=0, path=peer_path("limited.bin-1"), pattern="cdn"))
    assert answer.status == 200 and answer.code == 200, answer.brief()
    task_id: str = answer.data["taskId"]
    deadline = time.monotonic() + 30
    while True:
        info = await api.call("GET", f"/api/v1/tasks/{task_id}")
        if info.status == 200 and (info.obj or {}).get("cdnStatus") == "SUCCESS":
            return task_id
        assert time.monotonic() < deadline, f"the CDN did not cache {url}: {info.brief()}"
        await asyncio.sleep(0.1)


async def test_three_connections_share_the_limit(origin: OriginServer, limited: SupernodeProcess) -> None:
    data = pattern_bytes(SIZE)
    origin.files["/limited.bin"] = data
    piece_size = pieces.piece_size_for(SIZE)
    per = pieces.data_size(piece_size)
    wrapped = b"".join(pieces.wrap(data[i:i + per], piece_size) for i in range(0, SIZE, per))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        task_id = await cached_task(session, limited, origin.url("/limited.bin"))
        url = f"{limited.cdn_url}/download/{task_id[:3]}/{task_id}"
        # Two MiB of the first two pieces and the whole last piece, announced at full size.
        ranges = [(0, 2 * MIB - 1), (piece_size, piece_size + 2 * MIB - 1), (2 * piece_size, 3 * piece_size - 1)]

        async def fetch(start: int, end: int) -> tuple[int, str, bytes, float]:
            async with session.get(url, headers={"Range": f"bytes={start}-{end}"}) as resp:
                body = await resp.read()
                return resp.status, resp.headers.get("Content-Range", ""), body, time.monotonic()

        started = time.monotonic()
        answers = await asyncio.gather(*(fetch(a, b) for a, b in ranges))
        elapsed = max(done for *_, done in answers) - started
        async with session.get(f"{limited.api_url}/metrics") as resp:
            exposition = await resp.text()
    for (start, end), (status, content_range, body, _) in zip(ranges, answers, strict=True):
        last = min(end, len(wrapped) - 1)
        assert status == 206 and content_range == f"bytes {start}-{last}/{len(wrapped)}"
        assert body == wrapped[start:last + 1], f"wrong bytes for {start}-{end}"
    total = sum(len(body) for _, _, body, _ in answers)
    achieved = (total - chunk_size_for(LIMIT)) / elapsed  # the bucket may let one chunk through at once
    finishes = ", ".join(f"{done - started:.2f}s" for *_, done in answers)
    assert achieved <= 1.3 * LIMIT, f"{total} B in {elapsed:.2f}s = {achieved / MIB:.2f} MiB/s (done at {finishes})"
    gauges = {sample.name: sample.value for family in text_string_to_metric_families(exposition)
              for sample in family.samples}
    assert gauges["dragonfly_supernode_cdn_rate_limit_bytes"] == LIMIT


def test_bad_limit_fails_clearly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "supernode", "--home-dir", str(tmp_path), "--advertise-ip",
                           "127.0.0.1", "--cdn-rate-limit", "4 Mbit/s"], capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 2
    assert "invalid cdn_rate_limit" in done.stderr and "Traceback" not in done.stderr
