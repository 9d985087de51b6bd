"""Real dfget processes sharing one file through the real supernode on loopback.

Four nodes (127.0.0.2-5, each its own work home and uploader) download one multi-piece file at
once: every output must be MD5-correct, the origin must have sent the file once, and pieces must
have travelled between the peers, as both the supernode's metrics and the peers' summaries show.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.paced_relay import paced_relay
from tests.v1proto import OriginServer, SupernodeProcess, free_port, pattern_bytes, running

from .conftest import DfgetNodes, Finished, file_md5, md5_hex, metric, uploader_pid, wait_gone

MIB = 1024 * 1024


def check_origin_sent_once(origin: OriginServer, path: str, size: int) -> None:
    """One complete transfer of the source; the supernode's length probe may add a little before it closes."""
    assert origin.full_transfers[path] == 1, origin.log
    assert size <= origin.bytes_sent[path] < size * 1.5 + MIB, origin.bytes_sent


async def test_four_peers_share_one_file(origin: OriginServer, supernode: SupernodeProcess,
                                         nodes: DfgetNodes) -> None:
    data = pattern_bytes(24 * MIB)
    origin.files["/file24m.bin"] = data
    url = origin.url("/file24m.bin")
    ips = [f"127.0.0.{n}" for n in range(2, 6)]

    async def staggered(index: int, ip: str) -> Finished:
        await asyncio.sleep(0.3 * index)
        return await nodes.run(url, "--node", f"127.0.0.1:{supernode.api_port}", "-s", "8M", ip=ip)

    results = await asyncio.gather(*(staggered(i, ip) for i, ip in enumerate(ips)))

    for result in results:
        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data)
        assert "from source" in result.stdout and result.counts()["source"] == 0, result.stdout
        assert result.seconds() >= 24 / 8 - 0.5, "-s 8M: 24 MiB cannot take less than 3 s (less the burst)"
    check_origin_sent_once(origin, "/file24m.bin", len(data))
    served_by_peers = await metric(supernode.api_url, "dragonfly_supernode_pieces_served_total", source="peer")
    assert served_by_peers > 0, "every piece came from the CDN: no peer served another"
    assert await metric(supernode.api_url, "dragonfly_dfget_download_total") == 4, "one metrics report per run"
    assert sum(result.counts()["peers"] for result in results) > 0
    # The summaries round each source to 0.1 MiB.
    assert sum(r.counts()["peers"] + r.counts()["supernode"] for r in results) == pytest.approx(4 * 24, abs=0.4)
    for result in results:  # nothing but the outputs is left beside them
        assert sorted(p.name for p in result.output.parent.iterdir()) == [f"{ip}.bin" for ip in ips]


async def test_uploader_leaves_after_alivetime(origin: OriginServer, supernode: SupernodeProcess,
                                               nodes: DfgetNodes) -> None:
    """The uploader serves a finished file until idle, then tells the supernode and cleans up."""
    origin.files["/small.bin"] = data = pattern_bytes(5 * MIB)
    result = await nodes.run(origin.url("/small.bin"), "--node", f"127.0.0.1:{supernode.api_port}",
                             alive_time="2s")
    assert result.code == 0, result.describe()
    assert result.output.read_bytes() == data
    pid = uploader_pid(result.home)
    assert pid, "the first dfget run on a node starts an uploader"
    service_files = list((result.home / "data").glob("*.service"))
    assert len(service_files) == 1 and service_files[0].stat().st_ino == result.output.stat().st_ino
    assert await wait_gone(pid, result.home, 10.0), "the uploader did not exit after --alivetime"
    downs = await metric(supernode.api_url, "dragonfly_supernode_http_requests_total", handler="/peer/service/down",
                         code="200")
    assert downs == 1
    assert list((result.home / "data").iterdir()) == []
    assert result.output.read_bytes() == data, "the output must survive the uploader's clean-up"


async def test_second_run_reuses_the_uploader(origin: OriginServer, supernode: SupernodeProcess,
                                              nodes: DfgetNodes, tmp_path: Path) -> None:
    origin.files["/a.bin"] = pattern_bytes(1 * MIB)
    node = f"127.0.0.1:{supernode.api_port}"
    first = await nodes.run(origin.url("/a.bin"), "--node", node, output=tmp_path / "a1")
    pid = uploader_pid(first.home)
    second = await nodes.run(origin.url("/a.bin"), "--node", node, output=tmp_path / "a2")
    assert first.code == second.code == 0, first.describe() + second.describe()
    assert uploader_pid(second.home) == pid != 0
    assert second.counts()["peers"] == 1.0, "the second run on the node fetches from the first one's uploader"


