"""Faults around a real supernode process: killed mid-download, a full cache disk, 500 peers at once.

What a user must see in each: the downloaded file is MD5-correct or the client fails clearly, nothing
half-written is ever left under a final name (neither the client's output nor a cache entry marked
complete), and the supernode does not refetch from the origin what it already has on disk.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfwire import ids, pieces
from tests.integration.conftest import PER_PIECE, PIECE_SIZE, md5_hex, pattern_bytes
from tests.v1proto import (
    CODE_PEER_CONTINUE,
    CODE_PEER_FINISH,
    CODE_PEER_WAIT,
    CODE_PIECE_REPORTED,
    Answer,
    OriginServer,
    V1Api,
    V1Client,
    V1Error,
    register_body,
)

from .conftest import MIB, NodeProcess, OriginFactory, ProcessFactory, SmallDisk, until


def cache_files(node: NodeProcess, task_id: str) -> dict[str, Path]:
    data = node.home / "repo" / "download" / task_id[:3] / task_id
    return {"data": data, "meta": data.with_name(task_id + ".meta"), "md5": data.with_name(task_id + ".md5")}


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def task_info(node: NodeProcess, task_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{node.api_url}/api/v1/tasks/{task_id}") as resp:
        assert resp.status == 200, await resp.text()
        info: dict[str, Any] = await resp.json()
        return info


# ---------------------------------------------------------------------------------------------------
# Killed and restarted mid-download


async def test_killed_supernode_restarts_and_resumes_from_its_cache(
        make_process: ProcessFactory, make_origin: OriginFactory, tmp_path: Path) -> None:
    origin = await make_origin()
    size = 6 * PER_PIECE + 12345  # 7 pieces
    data = pattern_bytes(size, seed=90)
    origin.put("/big.bin", data)
    origin.misbehave("/big.bin", chunk_size=64 * 1024, chunk_delay=0.01)  # about 6 MB/s: a kill lands mid-body
    url = origin.url("/big.bin")
    task_id = ids.task_id(url)
    node = await make_process()
    files = cache_files(node, task_id)

    client = V1Client(node.api_url, tmp_path / "client", ip="127.0.0.2", timeout=60)
    async with client:
        first = asyncio.create_task(client.download(url, output="big.out"))
        await until(lambda: size_of(files["data"]) >= 2 * PIECE_SIZE + 1000 or first.done(),
                    "two pieces in the cache", within=20)
        assert not first.done(), "the download finished before the supernode could be killed"
        assert await node.kill() == -9
        with pytest.raises(V1Error) as failed:
            await first
        assert failed.value.stage in ("pull", "report"), failed.value  # the client is told, it does not hang
        assert not (tmp_path / "client" / "big.out").exists(), "a half-download was published"

        # What the killed supernode left: pieces, a .meta that says unfinished, no .md5 (nothing sealed).
        meta = json.loads(files["meta"].read_text())
        assert meta["finish"] is False and meta["success"] is False and meta["httpFileLen"] == size
        assert not files["md5"].exists()
        kept = size_of(files["data"]) // PIECE_SIZE
        assert kept >= 2
        sent_before = origin.body_bytes("/big.bin")

        await node.start()  # same home, same ports: the dfget client re-registers as after a migration
        origin.behave("/big.bin")
        result = await client.download(url, output="big.out")

    assert result.output.read_bytes() == data and result.finish["md5"] == md5_hex(data)
    hits = origin.requests("/big.bin")
    assert len(hits) == 2, origin.describe("/big.bin")
    resumed = hits[1]
    assert resumed.header("Range") == f"bytes={kept * PER_PIECE}-", origin.describe("/big.bin")
    assert resumed.header("If-Range") is not None
    assert (resumed.status, resumed.body_bytes) == (206, size - kept * PER_PIECE)
    assert origin.body_bytes("/big.bin") - sent_before == size - kept * PER_PIECE, "cached pieces were refetched"
    meta = json.loads(files["meta"].read_text())
    assert meta["finish"] is True and meta["success"] is True and meta["realMd5"] == md5_hex(data)
    assert files["md5"].exists()
    assert files["data"].read_bytes() == b"".join(
        pieces.wrap(data[n:n + PER_PIECE], PIECE_SIZE) for n in range(0, size, PER_PIECE))


# ---------------------------------------------------------------------------------------------------
# The cache disk fills up


async def test_full_cache_disk_fails_the_task_clearly_and_leaves_no_cache_entry(
        small_disk: SmallDisk, make_process: ProcessFactory, make_origin: OriginFactory, tmp_path: Path) -> None:
    """(``small_disk`` comes first so that it is unmounted after the supernode has stopped.)"""
    origin = await make_origin()
    big = pattern_bytes(20 * MIB, seed=91)  # more than the 8 MiB disk
    small = pattern_bytes(MIB, seed=92)
    origin.put("/big.bin", big)
    origin.put("/small.bin", small)
    node = await make_process(home=small_disk.path, fsize_limit=small_disk.fsize_limit)
    task_id = ids.task_id(origin.url("/big.bin"))

    async with V1Client(node.api_url, tmp_path / "client", ip="127.0.0.2", timeout=30) as client:
        with pytest.raises(V1Error) as failed:
            await client.download(origin.url("/big.bin"), output="big.out")
        error = failed.value
        assert error.stage == "pull" and error.code == 500 and error.answer is not None, error
        reason = "No space left on device" if small_disk.mounted else "File too large"
        assert "cache write failed" in error.answer.msg and reason in error.answer.msg, error.answer.brief()
        assert not (tmp_path / "client" / "big.out").exists()

        info = await task_info(node, task_id)
        assert info["cdnStatus"] == "FAILED"
        files = cache_files(node, task_id)
        await until(lambda: not any(path.exists() for path in files.values()), "the failed entry to be removed")
        leftovers = [p.name for p in (node.home / "repo" / "download").rglob("*") if p.is_file()]
        assert leftovers == [], f"half-written cache files: {leftovers}"
        async with aiohttp.ClientSession() as http, http.get(f"{node.api_url}/metrics") as resp:
            assert 'dragonfly_supernode_tasks_failed_total{reason="disk"} 1.0' in await resp.text()

        # The space was given back: the supernode keeps serving what fits.
        result = await client.download(origin.url("/small.bin"), output="small.out")
        assert result.output.read_bytes() == small


# ---------------------------------------------------------------------------------------------------
# Many peers at once

PEERS = 500
PIECES = 16
RSS_LIMIT = 300 * MIB


class SimulatedPeer:
    """One dfget at the protocol level: register, pull loop, a success report per piece, no piece bytes.

    Pieces are "downloaded" from wherever the supernode says (the CDN or another simulated peer) by
    reporting them, which is all the supernode sees of a real transfer.
    """

    def __init__(self, api: V1Api, n: int, url: str) -> None:
        self.api = api
        self.url = url
        self.ip = f"127.0.{1 + n // 200}.{10 + n % 200}"
        self.cid = f"{self.ip}-{5000 + n}-{time.time():.3f}"
        self.port = 15000 + n
        self.calls: Counter[str] = Counter()
        self.waits = 0
        self.latencies: list[float] = []

    async def timed(self, what: str, call: Awaitable[Answer]) -> Answer:
        started = time.monotonic()
        try:
            return await call
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AssertionError(f"peer {self.cid}: {what} failed after {time.monotonic() - started:.2f}s: "
                                 f"{exc!r}") from exc
        finally:
            self.latencies.append(time.monotonic() - started)

    def expect(self, answer: Answer, what: str, codes: set[int]) -> int:
        self.calls[what] += 1
        if answer.status != 200 or answer.code not in codes:
            raise AssertionError(f"peer {self.cid}: {what} answered {answer.brief()}")
        assert answer.code is not None
        return answer.code

    async def run(self) -> dict[str, Any]:
        """dfget's loop: every piece result is reported by a pull of its own, which may bring more pieces."""
        body = register_body(super_node_ip="127.0.0.1", raw_url=self.url, task_url=self.url, cid=self.cid,
                             ip=self.ip, host_name=f"sim-{self.port}", port=self.port,
                             path=f"/peer/file/sim-{self.cid}")
        answer = await self.timed("register", self.api.register(body))
        self.expect(answer, "register", {200})
        task_id = answer.data["taskId"]
        report: tuple[int, int, str, str] = (700, 502, "", "")  # status, result, range, dstCid
        pending: deque[dict[str, Any]] = deque()
        seen: set[str] = set()
        wait = 0.05
        for _ in range(2000):  # bounded: a stuck peer fails the test instead of spinning
            status, result, piece_range, dst = report
            answer = await self.timed("pull", self.api.pull_piece_task(
                src_cid=self.cid, dst_cid=dst, piece_range=piece_range, result=result, status=status,
                task_id=task_id))
            code = self.expect(answer, "pull", {CODE_PEER_CONTINUE, CODE_PEER_WAIT, CODE_PEER_FINISH})
            if code == CODE_PEER_FINISH:
                return {"taskId": task_id, **answer.data}
            if code == CODE_PEER_CONTINUE:
                wait = 0.05
                # a 601 with no data: the client runs all the pieces it may, go on with them
                fresh = [item for item in answer.data or [] if item["range"] not in seen]
                seen.update(item["range"] for item in fresh)
                pending.extend(fresh)
            if not pending:  # 602, or nothing new: wait, then send the latest report again as dfget does
                self.waits += 1
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, 1.0)
                continue
            item = pending.popleft()
            suc = await self.timed("suc", self.api.report_piece_suc(task_id=task_id, cid=self.cid,
                                                                    dst_cid=item["cid"], piece_range=item["range"]))
            self.expect(suc, "suc", {CODE_PIECE_REPORTED})
            report = (701, 503, item["range"], item["cid"])
        raise AssertionError(f"peer {self.cid} did not finish within 2000 pulls")


