"""The SuperNode REST API: status codes, error bodies, paging and sorting, prefixes."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from supernode.node import Supernode
from tests.v1proto import OriginServer

PREFIXES = ["", "/api/v1", "/v1.24", "/v1.24/api/v1"]


async def _error(resp: Any, status: int) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == status
    assert body["message"]
    return str(body["message"])


async def _peer(api: TestClient, ip: str = "127.0.0.2", host: str = "node-a", port: int = 15001) -> str:
    resp = await api.post("/api/v1/peers", json={"IP": ip, "hostName": host, "port": port, "version": "1.0.6"})
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"ID"}
    return str(body["ID"])


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_peer_lifecycle_under_every_prefix(api: TestClient, prefix: str) -> None:
    resp = await api.post(f"{prefix}/peers", json={"ip": "127.0.0.9", "HOSTNAME": "h", "port": 20000})
    assert resp.status == 201
    pid = (await resp.json())["ID"]
    assert pid.startswith("h-127.0.0.9-")
    resp = await api.get(f"{prefix}/peers/{pid}")
    assert resp.status == 200
    info = await resp.json()
    assert info["ID"] == pid and info["IP"] == "127.0.0.9" and info["port"] == 20000
    assert info["created"].endswith("Z") and len(info["created"]) == len("2026-11-25T14:45:30.644Z")
    resp = await api.delete(f"{prefix}/peers/{pid}")
    assert resp.status == 204
    await _error(await api.get(f"{prefix}/peers/{pid}"), 404)
    await _error(await api.delete(f"{prefix}/peers/{pid}"), 404)


@pytest.mark.parametrize("body", [
    {"IP": "1.2.3", "hostName": "h", "port": 20000},
    {"IP": "::1", "hostName": "h", "port": 20000},
    {"IP": "127.0.0.1", "hostName": "", "port": 20000},
    {"IP": "127.0.0.1", "hostName": "bad host!", "port": 20000},
    {"IP": "127.0.0.1", "hostName": "h", "port": 80},
    {"IP": "127.0.0.1", "hostName": "h", "port": 70000},
    {"IP": "127.0.0.1", "hostName": "h", "port": "x"},
    {"hostName": "h", "port": 20000},
    [],
    "text",
])
async def test_create_peer_rejects_bad_input(api: TestClient, body: Any) -> None:
    await _error(await api.post("/peers", json=body), 400)


async def test_bad_json_and_empty_body(api: TestClient) -> None:
    assert "invalid JSON" in await _error(await api.post("/peers", data=b"{bad"), 400)
    assert "empty" in await _error(await api.post("/peers", data=b""), 400)
    await _error(await api.post("/peers", data=b"x" * (1024 * 1024 + 10)), 413)


async def test_list_peers_sorts_by_the_given_keys_and_pages(api: TestClient, node: Supernode) -> None:
    await _peer(api, host="b", port=15003)
    await _peer(api, host="a", port=15002)
    await _peer(api, host="b", port=15001)
    await _peer(api, host="c", port=15002)

    async def listing(query: str) -> list[tuple[str, int]]:
        resp = await api.get(f"/api/v1/peers?{query}")
        assert resp.status == 200, await resp.text()
        return [(p["hostName"], p["port"]) for p in await resp.json() if p["ID"] != node.super_peer.id]

    assert await listing("sortKey=port") == [("b", 15001), ("a", 15002), ("c", 15002), ("b", 15003)]
    assert await listing("sortKey=hostName&sortKey=port") == [("a", 15002), ("b", 15001), ("b", 15003),
                                                             ("c", 15002)]
    assert await listing("sortKey=hostName,port&sortDirect=desc") == [("c", 15002), ("b", 15003), ("b", 15001),
                                                                      ("a", 15002)]
    assert await listing("sortKey=port&sortKey=hostName&sortDirect=DESC") == [
        ("b", 15003), ("c", 15002), ("a", 15002), ("b", 15001)]
    everyone = await (await api.get("/peers?sortKey=port")).json()
    assert len(everyone) == 5
    page = await (await api.get("/peers?sortKey=port&pageSize=2&pageNum=1")).json()
    assert [p["ID"] for p in page] == [p["ID"] for p in everyone[2:4]]
    assert await (await api.get("/peers?pageSize=2&pageNum=9")).json() == []


@pytest.mark.parametrize("query", ["pageNum=-1", "pageSize=x", "sortDirect=UP", "sortKey=nope"])
async def test_list_peers_rejects_bad_query(api: TestClient, query: str) -> None:
    await _error(await api.get(f"/peers?{query}"), 400)


async def test_unknown_path_and_wrong_method_answer_json(api: TestClient) -> None:
    await _error(await api.get("/nothing/here"), 404)
    await _error(await api.put("/peers"), 405)
    await _error(await api.get("/v1.24/nothing"), 404)


async def test_system_endpoints(api: TestClient) -> None:
    for path in ("/_ping", "/v1.24/_ping"):
        resp = await api.get(path)
        assert resp.status == 200 and await resp.read() == b"OK"
    resp = await api.get("/version")
    raw = await resp.read()
    assert not raw.endswith(b"\n")
    assert list(await resp.json())[:2] == ["Arch", "GoVersion"]
    resp = await api.get("/metrics")
    text = await resp.text()
    assert "dragonfly_supernode_build_info" in text
    assert 'dragonfly_supernode_http_requests_total{code="200",handler="/version"}' in text
    assert 'dragonfly_supernode_http_requests_total{code="200",handler="/_ping"} 2.0' in text


async def test_openapi_documents_every_served_route(api: TestClient) -> None:
    doc = await (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    served = set()
    for resource in api.app.router.resources():
        info = resource.get_info()
        template = info.get("formatter") or info.get("path")
        served.add(str(template).replace("{version:[0-9.]+}", "{version}"))
    assert served == set(doc["paths"])
    schemas = doc["components"]["schemas"]
    for path_item in doc["paths"].values():
        for op in path_item.values():
            for response in op["responses"].values():
                for media in response.get("content", {}).values():
                    ref = media["schema"].get("$ref") or media["schema"].get("items", {}).get("$ref")
                    if ref:
                        assert ref.rsplit("/", 1)[1] in schemas
    assert "rawURL" in schemas["RegisterRequest"]["properties"]


async def _task(api: TestClient, origin: OriginServer, pid: str, data: bytes, *, cid: str = "cid-1") -> dict[str, Any]:
    origin.files["/f.bin"] = data
    resp = await api.post("/api/v1/tasks", json={"cID": cid, "rawURL": origin.url("/f.bin"), "peerID": pid,
                                                 "path": f"/peer/file/{cid}"})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _until_success(api: TestClient, task_id: str) -> dict[str, Any]:
    for _ in range(200):
        info: dict[str, Any] = await (await api.get(f"/api/v1/tasks/{task_id}")).json()
        if info["cdnStatus"] == "SUCCESS":
            return info
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never succeeded: {info}")


async def test_task_and_piece_lifecycle(api: TestClient, origin: OriginServer, node: Supernode) -> None:
    pid = await _peer(api)
    data = bytes(i % 251 for i in range(5 * 1024 * 1024))
    created = await _task(api, origin, pid, data)
    assert set(created) == {"ID", "fileLength", "pieceSize", "cdnSource"}
    assert created["fileLength"] == len(data) and created["pieceSize"] == 4 * 1024 * 1024
    task_id = created["ID"]
    info = await _until_success(api, task_id)
    assert info["pieceTotal"] == 2 and info["httpFileLength"] == len(data)
    assert info["realMd5"] == hashlib.md5(data).hexdigest()
    listing = await (await api.get("/tasks")).json()
    assert [t["ID"] for t in listing] == [task_id]

    resp = await api.get(f"/api/v1/tasks/{task_id}/pieces?clientID=cid-1&num=1",
                         json={"dfgetTaskStatus": "STARTED"})
    pieces = await resp.json()
    assert resp.status == 200 and len(pieces) == 1
    assert set(pieces[0]) == {"pID", "path", "peerIP", "peerPort", "pieceMD5", "pieceRange", "pieceSize"}
    assert pieces[0]["pID"] == node.super_peer.id and pieces[0]["peerPort"] == 18001
    first = pieces[0]["pieceRange"]
    resp = await api.put(f"/tasks/{task_id}/pieces/{first}",
                         json={"clientID": "cid-1", "dstPID": node.super_peer.id, "pieceStatus": "SUCCESS"})
    assert resp.status == 200
    resp = await api.get(f"/tasks/{task_id}/pieces?clientID=cid-1", json={"dfgetTaskStatus": "RUNNING"})
    rest = await resp.json()
    assert [p["pieceRange"] for p in rest] and first not in [p["pieceRange"] for p in rest]
    resp = await api.put(f"/tasks/{task_id}", json={"peerID": pid})
    assert resp.status == 200
    resp = await api.delete(f"/tasks/{task_id}?full=true")
    assert resp.status == 204
    await _error(await api.get(f"/tasks/{task_id}"), 404)
    await _error(await api.delete(f"/tasks/{task_id}"), 404)
    assert not node.store.data_path(task_id).exists()


async def test_a_cid_taken_over_by_another_peer_is_no_longer_the_first_peers(
    api: TestClient, origin: OriginServer, node: Supernode,
) -> None:
    """Peer B registers the CID peer A used: A has no download left to finish, before and after B leaves."""
    first, second = await _peer(api), await _peer(api, ip="127.0.0.3", host="node-b")
    task_id = (await _task(api, origin, first, b"x" * 1000))["ID"]
    assert (await _task(api, origin, second, b"x" * 1000))["ID"] == task_id
    await _error(await api.put(f"/tasks/{task_id}", json={"peerID": first}), 404)
    assert (await api.delete(f"/peers/{second}")).status == 204
    await _error(await api.put(f"/tasks/{task_id}", json={"peerID": first}), 404)
    await _error(await api.put(f"/tasks/{task_id}", json={"peerID": second}), 404)


async def test_task_errors(api: TestClient, origin: OriginServer) -> None:
    unknown = "0" * 64
    await _error(await api.get(f"/tasks/{unknown}"), 404)
    await _error(await api.put(f"/tasks/{unknown}", json={"peerID": "p"}), 404)
    await _error(await api.get(f"/tasks/{unknown}/pieces?clientID=c"), 404)
    await _error(await api.get(f"/tasks/{unknown}/pieces"), 400)
    await _error(await api.put(f"/tasks/{unknown}/pieces/0-9", json={"clientID": "c", "dstPID": "p",
                                                                     "pieceStatus": "SUCCESS"}), 404)
    await _error(await api.put(f"/tasks/{unknown}/pieces/0-9", json={"clientID": "c"}), 400)
    await _error(await api.post("/tasks", json={"cID": "c", "rawURL": origin.url("/x"), "peerID": "nobody"}), 404)
    pid = await _peer(api)
    await _error(await api.post("/tasks", json={"cID": "c", "rawURL": "ftp://x/y", "peerID": pid}), 400)
    origin.files["/there.bin"] = b"abc"
    assert "not reachable" in await _error(
        await api.post("/tasks", json={"cID": "c", "rawURL": origin.url("/missing.bin"), "peerID": pid}), 400)
    await _error(await api.delete(f"/tasks/{unknown}?full=maybe"), 400)


@pytest.mark.parametrize(("path", "category", "sample"), [
    ("/", "legacy api", "/peer/registry"), ("/api/v1/", "v1 api", "/api/v1/peers"),
    ("/v1.24/api/v1/", "v1 api", "/api/v1/tasks/{id}/pieces"), ("/api/ext/", "extension api", None),
])
async def test_category_indexes(api: TestClient, path: str, category: str, sample: str | None) -> None:
    body = await (await api.get(path)).json()
    assert body["category"] == category
    paths = [entry["path"] for entry in body["api"]]
    assert sample in paths if sample else paths == []
