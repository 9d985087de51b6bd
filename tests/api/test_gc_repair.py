"""The GC loops and the bad-piece repair, on short intervals set through the settings."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from supernode.config import Settings
from supernode.node import Supernode
from tests.api.test_legacy import CID, register, register_body
from tests.v1proto import OriginServer


async def _eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture(params=["meta", "disk"])
async def fast_gc_node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Supernode]:
    """GC every 0.1 s; the ``disk`` variant also makes every disk look nearly full (young GC always runs)."""
    disk = {"young_gc_threshold": 1 << 62 if request.param == "disk" else 0, "full_gc_threshold": 0}
    node = Supernode(Settings(home_dir=tmp_path / "home", advertise_ip="127.0.0.1", gc_initial_delay=0.05,
                              gc_meta_interval=0.1, task_expire_time=0.3, peer_gc_delay=0.3, gc_disk_interval=0.1,
                              **disk))
    node.gc.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.mark.parametrize("fast_gc_node", ["meta"], indirect=True)
async def test_idle_tasks_and_their_peers_are_collected_but_files_stay(
        fast_gc_node: Supernode, aiohttp_client: Callable[..., object], origin: OriginServer) -> None:
    api: TestClient = await aiohttp_client(fast_gc_node.api_app())  # type: ignore[misc]
    origin.files["/a.bin"] = b"a" * 100
    status, body = await register(api, register_body(origin.url("/a.bin")))
    assert status == 200
    task_id = body["data"]["taskId"]
    await _eventually(lambda: task_id not in fast_gc_node.tasks.tasks)
    await _eventually(lambda: len(fast_gc_node.peers) == 1)
    assert fast_gc_node.peers.all() == [fast_gc_node.super_peer]
    assert fast_gc_node.store.data_path(task_id).exists()
    text = (await (await api.get("/metrics")).text())
    assert "dragonfly_supernode_gc_tasks_total 1.0" in text
    assert "dragonfly_supernode_gc_peers_total 1.0" in text
    status, body = await register(api, register_body(origin.url("/a.bin"), cid="again"))
    assert status == 200 and body["data"]["fileLength"] == 100


@pytest.mark.parametrize("fast_gc_node", ["disk"], indirect=True)
async def test_disk_gc_removes_only_dead_cache_entries(
        fast_gc_node: Supernode, aiohttp_client: Callable[..., object], origin: OriginServer) -> None:
    api: TestClient = await aiohttp_client(fast_gc_node.api_app())  # type: ignore[misc]
    ids = []
    for n in range(3):
        origin.files[f"/{n}.bin"] = bytes([n]) * 10
        status, body = await register(api, register_body(origin.url(f"/{n}.bin"), cid=f"c{n}"))
        assert status == 200
        ids.append(body["data"]["taskId"])
    await _eventually(lambda: not list(fast_gc_node.store.task_ids()), within=15)


async def test_reported_corrupt_cdn_piece_drops_the_cache(
        node: Supernode, api: TestClient, origin: OriginServer) -> None:
    origin.files["/c.bin"] = b"c" * 5000
    _, body = await register(api, register_body(origin.url("/c.bin")))
    task_id = body["data"]["taskId"]
    await _eventually(lambda: node.tasks.tasks[task_id].cdn_status == "SUCCESS")
    super_cid = f"cdnnode:127.0.0.1~{task_id}"
    query = (f"taskId={task_id}&range=0-4194303&srcCid={CID}&dstCid={super_cid}&dstIp=127.0.0.1"
             f"&realMd5=x&expectedMd5=y&errorType=FILE_MD5_NOT_MATCH")
    await api.get(f"/peer/piece/error?{query}")
    await asyncio.sleep(0.3)
    assert task_id in node.tasks.tasks, "an intact piece must not drop the cache"
    path = node.store.data_path(task_id)
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"X", 100)
    os.close(fd)
    await asyncio.sleep(3.1)
    await api.get(f"/peer/piece/error?{query}")
    await _eventually(lambda: task_id not in node.tasks.tasks)
    assert not path.exists()