async def four_peers_fetch(nodes: DfgetNodes, origin: OriginServer, path: str, size: int, supernode: str) -> None:
    """Four dfget peers (127.0.0.2-5, 8 MiB/s down and up) fetch one new file at once; every output must be right."""
    origin.files[path] = data = pattern_bytes(size)
    runs = [await nodes.start(origin.url(path), "--node", supernode, "-s", "8M", "--totallimit", "8M",
                              ip=f"127.0.0.{n}") for n in range(2, 6)]
    for run in runs:
        result = await run.wait(90)
        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data)


async def check_seeded(api_url: str, origin: OriginServer, path: str, size: int) -> float:
    """At most 2 F from the CDN, the rest of four peers' copies from peers, the origin sent once; the CDN's bytes."""
    cdn_bytes = await metric(api_url, "dragonfly_supernode_cdn_served_bytes_total")
    from_peers = await metric(api_url, "dragonfly_supernode_pieces_served_bytes_total", source="peer")
    assert cdn_bytes <= 2 * size, f"the CDN sent {cdn_bytes / size:.2f} F"
    assert from_peers >= 4 * size - cdn_bytes - MIB, "the peers served the rest"
    check_origin_sent_once(origin, path, size)
    return cdn_bytes


@pytest.mark.parametrize("pieces", [[], ["--piece-size", "1M"]], ids=["spec-pieces", "1M-pieces"])
async def test_a_rate_limited_cdn_seeds_and_the_peers_carry_the_rest(origin: OriginServer, tmp_path: Path,
                                                                     nodes: DfgetNodes, pieces: list[str]) -> None:
    """``--cdn-rate-limit``: the scheduler treats the CDN as a seed of that capacity, so peers serve most pieces.

    Four real dfget peers, a 16 MiB file (four pieces of the spec's 4 MiB, or 17 of 1 MiB) and a CDN port
    sending 4 MiB/s in all, peers at 8 MiB/s: each piece should leave the CDN about once. The bound asserted
    is a property (at most 2 F from the CDN, the rest from peers), not a time.
    """
    node = SupernodeProcess(tmp_path / "home", tmp_path, api_port=free_port("127.0.0.1"),
                            cdn_port=free_port("127.0.0.1"), extra_args=["--cdn-rate-limit", "4M", *pieces])
    async with running(node):
        await four_peers_fetch(nodes, origin, "/seeded.bin", 16 * MIB, f"127.0.0.1:{node.api_port}")
        await check_seeded(node.api_url, origin, "/seeded.bin", 16 * MIB)
        async with aiohttp.ClientSession() as session, session.get(f"{node.api_url}/api/v1/tasks") as resp:
            tasks = await resp.json()
    assert [task["pieceSize"] for task in tasks] == [MIB if pieces else 4 * MIB]


async def test_a_cdn_not_told_its_capacity_measures_it_and_seeds(origin: OriginServer, tmp_path: Path,
                                                                 nodes: DfgetNodes) -> None:
    """No ``--cdn-rate-limit``, but a link of 4 MiB/s in front of the piece port: the scheduler measures C.

    The supernode listens on 127.0.0.1; the peers reach it at 127.0.0.9, where relays (``tests/paced_relay.py``)
    forward its API port as it is and its piece port at 4 MiB/s in all, so every CDN byte a peer gets crosses
    that link; peers take 8 MiB/s. Asserted are properties, not times: all outputs right; C measured, and
    not above the link (a loaded machine only makes pieces slower); at most 2 F from the CDN, the rest from
    peers.
    """
    api_port, cdn_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    node = SupernodeProcess(tmp_path / "home", tmp_path, api_port=api_port, cdn_port=cdn_port,
                            extra_args=["--listen-host", "127.0.0.1"])
    async with (running(node), paced_relay("127.0.0.9", api_port, ("127.0.0.1", api_port)),
                paced_relay("127.0.0.9", cdn_port, ("127.0.0.1", cdn_port), 4 * MIB) as link):
        await four_peers_fetch(nodes, origin, "/measured.bin", 32 * MIB, f"127.0.0.9:{api_port}")
        cdn_bytes = await check_seeded(node.api_url, origin, "/measured.bin", 32 * MIB)
        capacity = await metric(node.api_url, "dragonfly_supernode_cdn_capacity_bytes")
    assert 0 < capacity <= 1.3 * 4 * MIB, f"measured C = {capacity / MIB:.2f} MiB/s"
    assert link.sent >= cdn_bytes, "every CDN byte crossed the link"
