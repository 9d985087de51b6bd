"""Pulls through the mirror from registries that want credentials or speak TLS with a private CA.

containerd sends no credentials here (none are configured for it): the mirror answers the
registry's challenges with the node's credentials (a Docker ``config.json``) or an anonymous token,
and the supernode fetches the blobs with the same Authorization. Each test asserts that the blobs
came through the swarm and that the registry sent each blob once (to the CDN).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.mirror.conftest import NodesFactory
from tests.mirror.images import push_image, random_image_layers
from tests.preheat.conftest import PASSWORD, USER, Registry, RegistryFactory
from tests.v1proto import SupernodeProcess

pytestmark = pytest.mark.mirror

MIB = 1024 * 1024


def auth_file(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.proxy.host: {"auth": token}}}))
    return path


async def _pull_through_swarm(registry: Registry, make_nodes: NodesFactory, supernode: SupernodeProcess,
                              mirror_args: list[str]) -> None:
    image = await push_image(registry.pusher, "team/private", "v1", random_image_layers(4 * MIB))
    nodes = await make_nodes(registry, 2, supernodes=[f"127.0.0.1:{supernode.api_port}"], mirror_args=mirror_args)
    for node in nodes:
        assert await node.pull(registry, f"{image.name}:{image.tag}") == image.config.digest
        metrics = await node.mirror.metrics()
        assert metrics['dragonfly_mirror_blobs_total{source="swarm"}'] == len(image.blobs)
        assert metrics['dragonfly_mirror_blob_bytes_total{source="registry"}'] == 0
    assert registry.proxy.total_blob_bytes() == image.size


async def test_token_auth_with_anonymous_pulls(make_registry: RegistryFactory, make_nodes: NodesFactory,
                                               supernode: SupernodeProcess) -> None:
    registry = await make_registry(auth="token", anonymous_pull=True)
    await _pull_through_swarm(registry, make_nodes, supernode, [])
    assert registry.token is not None and any(r.status == 200 and not r.authorization for r in registry.token.log)


async def test_token_auth_with_the_nodes_credentials(make_registry: RegistryFactory, make_nodes: NodesFactory,
                                                     supernode: SupernodeProcess, tmp_path: Path) -> None:
    registry = await make_registry(auth="token", anonymous_pull=False)
    await _pull_through_swarm(registry, make_nodes, supernode, ["--auth-file", str(auth_file(tmp_path, registry))])
    assert registry.token is not None
    assert all(r.status == 200 and r.authorization.startswith("Basic ") for r in registry.token.log)


async def test_basic_auth_with_the_nodes_credentials(make_registry: RegistryFactory, make_nodes: NodesFactory,
                                                     supernode: SupernodeProcess, tmp_path: Path) -> None:
    registry = await make_registry(auth="basic")
    await _pull_through_swarm(registry, make_nodes, supernode, ["--auth-file", str(auth_file(tmp_path, registry))])


async def test_tls_registry_with_a_private_ca(make_registry: RegistryFactory, make_nodes: NodesFactory,
                                              supernode: SupernodeProcess) -> None:
    registry = await make_registry(tls=True)
    assert registry.tls is not None
    ca = registry.tls.cert_path
    await _pull_through_swarm(registry, make_nodes, supernode, ["--registry-ca", f"{registry.proxy.host}={ca}"])
