"""The unmodified Go dfget 1.0.6 against our supernode (``python -m supernode``) on loopback.

Each case checks what a user of Go dfget sees (exit code, output file and its MD5) and what the
origin saw (the file sent about once, the user's headers), so a regression in any part of our wire
protocol that Go dfget depends on shows up here even if our own dfget still copes with it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.dfget.conftest import Finished, file_md5, md5_hex, metric
from tests.v1proto import OriginServer, SupernodeProcess, free_port, pattern_bytes, running

from .conftest import MIB, assert_fetched_once, go_binary, requires
from .goprocs import GoDfgetNodes, describe

pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module"), requires("dfget")]

PEER_PIECES = "dragonfly_supernode_pieces_served_total"


def assert_downloaded(result: Finished, data: bytes) -> None:
    assert result.code == 0, describe(result)
    assert "download SUCCESS" in result.stdout, describe(result)
    assert result.output.stat().st_size == len(data)
    assert file_md5(result.output) == md5_hex(data)


def assert_failed_cleanly(result: Finished, reason: str) -> None:
    """Non-zero exit, ``reason`` in the output, and neither the output nor dfget's temp file left."""
    assert result.code != 0, describe(result)
    assert "download FAIL" in result.stdout and reason in result.stdout, describe(result)
    assert not result.output.exists()
    assert not list(result.output.parent.glob("dfget-*.tmp-*")), list(result.output.parent.iterdir())


def registered_task_id(result: Finished) -> str:
    """The task ID our supernode answered Go dfget's registration with, from Go dfget's own log."""
    log = (result.home / "logs" / "dfclient.log").read_text(errors="replace")
    found = re.findall(r'do register result:\{"code":200.*?"taskId":"([0-9a-f]{64})"', log)
    assert found, describe(result)
    return str(found[-1])


async def test_small_and_empty_files(origin: OriginServer, go_nodes: GoDfgetNodes) -> None:
    origin.files["/go/small.txt"] = small = b"hello from the origin\n" * 50
    origin.files["/go/empty.bin"] = b""
    assert_downloaded(await go_nodes.run(origin.url("/go/small.txt"), ip="127.0.77.2"), small)
    result = await go_nodes.run(origin.url("/go/empty.bin"), ip="127.0.77.2",
                                output=go_nodes.root / "out" / "empty.bin")
    assert_downloaded(result, b"")
    assert_fetched_once(origin, "/go/small.txt", len(small))
    assert origin.full_transfers["/go/empty.bin"] == 1


async def test_twenty_mib_file(origin: OriginServer, go_nodes: GoDfgetNodes) -> None:
    origin.files["/go/20m.bin"] = data = pattern_bytes(20 * MIB)
    assert_downloaded(await go_nodes.run(origin.url("/go/20m.bin"), ip="127.0.77.3"), data)
    assert_fetched_once(origin, "/go/20m.bin", len(data))


async def test_missing_file_fails_cleanly(origin: OriginServer, go_nodes: GoDfgetNodes) -> None:
    """404 at the origin: registration fails, Go dfget's own try at the source fails too, and says why."""
    result = await go_nodes.run(origin.url("/go/missing.bin"), ip="127.0.77.2")
    assert_failed_cleanly(result, "404")
    assert origin.requests["/go/missing.bin"] >= 1


async def test_four_parallel_peers_share_pieces(origin: OriginServer, our_supernode: SupernodeProcess,
                                                go_nodes: GoDfgetNodes) -> None:
    origin.files["/go/swarm.bin"] = data = pattern_bytes(20 * MIB)
    url = origin.url("/go/swarm.bin")
    before = await metric(our_supernode.api_url, PEER_PIECES, source="peer")

    async def staggered(n: int) -> Finished:
        await asyncio.sleep(0.3 * n)
        return await go_nodes.run(url, "-s", "10M", ip=f"127.0.77.{10 + n}")

    results = await asyncio.gather(*(staggered(n) for n in range(4)))
    for result in results:
        assert_downloaded(result, data)
    assert_fetched_once(origin, "/go/swarm.bin", len(data))
    served = await metric(our_supernode.api_url, PEER_PIECES, source="peer") - before
    assert served > 0, "every piece came from the CDN: no Go dfget served another"


