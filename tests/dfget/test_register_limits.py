"""What a real dfget tells the supernode on register: Go's keys, and the rate limits it runs with.

The supernode here is a recording double at the edge (a real local server answering the register with
607, URL not reachable, so dfget goes to the source as it would with any supernode that refuses).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.v1proto import OriginServer, pattern_bytes

from .conftest import DfgetNodes, file_md5, md5_hex

MIB = 1024 * 1024


async def test_dfget_tells_the_supernode_its_rate_limits(origin: OriginServer, nodes: DfgetNodes) -> None:
    bodies: list[dict[str, Any]] = []

    async def registry(request: web.Request) -> web.Response:
        bodies.append(json.loads(await request.read()))
        return web.json_response({"code": 607, "msg": "url is not reachable"})

    app = web.Application()
    app.router.add_post("/peer/registry", registry)
    data = pattern_bytes(MIB)
    origin.files["/f.bin"] = data
    async with TestServer(app, host="127.0.0.1") as server:
        node = f"127.0.0.1:{server.port}"
        shared = await nodes.run(origin.url("/f.bin"), "--node", node, "-s", "8M", "--totallimit", "3M")
        alone = await nodes.run(origin.url("/f.bin"), "--node", node, "--pattern", "cdn", ip="127.0.0.3")
    for result in (shared, alone):
        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data), "from the source, after the register was refused"
    assert len(bodies) == 2, bodies
    assert (bodies[0]["downloadLimit"], bodies[0]["uploadLimit"]) == (8 * MIB, 3 * MIB)
    # the default download limit (20M); no uploader, so no upload limit to tell
    assert bodies[1]["downloadLimit"] == 20 * MIB and "uploadLimit" not in bodies[1]
