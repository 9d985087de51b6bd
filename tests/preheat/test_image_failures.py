"""Image preheats that must fail: each ends FAILED with a message that says why, and nothing half-written
stays in the CDN cache as if it were complete (no ``.md5`` seal, ``.meta`` without ``success``).
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from dfwire.ids import preheat_id
from supernode.node import Supernode
from tests.preheat.conftest import NodeFactory, RegistryFactory
from tests.preheat.helpers import cache_files, cached_raw, get_preheat, not_complete, preheat, sha256
from tests.preheat.registry import DOCKER_MANIFEST, random_layers

MIB = 1024 * 1024


async def test_unknown_image(make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession) -> None:
    registry = await make_registry()
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("nobody/nothing", "v1")})
    assert info["status"] == "FAILED" and "children" not in info
    assert info["errorMsg"] == (f"manifest nobody/nothing:v1 not found in registry {registry.proxy.host}: "
                                f"MANIFEST_UNKNOWN: manifest unknown (the repository nobody/nothing does not exist)")


async def test_unknown_tag(make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession) -> None:
    registry = await make_registry(auth="token")  # the 404 comes after the token dance
    await registry.pusher.image("library/app", "v1", random_layers(1000))
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v9")})
    assert info["status"] == "FAILED"
    assert info["errorMsg"] == (f"manifest library/app:v9 not found in registry {registry.proxy.host}: "
                                f"MANIFEST_UNKNOWN: manifest unknown (the repository library/app exists, the tag "
                                f"v9 does not)")


@pytest.mark.parametrize(("body", "fragment"), [
    (b"<html>gateway error</html>", "malformed manifest: not JSON"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": "sha256:abc", "size": 1},
                 "layers": []}).encode(), "malformed manifest: config: invalid or unsupported digest 'sha256:abc'"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"size": 1}, "layers": []}).encode(),
     "malformed manifest: config has no digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": "sha256:" + "0" * 64},
                 "layers": {"digest": "x"}}).encode(), "malformed manifest: image manifest without a layers list"),
    (json.dumps({"schemaVersion": 3}).encode(), "unsupported schemaVersion 3"),
], ids=["html", "bad-digest", "no-digest", "layers-not-a-list", "schema-3"])
async def test_malformed_manifest(make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession,
                                  body: bytes, fragment: str) -> None:
    registry = await make_registry()
    await registry.pusher.image("library/app", "v1", random_layers(1000))
    registry.proxy.misbehave.manifests["v1"] = (body, DOCKER_MANIFEST)
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")})
    assert info["status"] == "FAILED"
    assert info["errorMsg"].startswith(f"manifest library/app:v1 from {registry.proxy.host}: ")
    assert fragment in info["errorMsg"]
    assert registry.proxy.total_blob_bytes() == 0


async def test_registry_dies_mid_layer(make_registry: RegistryFactory, make_node: NodeFactory,
                                       http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_layer_concurrency=1)  # one layer at a time: the big one is cut last
    registry = await make_registry()
    image = await registry.pusher.image("library/app", "v1", random_layers(2000, 6 * MIB))
    big = image.layers[-1]
    registry.proxy.misbehave.cut_blob = (big.digest, 3 * MIB, registry.process.kill)
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")})
    assert info["status"] == "FAILED"
    assert registry.process.proc is not None and registry.process.proc.poll() is not None, "the registry lives"
    big_url = registry.blob_url("library/app", big.digest)
    big_id = preheat_id(big_url)
    _, child = await get_preheat(http, node, big_id)
    assert child["status"] == "FAILED" and child["errorMsg"].startswith("CDN fetch failed: source transfer failed")
    assert info["errorMsg"] == f"{big_url} {child['errorMsg']}"
    assert registry.proxy.blob_bytes[big.digest] == 3 * MIB
    assert not_complete(node, big_id)
    meta = node.store.read_meta(big_id)
    assert meta is None or (not meta.finish and not meta.success)
    for blob in image.blobs:  # whatever the CDN kept is either verified or visibly unfinished
        tid = preheat_id(registry.blob_url("library/app", blob.digest))
        meta = node.store.read_meta(tid)
        if meta is not None and meta.success:
            assert sha256(cached_raw(node, tid)) == blob.digest
        else:
            assert not_complete(node, tid)


async def test_a_layer_with_the_wrong_digest_is_not_kept(make_registry: RegistryFactory, node: Supernode,
                                                         http: aiohttp.ClientSession) -> None:
    registry = await make_registry()
    image = await registry.pusher.image("library/app", "v1", random_layers(5000, 200_000))
    bad = image.layers[-1]
    registry.proxy.misbehave.corrupt_blob = bad.digest
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")})
    assert info["status"] == "FAILED"
    bad_url = registry.blob_url("library/app", bad.digest)
    assert info["errorMsg"].startswith(f"{bad_url} digest mismatch: the registry sent 200000 bytes with sha256:")
    assert info["errorMsg"].endswith(f"promises 200000 bytes with {bad.digest}; the cached copy was deleted")
    bad_id = preheat_id(bad_url)
    assert cache_files(node, bad_id) == [] and bad_id not in node.tasks.tasks


async def test_a_registry_that_is_down(make_registry: RegistryFactory, node: Supernode,
                                       http: aiohttp.ClientSession) -> None:
    registry = await make_registry()
    registry.process.stop()
    url = registry.process.url + "/v2/library/app/manifests/v1"  # straight at the dead registry's port
    info = await preheat(http, node, {"type": "image", "url": url})
    assert info["status"] == "FAILED" and info["errorMsg"].startswith(f"registry 127.0.0.1:{registry.process.port} "
                                                                       f"unreachable: ")
