"""Image preheat against a real registry (docker-registry 2.8): anonymous, Basic, token and TLS registries.

Each test pushes random layers through the registry API, preheats the image through the supernode's
API and then checks the CDN cache itself: every blob is there, complete, with the manifest's digest.
The registry is reached through :class:`~tests.preheat.registry.CountingProxy`, which counts the blob
bytes it sends, so a download after the preheat can be shown to cost the registry nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfwire.ids import preheat_id
from supernode.node import Supernode
from tests.preheat.conftest import PASSWORD, USER, NodeFactory, Registry, RegistryFactory
from tests.preheat.helpers import (
    api_url,
    cached_raw,
    get_preheat,
    metric,
    not_complete,
    post_preheat,
    preheat,
    sha256,
    wait_finished,
)
from tests.preheat.registry import Blob, basic, random_layers
from tests.v1proto import V1Client

MIB = 1024 * 1024


async def _children(http: aiohttp.ClientSession, node: Supernode, info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The layer preheats of an image preheat, by URL."""
    found = {}
    for cid in info.get("children", []):
        status, child = await get_preheat(http, node, cid)
        assert status == 200, child
        found[child["url"]] = child
    return found


async def assert_in_cdn(http: aiohttp.ClientSession, node: Supernode, registry: Registry, info: dict[str, Any],
                        name: str, blobs: tuple[Blob, ...]) -> None:
    """The image preheat succeeded and each blob is a SUCCESS child whose cached bytes have its digest."""
    assert info["status"] == "SUCCESS", info
    urls = [registry.blob_url(name, b.digest) for b in blobs]
    assert info["children"] == [preheat_id(url) for url in urls]
    children = await _children(http, node, info)
    for blob, url in zip(blobs, urls, strict=True):
        child = children[url]
        assert child["status"] == "SUCCESS" and child["type"] == "file", child
        assert sha256(cached_raw(node, child["ID"])) == blob.digest