async def test_five_hundred_peers_at_once_without_errors_or_unbounded_memory(
        make_process: ProcessFactory, tmp_path: Path) -> None:
    origin = OriginServer("127.0.0.1")
    await origin.start()
    try:
        size = (PIECES - 1) * PER_PIECE + 999
        data = pattern_bytes(size, seed=93)
        origin.files["/swarm.bin"] = data
        url = origin.url("/swarm.bin")
        node = await make_process()
        peak = 0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, node.memory()["VmRSS"])
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        connector = aiohttp.TCPConnector(limit=0)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as session:
            api = V1Api(session, node.api_url)
            peers = [SimulatedPeer(api, n, url) for n in range(PEERS)]
            async with asyncio.timeout(90):
                results = await asyncio.gather(*(peer.run() for peer in peers))
        elapsed = time.monotonic() - started
        sampling = False
        await sampler
        memory = node.memory()
    finally:
        await origin.stop()

    expected = {"taskId": ids.task_id(url), "fileLength": pieces.wrapped_length(size, PIECE_SIZE), "md5": md5_hex(data)}
    assert all(result == expected for result in results)
    calls = sum((peer.calls for peer in peers), Counter())
    waits = sum(peer.waits for peer in peers)
    latencies = sorted(t for peer in peers for t in peer.latencies)
    print(f"{PEERS} peers in {elapsed:.1f}s: {dict(calls)}, {waits} waits (602); latency p50 "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, p99 {latencies[len(latencies) * 99 // 100] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; supernode RSS peak {max(peak, memory['VmHWM']) / MIB:.1f} MiB")
    assert calls["suc"] == PEERS * PIECES  # every piece reported once per peer
    assert origin.full_transfers["/swarm.bin"] == 1  # the origin served the file once for 500 peers
    assert memory["VmHWM"] < RSS_LIMIT and peak < RSS_LIMIT, memory
