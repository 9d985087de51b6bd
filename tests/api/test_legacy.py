"""The dfget v1 endpoints: envelopes, result codes, lenient decoding and error answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from supernode.node import Supernode
from tests.v1proto import OriginServer

CID = "127.0.0.2-30093-1795617819.298"


def register_body(url: str, **extra: Any) -> dict[str, Any]:
    body = {"superNodeIp": "127.0.0.1", "rawUrl": url, "taskUrl": url, "cid": CID, "ip": "127.0.0.2",
            "hostName": "vm", "port": 15101, "path": "/peer/file/out1-30093-1795617819.298", "version": "1.0.6",
            "pattern": "p2p"}
    body.update(extra)
    return body


async def register(api: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await api.post("/peer/registry", data=json.dumps(body),
                          headers={"Content-Type": "application/json;charset=utf-8"})
    raw = await resp.read()
    return resp.status, json.loads(raw)


async def test_register_answers_the_exact_envelope(api: TestClient, origin: OriginServer) -> None:
    origin.files["/a.bin"] = b"x" * 1000
    resp = await api.post("/peer/registry", data=json.dumps(register_body(origin.url("/a.bin"))),
                          headers={"Content-Type": "application/json;charset=utf-8"})
    raw = await resp.read()
    assert resp.status == 200 and raw.endswith(b"}\n")
    body = json.loads(raw)
    assert list(body) == ["code", "data", "msg"] and body["code"] == 200 and body["msg"] == "success"
    assert list(body["data"]) == ["taskId", "fileLength", "pieceSize", "cdnSource", "asSeed", "seedTaskID"]
    assert body["data"]["fileLength"] == 1000 and body["data"]["cdnSource"] == "supernode"


async def test_register_form_encoded_and_case_insensitive_keys(api: TestClient, origin: OriginServer) -> None:
    origin.files["/a.bin"] = b"abc"
    form = f"RAWURL={origin.url('/a.bin')}&CID=c1&IP=127.0.0.3&HostName=h&Port=15000&Path=/peer/file/x" \
           "&headers=X-A: 1&headers=X-B: 2"
    resp = await api.post("/peer/registry", data=form.encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    body = await resp.json()
    assert body["code"] == 200, body
    status, body = await register(api, {"RAWURL": origin.url("/a.bin"), "CID": "c2", "IP": "127.0.0.3",
                                        "PATH": "/p", "PORT": 15000})
    assert status == 200 and body["code"] == 200


@pytest.mark.parametrize(("extra", "status"), [
    ({"ip": "not-an-ip"}, 400), ({"port": 80}, 400), ({"rawUrl": "ftp://127.0.0.1/x", "taskUrl": ""}, 400),
    ({"cid": ""}, 400), ({"ip": ""}, 400), ({"path": ""}, 400), ({"port": "x"}, 400),
    ({"downloadLimit": -1}, 400), ({"uploadLimit": "fast"}, 400),
])
async def test_register_rejects_bad_input(api: TestClient, origin: OriginServer, extra: dict[str, Any],
                                          status: int) -> None:
    origin.files["/a.bin"] = b"abc"
    got, body = await register(api, register_body(origin.url("/a.bin"), **extra))
    assert got == status and set(body) == {"code", "message"}


async def test_register_reads_the_rate_limits_our_dfget_tells(api: TestClient, origin: OriginServer,
                                                               node: Supernode) -> None:
    """``downloadLimit`` and ``uploadLimit`` are ours (Go dfget sends neither): the scheduler plans with them."""
    origin.files["/a.bin"] = b"abc"
    status, body = await register(api, register_body(origin.url("/a.bin"), downloadLimit=20 * 1024**2,
                                                     uploadLimit=10 * 1024**2))
    assert status == 200 and body["code"] == 200
    status, body = await register(api, register_body(origin.url("/a.bin"), cid="127.0.0.3-1-1.000", ip="127.0.0.3"))
    assert status == 200 and body["code"] == 200
    told = {node.peers.get(pid).ip: node.progress.peer(pid).told_down
            for pid in node.progress.peer_ids() if pid != node.super_peer.id}
    assert told == {"127.0.0.2": 20 * 1024**2, "127.0.0.3": 0}
    assert node.progress.rates.told_up == 10 * 1024**2, "what one source gives, for the flows of such clients"


async def test_register_bad_json_is_a_clear_400(api: TestClient) -> None:
    for raw in (b"{bad", b"", b"[1]"):
        resp = await api.post("/peer/registry", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert set(await resp.json()) == {"code", "message"}


async def test_unreachable_source_answers_607_and_is_remembered(api: TestClient, origin: OriginServer) -> None:
    status, body = await register(api, register_body(origin.url("/missing.bin")))
    assert status == 200 and body["code"] == 607 and "404" in body["msg"]
    status, body = await register(api, register_body(origin.url("/missing.bin"), cid="other"))
    assert status == 200 and body["code"] == 607 and body["msg"].startswith("cache ")
    assert origin.requests["/missing.bin"] == 1


async def test_task_id_conflict(api: TestClient, origin: OriginServer) -> None:
    origin.files["/ok2.bin"] = b"x" * 1000
    status, _ = await register(api, register_body(origin.url("/ok2.bin"), md5="abc"))
    assert status == 200
    status, body = await register(api, register_body(origin.url("/ok2.bin"), identifier="abc", cid="c9"))
    assert status == 409 and "taskId conflict" in body["message"]


async def _pull(api: TestClient, query: str) -> dict[str, Any]:
    resp = await api.get(f"/peer/task?{query}")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_pull_loop_codes(api: TestClient, origin: OriginServer, node: Supernode) -> None:
    zero = "0" * 64
    body = await _pull(api, f"srcCid=x&dstCid=&range=&result=502&status=700&taskId={zero}")
    assert body["code"] == 502 and "data" not in body
    origin.files["/t.bin"] = b"hello Dragonfly"
    _, reg = await register(api, register_body(origin.url("/t.bin")))
    tid = reg["data"]["taskId"]
    body = await _pull(api, f"srcCid={CID}&dstCid=&range=&result=&status=&taskId={tid}")
    assert body["code"] == 501
    body = await _pull(api, f"srcCid={CID}&dstCid=&range=&result=502&status=701&taskId={tid}")
    assert body["code"] == 501
    for _ in range(100):
        body = await _pull(api, f"srcCid={CID}&dstCid=&range=&result=502&status=700&taskId={tid}")
        if body["code"] == 601:
            break
        assert body["code"] == 602
        await asyncio.sleep(0.02)
    [item] = body["data"]
    assert list(item) == ["range", "pieceNum", "pieceSize", "pieceMd5", "cid", "peerIp", "peerPort", "path",
                          "downLink"]
    assert item["pieceMd5"] == "8f95b369fc1f8d38262bb1b42d1ac87c:20"
    dst = item["cid"]
    assert dst == f"cdnnode:127.0.0.1~{tid}" and item["path"] == f"/download/{tid[:3]}/{tid}"
    suc = await api.get(f"/peer/piece/suc?taskId={tid}&cid={CID}&dstCid={dst}&pieceRange={item['range']}")
    assert suc.status == 200 and await suc.json() == {"code": 611}
    body = await _pull(api, f"srcCid={CID}&dstCid={dst}&range={item['range']}&result=503&status=701&taskId={tid}")
    for _ in range(100):  # the client holds every piece; 602 until the CDN has sealed the file
        if body["code"] != 602:
            break
        await asyncio.sleep(0.02)
        body = await _pull(api, f"srcCid={CID}&dstCid=&range=&result=502&status=700&taskId={tid}")
    assert body == {"code": 600, "data": {"fileLength": 20, "md5": "a6692a2fcad80f04a0250410d311917a"}}
    body = await _pull(api, f"srcCid={CID}&dstCid={dst}&range={item['range']}&result=501&status=702&taskId={tid}")
    assert body == {"code": 600}
    metrics = await (await api.get("/metrics")).text()
    assert "dragonfly_supernode_pieces_downloaded_size_bytes_total 20.0" in metrics
    down = await api.get(f"/peer/service/down?taskId={tid}&cid={CID}")
    assert down.status == 200 and await down.json() == {"code": 612}
    again = await api.get(f"/peer/service/down?taskId={tid}&cid={CID}")
    assert again.status == 400


async def test_report_errors_are_json_4xx(api: TestClient) -> None:
    zero = "0" * 64
    resp = await api.get(f"/peer/piece/suc?taskId={zero}&cid=a&dstCid=cdnnode:127.0.0.1~{zero}&pieceRange=0-9")
    assert resp.status == 404 and set(await resp.json()) == {"code", "message"}
    resp = await api.get(f"/peer/service/down?taskId={zero}&cid=nobody")
    assert resp.status == 404
    resp = await api.get(f"/peer/piece/error?taskId={zero}&range=0-4194303&srcCid=a&dstCid=b&dstIp=127.0.0.1"
                         "&realMd5=x&expectedMd5=y&errorType=FILE_NOT_EXIST")
    assert resp.status == 200 and await resp.read() == b""


async def test_stubs_and_metrics_report(api: TestClient) -> None:
    assert await (await api.post("/peer/network", json={})).json() == {"nodes": None}
    assert await (await api.post("/peer/heartbeat")).json() == {"seedTaskIDs": None}
    report = {"IP": "127.0.0.2", "backsourceReason": "0", "cid": CID, "callSystem": "ci", "duration": 1.5,
              "fileLength": 100, "port": 15101, "success": True, "taskId": "t"}
    resp = await api.post("/task/metrics", json=report)
    assert resp.status == 200 and await resp.read() == b"null\n"
    resp = await api.post("/task/metrics", json={**report, "success": False, "backsourceReason": "3"})
    assert resp.status == 200
    await api.post("/task/metrics", data=b"{bad")
    text = await (await api.get("/metrics")).text()
    assert 'dragonfly_dfget_download_total{callsystem="ci",peer="127.0.0.2"} 2.0' in text
    assert 'dragonfly_dfget_download_failed_total{callsystem="ci",peer="127.0.0.2",reason="3"} 1.0' in text
    assert 'dragonfly_dfget_download_size_bytes_total{callsystem="ci",peer="127.0.0.2"} 100.0' in text


async def test_task_info_does_not_echo_credentials(api: TestClient, origin: OriginServer) -> None:
    origin.files["/secret.bin"] = b"s"
    _, body = await register(api, register_body(origin.url("/secret.bin"),
                                                headers=["Authorization: Basic dXNlcjpwYXNz", "X-Trace: 1"]))
    info = await (await api.get(f"/api/v1/tasks/{body['data']['taskId']}")).json()
    assert info["headers"] == {"Authorization": "<redacted>", "X-Trace": "1"}


async def test_pieces_never_reported_are_taken_back(tmp_path: Any, aiohttp_client: Any,
                                                    origin: OriginServer) -> None:
    from supernode.config import Settings

    node = Supernode(Settings(home_dir=tmp_path / "h", advertise_ip="127.0.0.1", client_min_rate="1G",
                              piece_timeout_margin=0.3, down_limit=1))
    try:
        api = await aiohttp_client(node.api_app())
        origin.files["/two.bin"] = bytes(5 * 1024 * 1024)
        _, reg = await register(api, register_body(origin.url("/two.bin")))
        tid = reg["data"]["taskId"]
        query = f"srcCid={CID}&dstCid=&range=&result=502&status=700&taskId={tid}"
        for _ in range(100):
            body = await _pull(api, query)
            if body["code"] == 601:
                break
            await asyncio.sleep(0.02)
        first = body["data"][0]["pieceNum"]
        busy = await _pull(api, query)
        assert busy["code"] in (601, 602) and "data" not in busy, "the only download slot is taken"
        await asyncio.sleep(0.4)
        again = await _pull(api, query)
        assert again["code"] == 601, again
        assert again["data"][0]["pieceNum"] in (0, 1) and len(again["data"]) == 1
        assert first in (0, 1)
    finally:
        await node.stop()
