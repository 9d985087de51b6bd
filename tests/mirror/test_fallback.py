"""A pull never fails because of the swarm: a supernode killed mid-layer, or none at all, and the blob
still arrives whole, the rest of it from the registry, and the mirror says so in its log and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.mirror.conftest import NodesFactory
from tests.mirror.images import push_image, random_image_layers
from tests.preheat.conftest import RegistryFactory
from tests.v1proto import SupernodeProcess

pytestmark = pytest.mark.mirror

MIB = 1024 * 1024


async def _until_streamed(workdir: Path, size: int, within: float = 60.0) -> None:
    """Until the mirror's piece file of a blob in flight holds ``size`` bytes (pieces are written in place)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    incoming = workdir / "dfget-home" / "mirror" / "incoming"
    while loop.time() < deadline:
        for path in incoming.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # a finished or abandoned run removes its file
                if path.stat().st_size >= size:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no blob file under {incoming} reached {size} bytes within {within:g}s")


async def test_a_supernode_killed_mid_layer_leaves_the_rest_to_the_registry(
        make_registry: RegistryFactory, make_nodes: NodesFactory, supernode: SupernodeProcess) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/fallback", "v1", random_image_layers(24 * MIB))
    layer = image.layers[0]
    proxy = registry.proxy
    # The supernode's CDN gets 12 MiB of the layer (three whole 4 MiB pieces), then waits.
    resume = asyncio.Event()
    proxy.misbehave.pause_blob = (layer.digest, 12 * MIB, resume)
    [node] = await make_nodes(registry, 1, supernodes=[f"127.0.0.1:{supernode.api_port}"],
                              mirror_args=["--stall-timeout", "20s"])

    pull = asyncio.create_task(node.pull(registry, f"{image.name}:{image.tag}"))
    try:
        await _until_streamed(node.mirror.home.parent, 8 * MIB)
        assert supernode.proc is not None
        supernode.proc.kill()  # SIGKILL mid-layer: no goodbye to the peers
        proxy.misbehave.pause_blob = None
    finally:
        resume.set()
    assert await pull == image.config.digest

    metrics = await node.mirror.metrics()
    assert metrics['dragonfly_mirror_fallbacks_total{reason="swarm_failed"}'] == 1
    assert metrics['dragonfly_mirror_blobs_total{source="registry"}'] == 1
    from_registry = metrics['dragonfly_mirror_blob_bytes_total{source="registry"}']
    assert 0 < from_registry < len(layer.data), "the mirror fetched only what the swarm had not delivered"
    assert f"blob {layer.digest}: from the registry from byte" in node.mirror.log_text(20000)
    print(f"registry blob bytes: {proxy.total_blob_bytes()} (CDN before the kill + the mirror's "
          f"{from_registry:.0f}) for an image of {image.size}")


async def test_without_a_supernode_every_blob_comes_from_the_registry(
        make_registry: RegistryFactory, make_nodes: NodesFactory) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/direct", "v1", random_image_layers(2 * MIB))
    [node] = await make_nodes(registry, 1, supernodes=[])

    assert await node.pull(registry, f"{image.name}:{image.tag}") == image.config.digest

    metrics = await node.mirror.metrics()
    assert metrics['dragonfly_mirror_blobs_total{source="registry"}'] == len(image.blobs)
    assert metrics['dragonfly_mirror_fallbacks_total{reason="no_supernode"}'] == len(image.blobs)
    assert registry.proxy.total_blob_bytes() == image.size