async def test_small_pieces_set_on_the_supernode(origin: OriginServer, tmp_path: Path) -> None:
    """``--piece-size 1M``: Go dfget takes the size from the register answer and cuts, checks and serves
    pieces by it, so four of them swarm a 20 MiB file in 21 pieces, every byte right."""
    node = SupernodeProcess(tmp_path / "home", tmp_path, api_port=free_port(), cdn_port=free_port(),
                            extra_args=("--piece-size", "1M"))
    origin.files["/go/small-pieces.bin"] = data = pattern_bytes(20 * MIB)
    url = origin.url("/go/small-pieces.bin")
    async with running(node):
        runner = GoDfgetNodes(go_binary("dfget"), tmp_path / "go", f"127.0.0.1:{node.api_port}")
        try:
            async def staggered(n: int) -> Finished:
                await asyncio.sleep(0.3 * n)
                return await runner.run(url, "-s", "10M", ip=f"127.0.77.{30 + n}")

            results = await asyncio.gather(*(staggered(n) for n in range(4)))
        finally:
            await runner.close()
        for result in results:
            assert_downloaded(result, data)
            log = (result.home / "logs" / "dfclient.log").read_text(errors="replace")
            assert '"pieceSize":1048576' in log, describe(result)
        assert_fetched_once(origin, "/go/small-pieces.bin", len(data))
        served = await metric(node.api_url, PEER_PIECES, source="peer")
        assert served > 0, "every piece came from the CDN: no Go dfget served another"


async def test_md5_right_and_wrong(origin: OriginServer, go_nodes: GoDfgetNodes) -> None:
    origin.files["/go/md5.bin"] = data = pattern_bytes(3 * MIB)
    url = origin.url("/go/md5.bin")
    assert_downloaded(await go_nodes.run(url, "--md5", md5_hex(data), ip="127.0.77.2"), data)
    wrong = await go_nodes.run(url, "--md5", "0123456789abcdef0123456789abcdef", ip="127.0.77.3",
                               output=go_nodes.root / "out" / "wrong-md5.bin")
    assert_failed_cleanly(wrong, "md5")


async def test_filtered_query_params_share_one_task(origin: OriginServer, go_nodes: GoDfgetNodes) -> None:
    """``-f sign``: URLs that differ only in ``sign`` are one task, fetched from the origin once."""
    origin.files["/go/filtered.bin"] = data = pattern_bytes(2 * MIB)
    first = await go_nodes.run(origin.url("/go/filtered.bin?a=1&sign=one"), "-f", "sign", ip="127.0.77.2")
    second = await go_nodes.run(origin.url("/go/filtered.bin?a=1&sign=two"), "-f", "sign", ip="127.0.77.3")
    assert_downloaded(first, data)
    assert_downloaded(second, data)
    assert registered_task_id(first) == registered_task_id(second)
    assert_fetched_once(origin, "/go/filtered.bin", len(data))
    # The control: without the filter the other sign is another task, and the origin is asked again.
    third = await go_nodes.run(origin.url("/go/filtered.bin?a=1&sign=three"), ip="127.0.77.4")
    assert_downloaded(third, data)
    assert registered_task_id(third) != registered_task_id(first)
    assert origin.full_transfers["/go/filtered.bin"] == 2


async def test_user_headers_reach_the_origin(origin: OriginServer, go_nodes: GoDfgetNodes, tmp_path: Path) -> None:
    origin.files["/go/header.bin"] = data = pattern_bytes(1 * MIB)
    result = await go_nodes.run(origin.url("/go/header.bin"), "--header", "X-Interop: go-dfget",
                                "--header", "Authorization: Bearer interop-token", ip="127.0.77.2")
    assert_downloaded(result, data)
    seen = [request.headers for request in origin.log if request.path == "/go/header.bin"]
    assert seen and all(headers.get("X-Interop") == "go-dfget" for headers in seen), seen
    assert all(headers.get("Authorization") == "Bearer interop-token" for headers in seen), seen
