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

The second case runs both programs on one node with one ``--home``, the way a node moves from Go
dfget to ours: each reuses the uploader the other started, and that uploader serves its file.
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

    first = await nodes.run(url, "--node", node, ip="127.0.77.21")
    assert_ok(first, data, first.describe())
    assert first.counts()["peers"] == 0, first.stdout

    before = await peer_pieces()
    go = await go_nodes.run(url, "-s", "16M", ip="127.0.77.22")
    assert_ok(go, data, describe(go))
    assert await peer_pieces() > before, "the Go dfget got no piece from our dfget's uploader"

    downs = await metric(api, SERVICE_DOWN, handler="/peer/service/down", code="200")
    await nodes.stop_uploader(first.home)
    assert await metric(api, SERVICE_DOWN, handler="/peer/service/down", code="200") == downs + 1

    before = await peer_pieces()
    second = await nodes.run(url, "--node", node, "-s", "16M", "--verbose", ip="127.0.77.23")
    assert_ok(second, data, second.describe())
    assert await peer_pieces() > before, "our dfget got no piece from the Go dfget's uploader"
    sources = piece_sources(second)
    assert len(sources) >= len(data) // (4 * MIB), sources
    assert any(source.startswith("127.0.77.22:") for source in sources), sources
    assert second.counts()["peers"] > 0, second.stdout
    assert_fetched_once(origin, "/mixed.bin", len(data))


async def test_go_and_our_dfget_share_one_nodes_uploader(origin: OriginServer, our_supernode: SupernodeProcess,
                                                         go_nodes: GoDfgetNodes, nodes: DfgetNodes) -> None:
    """One node, one ``--home``, both programs: whichever runs first starts the uploader, the other
    reuses it (``/check`` answers ``name@1.0.6``), and that uploader serves the other's file to peers."""
    origin.files["/shared-go-first.bin"] = go_first = pattern_bytes(8 * MIB + 1)
    origin.files["/shared-ours-next.bin"] = ours_next = pattern_bytes(8 * MIB + 2)
    origin.files["/shared-ours-first.bin"] = ours_first = pattern_bytes(8 * MIB + 3)
    origin.files["/shared-go-next.bin"] = go_next = pattern_bytes(8 * MIB + 4)
    api, node = our_supernode.api_url, f"127.0.0.1:{our_supernode.api_port}"

    # A Go uploader, used by our dfget, serves our dfget's file to another of our peers.
    go_home = nodes.home("127.0.77.24")
    started = await go_nodes.run(origin.url("/shared-go-first.bin"), ip="127.0.77.24", home=go_home)
    assert_ok(started, go_first, describe(started))
    reused = await nodes.run(origin.url("/shared-ours-next.bin"), "--node", node, ip="127.0.77.24")
    assert_ok(reused, ours_next, reused.describe())
    assert "reusing the uploader on 127.0.77.24:" in (go_home / "logs" / "dfclient.log").read_text()
    before = await metric(api, PIECES, source="peer")
    fetched = await nodes.run(origin.url("/shared-ours-next.bin"), "--node", node, "--verbose", ip="127.0.77.25")
    assert_ok(fetched, ours_next, fetched.describe())
    assert await metric(api, PIECES, source="peer") > before
    assert any(source.startswith("127.0.77.24:") for source in piece_sources(fetched)), piece_sources(fetched)

    # Our uploader, used by Go dfget, serves Go dfget's file to another Go peer.
    ours_home = nodes.home("127.0.77.26")
    started = await nodes.run(origin.url("/shared-ours-first.bin"), "--node", node, ip="127.0.77.26")
    assert_ok(started, ours_first, started.describe())
    reused = await go_nodes.run(origin.url("/shared-go-next.bin"), ip="127.0.77.26", home=ours_home)
    assert_ok(reused, go_next, describe(reused))
    served_by_ours = (ours_home / "logs" / "dfserver.log").read_text()
    assert re.search(rf"task {re.escape(reused.output.name)}-\S+ finished", served_by_ours), served_by_ours
    before = await metric(api, PIECES, source="peer")
    fetched = await go_nodes.run(origin.url("/shared-go-next.bin"), ip="127.0.77.27")
    assert_ok(fetched, go_next, describe(fetched))
    assert await metric(api, PIECES, source="peer") > before, "our uploader served no piece of Go dfget's file"
    for path, data in (("/shared-go-first.bin", go_first), ("/shared-ours-next.bin", ours_next),
                       ("/shared-ours-first.bin", ours_first), ("/shared-go-next.bin", go_next)):
        assert_fetched_once(origin, path, len(data))
