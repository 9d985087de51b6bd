"""File preheat and the ``/preheats`` API: states, repeats, cancellation, timeout, concurrency, GC, metrics.

The origin is ``tests.v1proto.OriginServer`` (it counts requests and bytes per path), or a gated origin
that sends the headers and a first chunk and then waits, so a preheat can be caught RUNNING.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dfwire.ids import task_id
from supernode.models import CdnStatus
from supernode.node import Supernode
from tests.preheat.conftest import NodeFactory
from tests.preheat.helpers import (
    api_url,
    cached_raw,
    get_preheat,
    not_complete,
    post_preheat,
    preheat,
    wait_finished,
)
from tests.v1proto import OriginServer, V1Client, pattern_bytes

PREFIXES = ["", "/api/v1", "/v1.24", "/v1.24/api/v1"]
RFC3339_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EPOCH = "1970-01-01T00:00:00.000Z"


class GatedOrigin:
    """Sends the headers and the first KiB of each file at once, the rest only when ``gate`` is set."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.gate = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests[request.path] += 1
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        resp = web.StreamResponse(headers={"ETag": '"x"', "Content-Type": "application/octet-stream"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[:1024])
        await self.gate.wait()
        await resp.write(data[1024:])
        await resp.write_eof()
        return resp


@pytest.fixture
async def gated() -> AsyncIterator[GatedOrigin]:
    origin = GatedOrigin()
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


async def _status_becomes(http: aiohttp.ClientSession, node: Supernode, pid: str, wanted: str) -> dict[str, Any]:
    for _ in range(200):
        status, info = await get_preheat(http, node, pid)
        assert status == 200
        if info["status"] == wanted:
            return info
        await asyncio.sleep(0.02)
    raise AssertionError(f"preheat {pid} never became {wanted}: {info}")


async def _running_preheat(http: aiohttp.ClientSession, node: Supernode, gated: GatedOrigin) -> str:
    """A file preheat whose origin holds back its body, so it stays RUNNING; its ID."""
    gated.files["/slow.bin"] = pattern_bytes(200_000)
    _, created = await post_preheat(http, node, {"type": "file", "url": gated.url("/slow.bin")})
    pid: str = created["ID"]
    await _status_becomes(http, node, pid, "RUNNING")
    return pid


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_file_preheat_fills_the_cache_dfget_then_uses(
        prefix: str, node: Supernode, origin: OriginServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = pattern_bytes(5 * 1024 * 1024 + 123)
    origin.files["/f.bin"] = data
    url = origin.url("/f.bin")
    status, created = await post_preheat(http, node, {"type": "file", "url": url}, prefix)
    assert status == 201 and set(created) == {"ID"}
    pid = created["ID"]
    assert pid == task_id(url)  # §2.1 item 7: the preheat ID is the task ID dfget will register
    info = await wait_finished(http, node, pid, prefix=prefix)
    assert info["status"] == "SUCCESS" and "errorMsg" not in info
    assert RFC3339_MILLIS.match(info["startTime"]) and RFC3339_MILLIS.match(info["finishTime"])
    assert info["startTime"] <= info["finishTime"] != EPOCH
    assert info["type"] == "file" and info["url"] == url
    assert cached_raw(node, pid) == data
    assert origin.requests["/f.bin"] == 1 and origin.bytes_sent["/f.bin"] == len(data)

    async with aiohttp.ClientSession() as s, s.get(f"{api_url(node)}{prefix}/preheats") as resp:
        assert resp.status == 200
        assert [p["ID"] for p in await resp.json()] == [pid]

    async with V1Client(api_url(node), tmp_path / "dfget", uploader=None) as client:
        result = await client.download(url)
    assert result.task_id == pid
    assert hashlib.md5(result.output.read_bytes()).hexdigest() == hashlib.md5(data).hexdigest()
    assert origin.requests["/f.bin"] == 1 and origin.bytes_sent["/f.bin"] == len(data)  # the origin saw nothing new


async def test_filter_identifier_and_headers_shape_the_id(node: Supernode, origin: OriginServer,
                                                         http: aiohttp.ClientSession) -> None:
    origin.files["/g.bin"] = b"g" * 2000
    url = origin.url("/g.bin") + "?token=abc&keep=1"
    status, created = await post_preheat(http, node, {"type": "file", "url": url, "filter": "token",
                                                      "identifier": "v2", "headers": {"X-Trace": "1"}})
    assert status == 201
    assert created["ID"] == task_id(origin.url("/g.bin") + "?keep=1", identifier="v2")
    assert (await wait_finished(http, node, created["ID"]))["status"] == "SUCCESS"
    assert origin.log[-1].headers.get("X-Trace") == "1"


async def test_repeats_join_a_running_preheat_and_report_a_finished_one(
        make_node: NodeFactory, gated: GatedOrigin, http: aiohttp.ClientSession) -> None:
    node = await make_node()
    data = pattern_bytes(300_000)
    gated.files["/slow.bin"] = data
    body = {"type": "file", "url": gated.url("/slow.bin")}
    status, first = await post_preheat(http, node, body)
    assert status == 201
    pid = first["ID"]
    info = await _status_becomes(http, node, pid, "RUNNING")
    assert info["finishTime"] == EPOCH
    for prefix in PREFIXES:  # the same preheat, joined: 200 and the same ID, no second fetch
        status, again = await post_preheat(http, node, body, prefix)
        assert (status, again) == (200, {"ID": pid})
    gated.gate.set()
    assert (await wait_finished(http, node, pid))["status"] == "SUCCESS"
    status, done = await post_preheat(http, node, body)
    assert status == 208
    assert done == {"ID": pid, "code": 208, "message": f"preheat task already exists, id:{pid}"}
    assert gated.requests["/slow.bin"] == 1
    assert cached_raw(node, pid) == data

    # The disk GC evicts the content: the old SUCCESS is worthless, so the repeat is a new preheat.
    await node.tasks.delete(pid, full=True)
    status, fresh = await post_preheat(http, node, body)
    assert (status, fresh) == (201, {"ID": pid})
    assert (await wait_finished(http, node, pid))["status"] == "SUCCESS"
    assert gated.requests["/slow.bin"] == 2


async def test_a_failed_preheat_says_why_and_a_repeat_retries(
        make_node: NodeFactory, origin: OriginServer, http: aiohttp.ClientSession) -> None:
    node = await make_node(fail_access_interval=0)
    url = origin.url("/late.bin")
    info = await preheat(http, node, {"type": "file", "url": url})
    assert info["status"] == "FAILED" and info["finishTime"] != EPOCH
    assert "404" in info["errorMsg"]
    origin.files["/late.bin"] = b"now it exists"
    status, again = await post_preheat(http, node, {"type": "file", "url": url})
    assert (status, again) == (201, {"ID": info["ID"]})
    done = await wait_finished(http, node, info["ID"])
    assert done["status"] == "SUCCESS" and "errorMsg" not in done


async def test_delete_cancels_a_running_preheat(make_node: NodeFactory, gated: GatedOrigin,
                                               http: aiohttp.ClientSession) -> None:
    node = await make_node()
    pid = await _running_preheat(http, node, gated)
    record = node.preheats.records[pid]
    for _ in range(200):  # the CDN has the headers and waits for the rest of the body
        if pid in node.tasks.tasks:
            break
        await asyncio.sleep(0.01)
    assert node.tasks.tasks[pid].cdn_status == CdnStatus.RUNNING
    async with http.delete(f"{api_url(node)}/preheats/{pid}") as resp:
        assert resp.status == 204
    assert record.status == "FAILED" and record.error_msg == "cancelled"
    assert (await get_preheat(http, node, pid))[0] == 404
    assert pid not in node.tasks.tasks  # the CDN download nobody else used was stopped
    assert not_complete(node, pid)
    async with http.delete(f"{api_url(node)}/preheats/{pid}") as resp:
        assert resp.status == 404
        assert set(await resp.json()) == {"code", "message"}


async def test_a_stopping_node_never_answers_that_its_own_shutdown_failed_a_preheat(
        make_node: NodeFactory, gated: GatedOrigin, http: aiohttp.ClientSession) -> None:
    """The operator takes FAILED for a real failure and gives up; the preheat must be submitted again instead."""
    node = await make_node()
    pid = await _running_preheat(http, node, gated)
    record = node.preheats.records[pid]
    seen_after_cancel: list[str] = []

    async def poll() -> None:
        for _ in range(10_000):  # until the API is gone
            cancelled = record.status == "FAILED"
            try:
                _, info = await get_preheat(http, node, pid)
            except aiohttp.ClientError:
                return
            if cancelled:
                seen_after_cancel.append(info["status"])
            await asyncio.sleep(0)

    poller = asyncio.create_task(poll())
    await asyncio.sleep(0.05)
    await node.stop()
    await asyncio.wait_for(poller, 10)
    assert record.status == "FAILED" and record.error_msg == "cancelled"
    assert seen_after_cancel == [], "the API answered after the shutdown had cancelled the preheat"


async def test_a_preheat_that_runs_too_long_fails_with_timeout(make_node: NodeFactory, gated: GatedOrigin,
                                                               http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_timeout=0.5)
    gated.files["/slow.bin"] = pattern_bytes(200_000)
    info = await preheat(http, node, {"type": "file", "url": gated.url("/slow.bin")}, within=10)
    assert info["status"] == "FAILED" and info["errorMsg"].startswith("timeout")
    assert info["ID"] not in node.tasks.tasks
    assert not_complete(node, info["ID"])


async def test_concurrency_is_bounded(make_node: NodeFactory, gated: GatedOrigin, origin: OriginServer,
                                      http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_concurrency=1)
    gated.files["/slow.bin"] = pattern_bytes(100_000)
    origin.files["/quick.bin"] = b"q" * 100
    _, first = await post_preheat(http, node, {"type": "file", "url": gated.url("/slow.bin")})
    await _status_becomes(http, node, first["ID"], "RUNNING")
    _, second = await post_preheat(http, node, {"type": "file", "url": origin.url("/quick.bin")})
    await asyncio.sleep(0.3)
    _, info = await get_preheat(http, node, second["ID"])
    assert info["status"] == "WAITING" and info["finishTime"] == EPOCH
    assert origin.requests["/quick.bin"] == 0
    gated.gate.set()
    assert (await wait_finished(http, node, second["ID"]))["status"] == "SUCCESS"
    assert (await wait_finished(http, node, first["ID"]))["status"] == "SUCCESS"


async def test_finished_preheats_are_garbage_collected(make_node: NodeFactory, origin: OriginServer,
                                                       http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_gc_threshold=0.3, preheat_gc_interval=0.1)
    origin.files["/gc.bin"] = b"x" * 100
    info = await preheat(http, node, {"type": "file", "url": origin.url("/gc.bin")})
    assert info["status"] == "SUCCESS"
    for _ in range(100):
        if (await get_preheat(http, node, info["ID"]))[0] == 404:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the finished preheat was never collected")
    async with http.get(f"{api_url(node)}/preheats") as resp:
        assert await resp.json() == []
    assert node.store.read_meta(info["ID"]) is not None  # GC forgets the record, not the cached content


async def test_gc_keeps_what_is_young_or_unfinished(make_node: NodeFactory, gated: GatedOrigin,
                                                    http: aiohttp.ClientSession) -> None:
    node = await make_node(preheat_gc_threshold=60)
    gated.files["/slow.bin"] = pattern_bytes(10_000)
    _, created = await post_preheat(http, node, {"type": "file", "url": gated.url("/slow.bin")})
    await _status_becomes(http, node, created["ID"], "RUNNING")
    assert node.preheats.collect(now=10**12) == 0  # running: never collected, however old
    gated.gate.set()
    info = await wait_finished(http, node, created["ID"])
    record = node.preheats.records[info["ID"]]
    assert node.preheats.collect(now=record.finish_time + 59) == 0
    assert node.preheats.collect(now=record.finish_time + 60) == 1


@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "empty request"),
    (b"{bad", "invalid JSON"),
    (b'{"type": "foo", "url": "http://127.0.0.1/x"}', "type"),
    (b'{"type": "file", "url": "ab"}', "url"),
    (b'{"url": "http://127.0.0.1/x"}', "type"),
    (b'{"type": "file"}', "url"),
    (b'{"type": "file", "url": "ftp://127.0.0.1/x"}', "http"),
    (b'{"type": "image", "url": "http://127.0.0.1:5000/library/app:v1"}', "manifest URL"),
    (b'{"type": "image", "url": "http://127.0.0.1:5000/v2/Bad_Name/manifests/v1"}', "repository name"),
    (b'{"type": "image", "url": "http://127.0.0.1:5000/v2/app/manifests/v1", "platforms": ["linux"]}', "platform"),
    (b'{"type": "image", "url": "http://127.0.0.1:5000/v2/app/manifests/v1", "caCert": "not a cert"}', "caCert"),
    (b'[]', "JSON object"),
])
async def test_bad_requests_answer_400_with_a_json_error(node: Supernode, http: aiohttp.ClientSession,
                                                         body: bytes, fragment: str) -> None:
    async with http.post(f"{api_url(node)}/api/v1/preheats", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert set(answer) == {"code", "message"} and answer["code"] == 400
    assert fragment in answer["message"]
    assert node.preheats.records == {}


async def test_keys_match_in_any_case(node: Supernode, origin: OriginServer, http: aiohttp.ClientSession) -> None:
    origin.files["/c.bin"] = b"c" * 10
    status, created = await post_preheat(http, node, {"TYPE": "file", "Url": origin.url("/c.bin")})
    assert status == 201
    assert (await wait_finished(http, node, created["ID"]))["status"] == "SUCCESS"


async def test_unknown_ids_answer_404(node: Supernode, http: aiohttp.ClientSession) -> None:
    for prefix in PREFIXES:
        status, answer = await get_preheat(http, node, "unknown", prefix)
        assert status == 404 and answer["code"] == 404 and "unknown" in answer["message"]


async def test_a_url_cannot_be_a_file_and_an_image_at_once(make_node: NodeFactory, gated: GatedOrigin,
                                                           http: aiohttp.ClientSession) -> None:
    node = await make_node()
    url = gated.url("/v2/app/manifests/v1")
    _, created = await post_preheat(http, node, {"type": "file", "url": url})
    status, answer = await post_preheat(http, node, {"type": "image", "url": url})
    assert status == 409 and answer["code"] == 409
    assert node.preheats.records[created["ID"]].type == "file"


async def test_metrics_count_preheats_by_type_and_state(node: Supernode, origin: OriginServer,
                                                        http: aiohttp.ClientSession) -> None:
    origin.files["/m.bin"] = b"m" * 4321
    await preheat(http, node, {"type": "file", "url": origin.url("/m.bin")})
    await preheat(http, node, {"type": "file", "url": origin.url("/missing.bin")})
    async with http.get(f"{api_url(node)}/metrics") as resp:
        text = await resp.text()
    for line in (
        'dragonfly_supernode_preheats{status="SUCCESS",type="file"} 1.0',
        'dragonfly_supernode_preheats{status="FAILED",type="file"} 1.0',
        'dragonfly_supernode_preheats{status="RUNNING",type="image"} 0.0',
        'dragonfly_supernode_preheats_finished_total{status="SUCCESS",type="file"} 1.0',
        'dragonfly_supernode_preheats_finished_total{status="FAILED",type="file"} 1.0',
        'dragonfly_supernode_preheat_duration_seconds_count{status="SUCCESS",type="file"} 1.0',
        'dragonfly_supernode_preheat_bytes_total{type="file"} 4321.0',
        'dragonfly_supernode_preheat_bytes_total{type="image"} 0.0',
    ):
        assert line in text.splitlines(), line
    assert 'dragonfly_supernode_http_requests_total{code="201",handler="/api/v1/preheats"} 2.0' in text


async def test_openapi_describes_the_preheat_routes(node: Supernode, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api_url(node)}/openapi.json") as resp:
        doc = await resp.json()
    for path in ("/preheats", "/api/v1/preheats", "/v{version}/preheats", "/api/v1/preheats/{id}"):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/preheats/{id}"]) == {"get", "delete"}
    request = doc["components"]["schemas"]["PreheatCreateRequest"]["properties"]
    assert {"type", "url", "filter", "identifier", "headers", "platforms", "caCert", "insecure"} <= set(request)
    info = doc["components"]["schemas"]["PreheatInfo"]["properties"]
    assert {"ID", "startTime", "finishTime", "status", "errorMsg"} <= set(info)
