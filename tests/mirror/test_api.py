"""The mirror's registry API over plain HTTP (no containerd): OCI errors for bad input, relayed manifests,
blobs streamed whole and verified, a digest mismatch that never reaches the client complete."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from tests.mirror.conftest import MirrorFactory
from tests.mirror.images import push_image, random_image_layers
from tests.preheat.conftest import PASSWORD, USER, RegistryFactory
from tests.preheat.registry import basic
from tests.v1proto import SupernodeProcess, free_port

pytestmark = pytest.mark.mirror

MIB = 1024 * 1024
UNKNOWN = "sha256:" + "0" * 64


async def _get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_bad_input_gets_oci_errors(make_registry: RegistryFactory, make_mirror: MirrorFactory) -> None:
    registry = await make_registry()
    mirror = await make_mirror(registry, supernodes=[])
    ns = f"ns={registry.proxy.host}"
    async with aiohttp.ClientSession() as http:
        cases = [
            (f"/v2/team/app/blobs/{UNKNOWN}?{ns}", 404, "BLOB_UNKNOWN"),
            (f"/v2/Team/App/blobs/{UNKNOWN}?{ns}", 400, "NAME_INVALID"),
            (f"/v2/team/app/blobs/sha256:xyz?{ns}", 400, "DIGEST_INVALID"),
            (f"/v2/team/app/blobs/md5:{'0' * 32}?{ns}", 400, "DIGEST_INVALID"),
            (f"/v2/team/app/manifests/{'x' * 200}?{ns}", 400, "MANIFEST_INVALID"),
            (f"/v2/team/app/blobs/{UNKNOWN}?ns=elsewhere.example:5000", 404, "NAME_UNKNOWN"),
            (f"/v2/team/app/uploads/?{ns}", 404, "UNSUPPORTED"),
        ]
        for path, status, code in cases:
            async with http.get(mirror.url + path) as resp:
                body = await resp.json()
                assert resp.status == status, (path, body)
                assert body["errors"][0]["code"] == code, (path, body)
                assert body["code"] == code and body["message"], body
    assert registry.proxy.total_blob_bytes() == 0


async def test_manifests_are_relayed_and_blobs_verified(make_registry: RegistryFactory,
                                                        make_mirror: MirrorFactory,
                                                        supernode: SupernodeProcess) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/api", "v1", random_image_layers(5 * MIB))
    mirror = await make_mirror(registry, supernodes=[f"127.0.0.1:{supernode.api_port}"])
    ns = f"ns={registry.proxy.host}"
    status, headers, body = await _get(f"{mirror.url}/v2/team/api/manifests/v1?{ns}",
                                       Accept="application/vnd.oci.image.manifest.v1+json")
    assert status == 200 and headers["Docker-Content-Digest"] == image.manifest_digest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.manifest_digest
    layer = image.layers[0]
    for attempt in ("swarm", "local"):
        status, headers, body = await _get(f"{mirror.url}/v2/team/api/blobs/{layer.digest}?{ns}")
        assert status == 200 and body == layer.data, attempt
    metrics = await mirror.metrics()
    assert metrics['dragonfly_mirror_blobs_total{source="swarm"}'] == 1
    assert metrics['dragonfly_mirror_blobs_total{source="local"}'] == 1
    assert registry.proxy.total_blob_bytes() == len(layer.data)


async def test_a_blob_that_does_not_match_its_digest_never_arrives_complete(
        make_registry: RegistryFactory, make_mirror: MirrorFactory, supernode: SupernodeProcess) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/bad", "v1", random_image_layers(6 * MIB))
    layer = image.layers[0]
    registry.proxy.misbehave.corrupt_blob = layer.digest  # the CDN caches what the registry sends
    mirror = await make_mirror(registry, supernodes=[f"127.0.0.1:{supernode.api_port}"])
    url = f"{mirror.url}/v2/team/bad/blobs/{layer.digest}?ns={registry.proxy.host}"
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200 and resp.content_length == len(layer.data)
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(received) < len(layer.data)
    metrics = await mirror.metrics()
    assert metrics["dragonfly_mirror_blob_failures_total"] == 1
    assert not any((mirror.home / "mirror" / "blobs" / "sha256").iterdir()), "a bad blob is not kept"
    assert "digest mismatch" in mirror.log_text(20000)
    # The registry is well again; the CDN still holds the bad copy: the next pull goes to the registry.
    registry.proxy.misbehave.corrupt_blob = ""
    status, _, body = await _get(url)
    assert status == 200 and body == layer.data
    metrics = await mirror.metrics()
    assert metrics['dragonfly_mirror_fallbacks_total{reason="bad_swarm_copy"}'] == 1
    assert metrics['dragonfly_mirror_blobs_total{source="registry"}'] == 1


async def test_metrics_on_a_listener_of_their_own(make_registry: RegistryFactory, make_mirror: MirrorFactory) -> None:
    registry = await make_registry()
    port = free_port("127.0.0.1")
    await make_mirror(registry, supernodes=[], mirror_args=["--metrics-listen", f"127.0.0.1:{port}"])
    status, _, body = await _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and b'dragonfly_mirror_blobs_total{source="swarm"} 0.0' in body
    status, _, _ = await _get(f"http://127.0.0.1:{port}/v2/")
    assert status == 404, "the metrics listener serves no registry API"


async def test_several_registries_by_ns(make_registry: RegistryFactory, make_mirror: MirrorFactory,
                                        supernode: SupernodeProcess) -> None:
    first, second = await make_registry(), await make_registry()
    one = await push_image(first.pusher, "lib/app", "v1", random_image_layers(1 * MIB))
    two = await push_image(second.pusher, "lib/app", "v1", random_image_layers(1 * MIB))
    mirror = await make_mirror(first, supernodes=[f"127.0.0.1:{supernode.api_port}"],
                               mirror_args=["--registry", f"{second.proxy.host}={second.proxy.url}"])
    accept = "application/vnd.oci.image.manifest.v1+json"
    for registry, image in ((first, one), (second, two)):
        ns = f"ns={registry.proxy.host}"
        status, headers, _ = await _get(f"{mirror.url}/v2/lib/app/manifests/v1?{ns}", Accept=accept)
        assert status == 200 and headers["Docker-Content-Digest"] == image.manifest_digest
        status, _, body = await _get(f"{mirror.url}/v2/lib/app/blobs/{image.layers[0].digest}?{ns}")
        assert status == 200 and body == image.layers[0].data
        assert registry.proxy.total_blob_bytes() == len(image.layers[0].data)


async def test_the_runtimes_credentials_are_passed_through(make_registry: RegistryFactory,
                                                           make_mirror: MirrorFactory,
                                                           supernode: SupernodeProcess) -> None:
    registry = await make_registry(auth="basic")
    image = await push_image(registry.pusher, "team/secret", "v1", random_image_layers(2 * MIB))
    mirror = await make_mirror(registry, supernodes=[f"127.0.0.1:{supernode.api_port}"])  # no node credentials
    ns = f"ns={registry.proxy.host}"
    layer = image.layers[0]
    status, headers, _ = await _get(f"{mirror.url}/v2/team/secret/manifests/v1?{ns}")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), "the challenge reaches the runtime"
    status, _, _ = await _get(f"{mirror.url}/v2/team/secret/blobs/{layer.digest}?{ns}")
    assert status == 401
    auth = basic(USER, PASSWORD)
    status, headers, _ = await _get(f"{mirror.url}/v2/team/secret/manifests/v1?{ns}", Authorization=auth,
                                    Accept="application/vnd.oci.image.manifest.v1+json")
    assert status == 200 and headers["Docker-Content-Digest"] == image.manifest_digest
    status, _, body = await _get(f"{mirror.url}/v2/team/secret/blobs/{layer.digest}?{ns}", Authorization=auth)
    assert status == 200 and body == layer.data
    metrics = await mirror.metrics()
    assert metrics['dragonfly_mirror_blobs_total{source="swarm"}'] == 1, "the supernode fetched with the header"
    status, _, _ = await _get(f"{mirror.url}/v2/team/secret/blobs/{layer.digest}?{ns}")
    assert status == 401, "the node's copy is no way around the registry's auth"
    status, _, body = await _get(f"{mirror.url}/v2/team/secret/blobs/{layer.digest}?{ns}", Authorization=auth)
    assert status == 200 and body == layer.data
    assert (await mirror.metrics())['dragonfly_mirror_blobs_total{source="local"}'] == 1


async def test_the_node_cache_keeps_the_most_recently_used_blobs(make_registry: RegistryFactory,
                                                                 make_mirror: MirrorFactory,
                                                                 supernode: SupernodeProcess) -> None:
    registry = await make_registry()
    image = await push_image(registry.pusher, "team/lru", "v1", random_image_layers(2 * MIB, 2 * MIB))
    mirror = await make_mirror(registry, supernodes=[f"127.0.0.1:{supernode.api_port}"],
                               mirror_args=["--cache-size", "3M"])
    ns = f"ns={registry.proxy.host}"
    for layer in image.layers:
        status, _, body = await _get(f"{mirror.url}/v2/team/lru/blobs/{layer.digest}?{ns}")
        assert status == 200 and body == layer.data
    # a blob joins the node's cache (and makes room there) just after its last byte went out: wait a little
    blobs = mirror.home / "mirror" / "blobs" / "sha256"
    want = {image.layers[1].digest.removeprefix("sha256:")}
    for _ in range(100):
        kept = {p.name for p in blobs.iterdir()}
        if kept == want:
            break
        await asyncio.sleep(0.05)
    assert kept == want, "the older blob made room"
