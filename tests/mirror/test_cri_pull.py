"""containerd pulls through the node mirrors by CRI ``PullImage``, as kubelet does, on four nodes at once.

A green pull proves nothing by itself (containerd silently falls back to the registry), so every
test asserts on the counting proxy in front of the registry and on the mirrors' own counters.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.mirror.conftest import Node, NodesFactory
from tests.mirror.images import SKOPEO, PushedImage, push_image, random_image_layers, skopeo_push
from tests.preheat.conftest import RegistryFactory
from tests.v1proto import ClientFactory, SupernodeProcess, UploaderFactory

pytestmark = pytest.mark.mirror

MIB = 1024 * 1024


async def _pull_everywhere(nodes: list[Node], registry, image: PushedImage) -> None:
    refs = await asyncio.gather(*(n.pull(registry, f"{image.name}:{image.tag}") for n in nodes))
    assert refs == [image.config.digest] * len(nodes)


async def _mirror_totals(nodes: list[Node]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for node in nodes:
        for series, value in (await node.mirror.metrics()).items():
            totals[series] = totals.get(series, 0.0) + value
    return totals


async def test_four_nodes_pull_one_image_with_the_registry_sending_it_once(
        make_registry: RegistryFactory, make_nodes: NodesFactory, supernode: SupernodeProcess) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/app", "v1", random_image_layers(64 * MIB, 3 * MIB))
    nodes = await make_nodes(registry, 4, supernodes=[f"127.0.0.1:{supernode.api_port}"])

    await _pull_everywhere(nodes, registry, image)

    sent = registry.proxy.total_blob_bytes()
    print(f"registry blob bytes: {sent} for an image of {image.size} ({sent / image.size:.3f}x), 4 nodes")
    assert sent <= 1.05 * image.size
    totals = await _mirror_totals(nodes)
    assert totals['dragonfly_mirror_blobs_total{source="swarm"}'] == 4 * len(image.blobs)
    assert totals['dragonfly_mirror_blobs_total{source="registry"}'] == 0
    assert totals['dragonfly_mirror_blob_bytes_total{source="registry"}'] == 0
    swarm = totals['dragonfly_mirror_blob_bytes_total{source="peer"}'] + \
        totals['dragonfly_mirror_blob_bytes_total{source="cdn"}']
    assert swarm == 4 * image.size


async def test_a_preheated_image_is_pulled_with_no_blob_bytes_from_the_registry(
        make_registry: RegistryFactory, make_nodes: NodesFactory, supernode: SupernodeProcess, tmp_path: Path) -> None:
    if shutil.which(SKOPEO) is None:
        pytest.skip("skopeo is missing: apt-get install skopeo (scripts/test.sh does as root)")
    registry = await make_registry()
    # Pushed as a user would, with skopeo, straight to the registry (the counting proxy sees none of it).
    image = await skopeo_push(tmp_path / "layout", f"127.0.0.1:{registry.process.port}", "team/preheated", "v2",
                              random_image_layers(8 * MIB, 1 * MIB))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{supernode.api_url}/api/v1/preheats", json={
                "type": "image", "url": registry.manifest_url(image.name, image.tag)}) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        info = await _wait_preheat(http, supernode.api_url, answer["ID"])
    assert info["status"] == "SUCCESS", info
    preheated = registry.proxy.total_blob_bytes()
    assert preheated == image.size
    nodes = await make_nodes(registry, 4, supernodes=[f"127.0.0.1:{supernode.api_port}"])

    await _pull_everywhere(nodes, registry, image)

    print(f"registry blob bytes during the pulls after the preheat: {registry.proxy.total_blob_bytes() - preheated}")
    assert registry.proxy.total_blob_bytes() == preheated
    totals = await _mirror_totals(nodes)
    assert totals['dragonfly_mirror_blobs_total{source="swarm"}'] == 4 * len(image.blobs)


async def _wait_preheat(http: aiohttp.ClientSession, api: str, pid: str, within: float = 60.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    info: dict = {}
    while loop.time() < deadline:
        async with http.get(f"{api}/api/v1/preheats/{pid}") as resp:
            info = await resp.json()
        if info.get("status") in ("SUCCESS", "FAILED"):
            return info
        await asyncio.sleep(0.2)
    raise AssertionError(f"preheat {pid} not finished within {within:g}s: {info}")


async def test_corrupt_pieces_from_a_peer_are_fetched_again_and_never_reach_containerd(
        make_registry: RegistryFactory, make_nodes: NodesFactory, supernode: SupernodeProcess,
        make_uploader: UploaderFactory, make_client: ClientFactory) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/corrupt", "v1", random_image_layers(12 * MIB))
    layer = image.layers[0]
    # Peer A holds every piece of the layer (the supernode lists it as a source and prefers it to the CDN),
    # but flips a byte of every piece it serves.
    liar = await make_client("127.0.0.2", uploader=await make_uploader("127.0.0.2", corrupt=True))
    seeded = await liar.download(registry.blob_url(image.name, layer.digest))
    assert seeded.output.read_bytes() == layer.data
    [node] = await make_nodes(registry, 1, supernodes=[f"127.0.0.1:{supernode.api_port}"])

    assert await node.pull(registry, f"{image.name}:{image.tag}") == image.config.digest

    refused = [line for line in node.mirror.log_text(100000).splitlines()
               if "failed" in line and "http://127.0.0.2:" in line and " MD5 " in line]
    assert refused, "the mirror was handed the liar's pieces and refused them"
    metrics = await node.mirror.metrics()
    assert metrics['dragonfly_mirror_blobs_total{source="swarm"}'] == len(image.blobs)
    assert metrics['dragonfly_mirror_blob_bytes_total{source="registry"}'] == 0
