"""Preheat through the real ``python -m supernode`` process: an image from a real registry, then a dfget.

The in-process tests read the cache directly; this one only uses the wire, as an operator (POST
/preheats, poll) and a node's dfget would, and checks the registry's side through the counting proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from tests.preheat.conftest import RegistryFactory
from tests.preheat.helpers import FINISHED
from tests.preheat.registry import random_layers
from tests.v1proto import SupernodeProcess, V1Client


async def test_image_preheat_then_dfget_through_the_real_process(
        make_registry: RegistryFactory, supernode: SupernodeProcess, tmp_path: Path) -> None:
    registry = await make_registry(auth="token")
    image = await registry.pusher.image("library/app", "v1", random_layers(5000, 4_500_000))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{supernode.api_url}/preheats",
                             json={"type": "image", "url": registry.manifest_url("library/app", "v1")}) as resp:
            assert resp.status == 201
            pid = (await resp.json())["ID"]

        info: dict[str, Any] = {}
        for _ in range(600):  # 30 s at most
            async with http.get(f"{supernode.api_url}/api/v1/preheats/{pid}") as resp:
                info = await resp.json()
            if info["status"] in FINISHED:
                break
            await asyncio.sleep(0.05)
        assert info["status"] == "SUCCESS", info
        served = registry.proxy.total_blob_bytes()
        assert served == sum(len(b.data) for b in image.blobs)

    layer = image.layers[-1]
    async with V1Client(supernode.api_url, tmp_path / "dfget", uploader=None) as client:
        result = await client.download(registry.blob_url("library/app", layer.digest))
    assert "sha256:" + hashlib.sha256(result.output.read_bytes()).hexdigest() == layer.digest
    assert registry.proxy.total_blob_bytes() == served