async def test_anonymous_image_lands_in_the_cdn_and_a_dfget_costs_the_registry_nothing(
        make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    registry = await make_registry()
    image = await registry.pusher.image("library/app", "v1", random_layers(1000, 300_000, 5 * MIB))
    url = registry.manifest_url("library/app", "v1")
    info = await preheat(http, node, {"type": "image", "url": url})
    await assert_in_cdn(http, node, registry, info, "library/app", image.blobs)
    for blob in image.blobs:  # every blob crossed the proxy exactly once
        assert registry.proxy.blob_bytes[blob.digest] == len(blob.data)
    served, requests = registry.proxy.total_blob_bytes(), len(registry.proxy.log)

    big = image.layers[-1]
    async with V1Client(api_url(node), tmp_path / "dfget", uploader=None) as client:
        result = await client.download(registry.blob_url("library/app", big.digest))
    assert sha256(result.output.read_bytes()) == big.digest
    assert result.task_id == preheat_id(registry.blob_url("library/app", big.digest))
    assert registry.proxy.total_blob_bytes() == served and len(registry.proxy.log) == requests

    # Hours later the task has left memory (task GC): the CDN revalidates its copy, the registry sends no blob.
    small = image.layers[1]
    small_url = registry.blob_url("library/app", small.digest)
    await node.tasks.delete(preheat_id(small_url))
    async with V1Client(api_url(node), tmp_path / "dfget-later", uploader=None) as client:
        later = await client.download(small_url)
    assert sha256(later.output.read_bytes()) == small.digest
    assert registry.proxy.total_blob_bytes() == served
    assert [(r.path, r.status) for r in registry.proxy.log[requests:]] == [(f"/v2/library/app/blobs/{small.digest}",
                                                                          304)]

    status, again = await post_preheat(http, node, {"type": "image", "url": url})
    assert (status, again["ID"], again["code"]) == (208, info["ID"], 208)
    total = sum(len(b.data) for b in image.blobs)
    assert await metric(http, node, "dragonfly_supernode_preheat_bytes_total", type="image") == total
    assert await metric(http, node, "dragonfly_supernode_preheats", type="image", status="SUCCESS") == 1
    assert await metric(http, node, "dragonfly_supernode_preheats", type="file", status="SUCCESS") == 0


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-manifest-list"])
async def test_index_every_platform_or_only_the_chosen_ones(
        make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession, oci: bool) -> None:
    registry = await make_registry()
    shared = random_layers(200_000)[0]
    index = await registry.pusher.index("multi/app", "v2", {
        "linux/amd64": [shared, *random_layers(150_000)], "linux/arm64": [shared, *random_layers(170_000)]}, oci=oci)
    amd64, arm64 = index.images["linux/amd64"], index.images["linux/arm64"]
    url = registry.manifest_url("multi/app", "v2")

    info = await preheat(http, node, {"type": "image", "url": url, "platforms": ["linux/arm64"]})
    await assert_in_cdn(http, node, registry, info, "multi/app", arm64.blobs)
    assert registry.proxy.blob_bytes[amd64.layers[1].digest] == 0

    everything = await preheat(http, node, {"type": "image", "url": url, "identifier": "all-platforms"})
    expected = list(dict.fromkeys((*arm64.blobs, *amd64.blobs)))
    assert sorted(everything["children"]) == sorted(preheat_id(registry.blob_url("multi/app", b.digest))
                                                    for b in expected)
    for blob in expected:  # the arm64 blobs were cached already: joined, not fetched again
        assert sha256(cached_raw(node, preheat_id(registry.blob_url("multi/app", blob.digest)))) == blob.digest
        assert registry.proxy.blob_bytes[blob.digest] == len(blob.data)

    none = await preheat(http, node, {"type": "image", "url": url, "platforms": ["windows/amd64"]})
    assert none["status"] == "FAILED"
    assert "windows/amd64" in none["errorMsg"] and "linux/amd64, linux/arm64" in none["errorMsg"]


async def test_layers_shared_by_two_running_images_are_fetched_once(
        make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession) -> None:
    registry = await make_registry()
    base = random_layers(400_000)[0]
    one = await registry.pusher.image("team/one", "v1", [base, *random_layers(100_000)])
    two = await registry.pusher.image("team/one", "v2", [base, *random_layers(120_000)])
    registry.proxy.misbehave.hold_blobs = hold = asyncio.Event()
    _, first = await post_preheat(http, node, {"type": "image", "url": registry.manifest_url("team/one", "v1")})
    _, second = await post_preheat(http, node, {"type": "image", "url": registry.manifest_url("team/one", "v2")})
    shared = preheat_id(registry.blob_url("team/one", one.layers[0].digest))
    for _ in range(300):  # both images resolved and wait for the shared layer, which is still held back
        records = node.preheats.records
        if all(records[p["ID"]].children for p in (first, second)) and len(records[shared].waiters) == 2:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the two image preheats never both waited for the shared layer")
    hold.set()
    for created, image in ((first, one), (second, two)):
        info = await wait_finished(http, node, created["ID"])
        await assert_in_cdn(http, node, registry, info, "team/one", image.blobs)
    assert registry.proxy.blob_bytes[one.layers[0].digest] == len(base)


async def test_basic_auth_registry(make_registry: RegistryFactory, node: Supernode,
                                   http: aiohttp.ClientSession) -> None:
    registry = await make_registry(auth="basic")
    image = await registry.pusher.image("private/app", "v1", random_layers(50_000, 260_000))
    url = registry.manifest_url("private/app", "v1")
    info = await preheat(http, node, {"type": "image", "url": url, "headers": {"Authorization": basic(USER, PASSWORD)}})
    await assert_in_cdn(http, node, registry, info, "private/app", image.blobs)

    wrong = await preheat(http, node, {"type": "image", "url": url, "identifier": "wrong",
                                       "headers": {"Authorization": basic(USER, "not-the-password")}})
    assert wrong["status"] == "FAILED"
    assert "rejected the credentials given in headers (HTTP 401)" in wrong["errorMsg"]
    missing = await preheat(http, node, {"type": "image", "url": url, "identifier": "none"})
    assert missing["status"] == "FAILED" and "requires credentials" in missing["errorMsg"]


async def test_token_registry_with_anonymous_pull(make_registry: RegistryFactory, node: Supernode,
                                                  http: aiohttp.ClientSession) -> None:
    registry = await make_registry(auth="token", anonymous_pull=True)
    assert registry.token is not None
    image = await registry.pusher.image("library/app", "v1", random_layers(10_000, 700_000))
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")})
    await assert_in_cdn(http, node, registry, info, "library/app", image.blobs)
    assert registry.token.log, "the registry's challenge was not followed"
    assert all(r.authorization == "" and r.scopes == ["repository:library/app:pull"] and r.status == 200
               for r in registry.token.log)


async def test_token_registry_with_basic_credentials(make_registry: RegistryFactory, node: Supernode,
                                                     http: aiohttp.ClientSession) -> None:
    registry = await make_registry(auth="token", anonymous_pull=False)
    assert registry.token is not None
    image = await registry.pusher.image("private/app", "v1", random_layers(10_000, 300_000))
    url = registry.manifest_url("private/app", "v1")
    info = await preheat(http, node, {"type": "image", "url": url, "headers": {"Authorization": basic(USER, PASSWORD)}})
    await assert_in_cdn(http, node, registry, info, "private/app", image.blobs)
    assert registry.token.log and all(r.authorization == basic(USER, PASSWORD) for r in registry.token.log)

    wrong = await preheat(http, node, {"type": "image", "url": url, "identifier": "wrong",
                                       "headers": {"Authorization": basic(USER, "nope")}})
    assert wrong["status"] == "FAILED"
    assert wrong["errorMsg"] == (f"token endpoint {registry.token.realm} refused the credentials given in "
                                 f"headers (HTTP 401)")
    anonymous = await preheat(http, node, {"type": "image", "url": url, "identifier": "anonymous"})
    assert anonymous["status"] == "FAILED" and "refused anonymous access (HTTP 401)" in anonymous["errorMsg"]


async def test_token_given_in_headers_is_used_as_is(make_registry: RegistryFactory, node: Supernode,
                                                    http: aiohttp.ClientSession) -> None:
    registry = await make_registry(auth="token", anonymous_pull=False)
    assert registry.token is not None
    image = await registry.pusher.image("private/app", "v1", random_layers(10_000, 90_000))
    url = registry.manifest_url("private/app", "v1")
    token = registry.token.issue(["repository:private/app:pull"], subject=USER)
    info = await preheat(http, node, {"type": "image", "url": url, "headers": {"Authorization": f"Bearer {token}"}})
    await assert_in_cdn(http, node, registry, info, "private/app", image.blobs)
    assert registry.token.log == []

    forged = await preheat(http, node, {"type": "image", "url": url, "identifier": "forged",
                                        "headers": {"Authorization": f"Bearer {token[:-8]}AAAAAAAA"}})
    assert forged["status"] == "FAILED"
    assert "rejected the Bearer token given in headers" in forged["errorMsg"]


async def test_tls_registry_with_the_ca_given_to_the_preheat(make_registry: RegistryFactory, node: Supernode,
                                                             http: aiohttp.ClientSession) -> None:
    registry = await make_registry(tls=True)
    assert registry.proxy.url.startswith("https://")
    image = await registry.pusher.image("secure/app", "v1", random_layers(20_000, 600_000))
    url = registry.manifest_url("secure/app", "v1")

    untrusted = await preheat(http, node, {"type": "image", "url": url})
    assert untrusted["status"] == "FAILED" and "certificate verify failed" in untrusted["errorMsg"]

    status, retry = await post_preheat(http, node, {"type": "image", "url": url, "caCert": registry.ca_pem})
    assert status == 201 and retry["ID"] == untrusted["ID"]  # a FAILED preheat is tried again
    info = await wait_finished(http, node, retry["ID"])
    await assert_in_cdn(http, node, registry, info, "secure/app", image.blobs)

    insecure = await preheat(http, node, {"type": "image", "url": url, "insecure": True, "identifier": "insecure"})
    assert insecure["status"] == "SUCCESS"


async def test_delete_cancels_an_image_preheat_and_its_layers(
        make_registry: RegistryFactory, node: Supernode, http: aiohttp.ClientSession) -> None:
    registry = await make_registry()
    image = await registry.pusher.image("library/app", "v1", random_layers(300_000, 400_000))
    registry.proxy.misbehave.hold_blobs = asyncio.Event()
    _, created = await post_preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")})
    layer_ids = [preheat_id(registry.blob_url("library/app", b.digest)) for b in image.layers]
    await _until_fetching(node, layer_ids)
    async with http.delete(f"{api_url(node)}/api/v1/preheats/{created['ID']}") as resp:
        assert resp.status == 204
    async with http.get(f"{api_url(node)}/preheats") as resp:
        assert await resp.json() == []
    for tid in layer_ids:
        assert tid not in node.tasks.tasks  # the CDN downloads were stopped
        assert not_complete(node, tid)


async def test_an_image_preheat_that_runs_too_long_fails_with_timeout(
        make_registry: RegistryFactory, make_node: NodeFactory, http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_timeout=1.0)
    registry = await make_registry()
    image = await registry.pusher.image("library/app", "v1", random_layers(300_000))
    registry.proxy.misbehave.hold_blobs = asyncio.Event()
    info = await preheat(http, node, {"type": "image", "url": registry.manifest_url("library/app", "v1")}, within=10)
    assert info["status"] == "FAILED" and info["errorMsg"] == "timeout: not finished within 1s"
    layer = preheat_id(registry.blob_url("library/app", image.layers[0].digest))
    for _ in range(100):
        if node.preheats.records[layer].status == "FAILED":
            break
        await asyncio.sleep(0.02)
    # Stopped by the image's end (or, on a slow machine, by its own timeout a few ms later).
    assert node.preheats.records[layer].error_msg in ("cancelled", "timeout: not finished within 1s")
    assert layer not in node.tasks.tasks and not_complete(node, layer)


async def _until_fetching(node: Supernode, task_ids: list[str]) -> None:
    for _ in range(300):
        if all(tid in node.tasks.tasks for tid in task_ids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the layers never started")
