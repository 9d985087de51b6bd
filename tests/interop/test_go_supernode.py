"""Our dfget against the Go supernode 1.0.6, deployed as upstream does: nginx serves its CDN files.

Our dfget must need nothing of our own supernode: registration, the pull loop, CDN pieces fetched
from nginx (which knows nothing of piece headers and answers plain byte ranges of the wrapped file)
and pieces fetched from other dfget peers as the Go scheduler hands them out.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.dfget.conftest import DfgetNodes, Finished, file_md5, md5_hex
from tests.v1proto import OriginServer, pattern_bytes

from .conftest import MIB, assert_fetched_once, requires
from .goprocs import GoSupernode

pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module"), requires("supernode", nginx=True)]


def assert_ok(result: Finished, data: bytes) -> None:
    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)


async def test_our_peers_download_and_share_through_the_go_supernode(
        origin: OriginServer, go_supernode: GoSupernode, nodes: DfgetNodes) -> None:
    origin.files["/go-supernode.bin"] = data = pattern_bytes(20 * MIB)
    url, node = origin.url("/go-supernode.bin"), f"127.0.0.1:{go_supernode.port}"

    first = await nodes.run(url, "--node", node, ip="127.0.77.31")
    assert_ok(first, data)
    assert first.counts()["supernode"] == pytest.approx(20, abs=0.1), first.stdout

    async def staggered(n: int) -> Finished:
        await asyncio.sleep(0.3 * n)
        return await nodes.run(url, "--node", node, "-s", "16M", ip=f"127.0.77.{32 + n}")

    results = await asyncio.gather(*(staggered(n) for n in range(3)))
    for result in results:
        assert_ok(result, data)
        assert result.counts()["source"] == 0, result.stdout
    assert sum(result.counts()["peers"] for result in results) > 0, [r.stdout for r in results]
    assert_fetched_once(origin, "/go-supernode.bin", len(data))
