"""Go dfget 1.0.6 peers and our dfget peers in one swarm on our supernode, serving each other pieces.

Which peer served a piece is known for certain by how the swarm is built, not by timing: our
supernode counts every piece a client reports by whether the CDN or a peer served it, and it hands
out at most one CDN piece per task at a time here (so a client with a peer beside it gets most
pieces from that peer). The peers join one after the other:

1. ours alone: every piece from the CDN;
2. Go: its only possible peer is ours, so its peer pieces went ours -> Go;
3. our first uploader leaves (it reports service down, and is never scheduled again), then ours
   again: its only possible peer is the Go one, so its peer pieces went Go -> ours, which our
   dfget's own per-piece log (``--verbose``) confirms by the source's address.
"""

from __future__ import annotations

import re

import pytest

from tests.dfget.conftest import DfgetNodes, Finished, file_md5, md5_hex, metric
from tests.v1proto import OriginServer, SupernodeProcess, pattern_bytes

from .conftest import MIB, assert_fetched_once, requires
from .goprocs import GoDfgetNodes, describe

pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module"), requires("dfget")]

PIECES = "dragonfly_supernode_pieces_served_total"
SERVICE_DOWN = "dragonfly_supernode_http_requests_total"


def assert_ok(result: Finished, data: bytes, text: str) -> None:
    assert result.code == 0, text
    assert file_md5(result.output) == md5_hex(data), text


def piece_sources(result: Finished) -> list[str]:
    """The ``ip:port`` each piece came from, from our dfget's ``--verbose`` log (one line per piece)."""
    log = (result.home / "logs" / "dfclient.log").read_text(errors="replace")
    return re.findall(r"piece \d+ from (\S+) \S+: \d+ bytes", log)


async def test_go_and_our_peers_serve_each_other(origin: OriginServer, our_supernode: SupernodeProcess,
                                                 go_nodes: GoDfgetNodes, nodes: DfgetNodes) -> None:
    origin.files["/mixed.bin"] = data = pattern_bytes(24 * MIB)
    url, api = origin.url("/mixed.bin"), our_supernode.api_url
    node = f"127.0.0.1:{our_supernode.api_port}"

    async def peer_pieces() -> float:
        return await metric(api, PIECES, source="peer")

    first = await nodes.run(url, "--node", node, ip="127.0.0.21")
    assert_ok(first, data, first.describe())
    assert first.counts()["peers"] == 0, first.stdout

    before = await peer_pieces()
    go = await go_nodes.run(url, "-s", "16M", ip="127.0.0.22")
    assert_ok(go, data, describe(go))
    assert await peer_pieces() > before, "the Go dfget got no piece from our dfget's uploader"

    downs = await metric(api, SERVICE_DOWN, handler="/peer/service/down", code="200")
    await nodes.stop_uploader(first.home)
    assert await metric(api, SERVICE_DOWN, handler="/peer/service/down", code="200") == downs + 1

    before = await peer_pieces()
    second = await nodes.run(url, "--node", node, "-s", "16M", "--verbose", ip="127.0.0.23")
    assert_ok(second, data, second.describe())
    assert await peer_pieces() > before, "our dfget got no piece from the Go dfget's uploader"
    sources = piece_sources(second)
    assert len(sources) >= len(data) // (4 * MIB), sources
    assert any(source.startswith("127.0.0.22:") for source in sources), sources
    assert second.counts()["peers"] > 0, second.stdout
    assert_fetched_once(origin, "/mixed.bin", len(data))
