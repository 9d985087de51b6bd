"""Hand-written hostile input for the dfget v1 endpoints, the REST API and the download port.

Each case is something a broken or malicious client can send. The promise: never a 5xx; every error of
the API is a 4xx JSON ``{"code","message"}`` (the legacy pull loop keeps dfget's envelope in an HTTP
200); nothing outside the cache directory is read or deleted; and no report can make the supernode
believe in pieces that do not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from dfwire import pieces
from tests.integration.conftest import PIECE_SIZE, Api, Node, md5_hex, pattern_bytes

from .conftest import NodeFactory, OriginFactory

ZERO = "0" * 64
CID = "127.0.0.2-4242-1.000"


async def send(http: aiohttp.ClientSession, method: str, url: str, *, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """The URL is sent as written (no re-quoting), so ``%2e%2e`` and ``%ff`` reach the server."""
    async with http.request(method, URL(url, encoded=True), data=data, headers=headers or {}) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


def check_error(status: int, body: bytes, content_type: str, *, expected: int | tuple[int, ...]) -> dict[str, Any]:
    wanted = expected if isinstance(expected, tuple) else (expected,)
    assert status in wanted, (status, body[:300])
    assert content_type.startswith("application/json"), (content_type, body[:300])
    answer = json.loads(body)
    assert isinstance(answer, dict) and set(answer) == {"code", "message"} and answer["code"] == status, answer
    assert isinstance(answer["message"], str) and answer["message"]
    return answer


def register_body(url: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"superNodeIp": "127.0.0.1", "rawUrl": url, "taskUrl": url, "cid": CID, "ip": "127.0.0.2",
                            "hostName": "peer", "port": 15001, "path": f"/peer/file/{CID}", "version": "1.0.6"}
    body.update(extra)
    return body


@pytest.fixture
async def node(start_node: NodeFactory) -> Node:
    return await start_node(source_allow=["127.0.0.0/8"])


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file next to the supernode's home that path traversal would reach."""
    path = tmp_path / "canary"
    path.write_text("must survive")
    return path


TRAVERSALS = ["..", "../../canary", "..%2F..%2Fcanary", "%2e%2e", "%2e%2e%2f%2e%2e%2fcanary", "%2E%2E/canary",
              "....//canary", "%00", f"{ZERO}%00.meta", "%ff%fe", "/etc/passwd", "%2Fetc%2Fpasswd", "..%5c..%5ccanary",
              ZERO.upper(), ZERO + "/../" + ZERO]


async def test_path_traversal_in_task_and_preheat_ids(node: Node, http: aiohttp.ClientSession, canary: Path) -> None:
    repo = node.home / "repo"

    def listing() -> list[str]:
        return sorted(p.name for p in repo.rglob("*"))

    before = listing()
    for hostile in TRAVERSALS:
        for method, path in (("GET", f"/tasks/{hostile}"), ("GET", f"/api/v1/tasks/{hostile}"),
                             ("DELETE", f"/tasks/{hostile}?full=true"), ("PUT", f"/tasks/{hostile}"),
                             ("GET", f"/tasks/{hostile}/pieces?clientID=x"),
                             ("PUT", f"/tasks/{hostile}/pieces/0-4194303"),
                             ("GET", f"/preheats/{hostile}"), ("DELETE", f"/api/v1/preheats/{hostile}"),
                             ("GET", f"/peers/{hostile}"), ("DELETE", f"/peers/{hostile}")):
            data = b'{"peerID":"p","clientID":"c","dstPID":"d","pieceStatus":"SUCCESS"}' if method == "PUT" else None
            status, body, content_type = await send(http, method, node.api + path, data=data,
                                                    headers={"Content-Type": "application/json"})
            check_error(status, body, content_type, expected=(400, 404, 405))
        for query in (f"taskId={hostile}&cid={CID}&dstCid=cdnnode:127.0.0.1~{hostile}&pieceRange=0-4194303",):
            status, body, content_type = await send(http, "GET", f"{node.api}/peer/piece/suc?{query}")
            check_error(status, body, content_type, expected=(400, 404))
        status, body, _ = await send(http, "GET", f"{node.api}/peer/task?srcCid={CID}&dstCid=&range=&result=502"
                                                    f"&status=700&taskId={hostile}")
        assert status == 200 and json.loads(body)["code"] == 502
        status, body, content_type = await send(http, "GET", f"{node.api}/peer/service/down?taskId={hostile}&cid=x")
        check_error(status, body, content_type, expected=404)
        # A bad-piece report naming the CDN triggers a cache check: it must not touch anything for these IDs.
        status, _, _ = await send(http, "GET", f"{node.api}/peer/piece/error?taskId={hostile}&range=0-4194303"
                                               f"&srcCid={CID}&dstCid=cdnnode:127.0.0.1~{hostile}&dstIp=127.0.0.1"
                                               "&realMd5=a&expectedMd5=b&errorType=FILE_NOT_EXIST")
        assert status == 200
        for path in (f"/download/{hostile}", f"/download/{ZERO[:3]}/{hostile}", f"/download/{hostile}/{ZERO}",
                     f"/download/../{hostile}", f"/download/{hostile[:3]}/{hostile}.meta"):
            status, body, content_type = await send(http, "GET", node.cdn + path, headers={"Range": "bytes=0-99"})
            check_error(status, body, content_type, expected=404)
    await asyncio.sleep(0.2)  # let any queued piece-error check run
    assert canary.read_text() == "must survive"  # noqa: ASYNC240 - a few bytes, once
    assert listing() == before


async def finished_task(node: Node, http: aiohttp.ClientSession, make_origin: OriginFactory, size: int,
                        seed: int) -> tuple[str, bytes]:
    origin = await make_origin()
    data = pattern_bytes(size, seed=seed)
    origin.put("/pieces.bin", data)
    status, body, _ = await send(http, "POST", node.api + "/peer/registry",
                                 data=json.dumps(register_body(origin.url("/pieces.bin"))).encode(),
                                 headers={"Content-Type": "application/json"})
    answer = json.loads(body)
    assert status == 200 and answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    await Api(http, node).wait_cdn(task_id, {"SUCCESS"})
    return task_id, data


BAD_RANGES = ["../../etc/passwd", "4194303-0", "-1-4194302", "0-0", "1-4194304", "0-4194304", "12582912-16777215",
              f"{10**20}-{10**20 + PIECE_SIZE - 1}", "9" * 5000 + "-1", "0x0-0x3fffff", "0%20-%204194303", "%00",
              "4194304-8388607,0-4194303", ""]


async def test_hostile_piece_ranges_are_refused_and_leave_no_phantom_pieces(
        node: Node, http: aiohttp.ClientSession, make_origin: OriginFactory) -> None:
    task_id, data = await finished_task(node, http, make_origin, 10 * 1024 * 1024, seed=80)  # 3 pieces
    cdn = f"cdnnode:127.0.0.1~{task_id}"
    for hostile in BAD_RANGES:
        status, body, content_type = await send(
            http, "GET", f"{node.api}/peer/piece/suc?taskId={task_id}&cid={CID}&dstCid={cdn}&pieceRange={hostile}")
        check_error(status, body, content_type, expected=400)
        status, body, _ = await send(http, "GET", f"{node.api}/peer/task?srcCid={CID}&dstCid={cdn}&range={hostile}"
                                                    f"&result=503&status=701&taskId={task_id}")
        assert status == 200 and json.loads(body)["code"] == 501, (hostile, body)
        if hostile:
            status, body, content_type = await send(
                http, "PUT", f"{node.api}/tasks/{task_id}/pieces/{hostile}",
                data=json.dumps({"clientID": CID, "dstPID": "x", "pieceStatus": "SUCCESS"}).encode(),
                headers={"Content-Type": "application/json"})
            check_error(status, body, content_type, expected=(400, 404))
    # None of that counted: the client still has every piece to fetch, and gets exactly the real ones.
    got: dict[int, bytes] = {}
    for _ in range(10):  # bounded: each pull hands out what the client may run at once
        status, body, _ = await send(http, "GET", f"{node.api}/peer/task?srcCid={CID}&dstCid=&range=&result=502"
                                                    f"&status=700&taskId={task_id}")
        answer = json.loads(body)
        if answer["code"] != 601:
            break
        for item in answer["data"]:
            assert item["pieceNum"] not in got, answer
            status, body, _ = await send(http, "GET", f"{node.cdn}{item['path']}",
                                         headers={"Range": f"bytes={item['range']}"})
            assert status == 206
            got[item["pieceNum"]] = pieces.unwrap(body)
            status, body, _ = await send(http, "GET", f"{node.api}/peer/piece/suc?taskId={task_id}&cid={CID}"
                                                        f"&dstCid={item['cid']}&pieceRange={item['range']}")
            assert (status, json.loads(body)) == (200, {"code": 611})
    assert sorted(got) == [0, 1, 2], answer
    assert b"".join(got[num] for num in sorted(got)) == data
    status, body, _ = await send(http, "GET", f"{node.api}/peer/task?srcCid={CID}&dstCid={cdn}&range=0-4194303"
                                                f"&result=503&status=701&taskId={task_id}")
    assert json.loads(body) == {"code": 600, "data": {"fileLength": pieces.wrapped_length(len(data), PIECE_SIZE),
                                                      "md5": md5_hex(data)}}


@pytest.mark.parametrize("range_value", ["bytes=5-1", "bytes=abc", "bytes=-", "bytes=0-0,5-9", "items=0-9",
                                         f"bytes={10**30}-", "bytes=--1", "bytes=1-2-3", "bytes=" + "9" * 5000 + "-",
                                         "bytes=99999999-99999999"])
async def test_download_port_answers_bad_ranges_with_416(node: Node, http: aiohttp.ClientSession,
                                                         make_origin: OriginFactory, range_value: str) -> None:
    task_id, _ = await finished_task(node, http, make_origin, 100_000, seed=81)
    status, body, _ = await send(http, "GET", f"{node.cdn}/download/{task_id[:3]}/{task_id}",
                                 headers={"Range": range_value})
    assert status == 416 and body == b""


async def raw_http(port: int, request: bytes, *, read_limit: int = 65536) -> tuple[int, bytes]:
    """Send bytes no well-behaved client library would produce; return the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(read_limit), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_huge_headers_urls_and_malformed_requests_are_4xx(node: Node) -> None:
    for port in (node.settings.port, node.settings.download_port):
        cases = [
            b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            b"GET /_ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(5000)) + b"\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /_ping?" + b"q=" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /_ping HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /peer/registry HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            b"GET /_ping HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        ]
        for request in cases:
            status, _ = await raw_http(port, request)
            assert 400 <= status < 500, (port, request[:60], status)
    # Header values that are not UTF-8 reach the handlers decoded leniently, never as a crash.
    status, body = await raw_http(node.settings.port, b"GET /peers HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n"
                                                      b"Connection: close\r\n\r\n")
    assert status == 200 and body.startswith(b"[")


async def test_a_body_that_arrives_in_pieces_is_read_whole(node: Node, http: aiohttp.ClientSession) -> None:
    """Regression: a JSON body was parsed from its first read only, so a slow or chunked upload got a 400."""
    body = json.dumps({"IP": "127.0.0.2", "hostName": "slow", "port": 15000}).encode()

    async def trickle() -> Any:
        for start in range(0, len(body), 8):
            yield body[start:start + 8]
            await asyncio.sleep(0.02)

    status, answer, _ = await send(http, "POST", node.api + "/peers", data=trickle(),
                                   headers={"Content-Type": "application/json"})
    assert status == 201, answer


BIG = b'{"rawUrl":"' + b"a" * (2 * 1024 * 1024) + b'"}'


async def test_huge_bodies_answer_413_json(node: Node, http: aiohttp.ClientSession) -> None:
    for path in ("/peer/registry", "/peers", "/api/v1/tasks", "/preheats", "/task/metrics", "/peer/network"):
        status, body, content_type = await send(http, "POST", node.api + path, data=BIG,
                                                headers={"Content-Type": "application/json"})
        check_error(status, body, content_type, expected=413)

    async def chunks() -> Any:  # no Content-Length: the limit must hold while reading
        for _ in range(40):
            yield b"[" * 65536

    status, body, content_type = await send(http, "POST", node.api + "/peer/registry", data=chunks(),
                                            headers={"Content-Type": "application/json"})
    check_error(status, body, content_type, expected=413)
    form = b"rawUrl=" + b"a" * (2 * 1024 * 1024)
    status, body, content_type = await send(http, "POST", node.api + "/peer/registry", data=form,
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    check_error(status, body, content_type, expected=413)


@pytest.mark.parametrize(("extra", "status"), [
    ({"ip": "::1"}, 400), ({"ip": "1.2.3"}, 400), ({"ip": "256.1.1.1"}, 400), ({"ip": "01.02.03.04"}, 400),
    ({"ip": "127.0.0.1 "}, 400), ({"ip": "localhost"}, 400), ({"ip": 2130706433}, 400), ({"ip": ["127.0.0.1"]}, 400),
    ({"port": 70000}, 400), ({"port": -1}, 400), ({"port": 80}, 400), ({"port": 1.5}, 400), ({"port": "abc"}, 400),
    ({"port": 10**30}, 400), ({"port": None}, 400),
    ({"rawUrl": "http://127.0.0.1:99999/x", "taskUrl": ""}, 400),
    ({"rawUrl": "http://127.0.0.1:0/x", "taskUrl": ""}, 400),
    ({"rawUrl": "http://[::1/x", "taskUrl": ""}, 400), ({"rawUrl": "http://127.0.0.1/\x00", "taskUrl": ""}, 400),
    ({"rawUrl": "file:///etc/passwd", "taskUrl": ""}, 400), ({"rawUrl": "gopher://127.0.0.1/x", "taskUrl": ""}, 400),
    ({"rawUrl": "http:///x", "taskUrl": ""}, 400), ({"rawUrl": 5}, 400), ({"rawUrl": None}, 400),
    ({"headers": "X-A: 1"}, 400), ({"headers": [1]}, 400), ({"headers": ["X-A\r\nX-B: 1"]}, 400),
    ({"headers": ["X-A: 1\r\nX-Injected: yes"]}, 400), ({"headers": ["Bad Name: 1"]}, 400),
    ({"rootCAs": "abc"}, 400), ({"rootCAs": ["!!!!"]}, 400), ({"insecure": "maybe"}, 400),
    ({"cid": {}}, 400), ({"cid": "cdnnode:127.0.0.1~x"}, 400), ({"cid": "a\x00b"}, 400),
    ({"path": "@127.0.0.9/x"}, 400), ({"path": "peer/file/x"}, 400), ({"path": "/a b"}, 400), ({"path": 7}, 400),
    ({"fileLength": 10**30}, 400), ({"md5": ["x"]}, 400),
])
async def test_register_refuses_hostile_values_with_400(node: Node, http: aiohttp.ClientSession,
                                                        make_origin: OriginFactory, extra: dict[str, Any],
                                                        status: int) -> None:
    origin = await make_origin()
    origin.put("/r.bin", b"abc")
    body = register_body(origin.url("/r.bin"), **extra)
    got, raw, content_type = await send(http, "POST", node.api + "/peer/registry", data=json.dumps(body).encode(),
                                        headers={"Content-Type": "application/json"})
    check_error(got, raw, content_type, expected=status)
    assert origin.hits == {}, "a refused register reached the origin"
    _, raw, _ = await send(http, "GET", node.api + "/peers")
    assert [p for p in json.loads(raw) if p["IP"] == "127.0.0.2"] == [], "a refused register left a peer"


BAD_JSON = [b"{", b"[]", b"null", b'"text"', b"1", b"\xff\xfe{}", b'{"rawUrl": "\xff"}', b"[" * 100000,
            b'{"a":' + b"1" * 5000 + b"}", b"{" + b'"a":{' * 5000 + b"}" * 5001, b"\x00", b""]


@pytest.mark.parametrize("path", ["/peer/registry", "/peers", "/api/v1/tasks", "/preheats", "/task/metrics",
                                  f"/tasks/{ZERO}", f"/tasks/{ZERO}/pieces/0-4194303"])
async def test_malformed_json_bodies_are_400(node: Node, http: aiohttp.ClientSession, path: str) -> None:
    method = "PUT" if path.startswith("/tasks/") else "POST"
    for raw in BAD_JSON:
        status, body, content_type = await send(http, method, node.api + path, data=raw,
                                                headers={"Content-Type": "application/json"})
        check_error(status, body, content_type, expected=400)


@pytest.mark.parametrize("body", [
    {"IP": "127.0.0.2", "duration": "NaN", "fileLength": 1}, {"IP": "127.0.0.2", "duration": 1e400},
    {"IP": "127.0.0.2", "fileLength": 10**400}, {"IP": "127.0.0.2", "duration": -1}, {"IP": "::1"},
    {"IP": "127.0.0.2", "port": 70000}, {"IP": "127.0.0.2", "success": "perhaps"},
])
async def test_download_reports_cannot_poison_the_metrics(node: Node, http: aiohttp.ClientSession,
                                                          body: dict[str, Any]) -> None:
    raw = json.dumps(body).replace('"NaN"', "NaN").encode()  # json.dumps writes 1e400 as Infinity
    status, answer, content_type = await send(http, "POST", node.api + "/task/metrics", data=raw,
                                              headers={"Content-Type": "application/json"})
    check_error(status, answer, content_type, expected=400)
    status, metrics, _ = await send(http, "GET", node.api + "/metrics")
    assert status == 200 and b"NaN" not in metrics
    assert b"dragonfly_dfget_download_total{" not in metrics, "a refused report was counted"


@pytest.mark.parametrize("query", [
    "pageNum=-1", "pageNum=x", "pageNum=" + "9" * 5000, "pageSize=1e3", "sortDirect=SIDEWAYS", "sortKey=password",
    "pageNum=%ff", "sortKey=%00",
])
async def test_peer_listing_refuses_bad_queries(node: Node, http: aiohttp.ClientSession, query: str) -> None:
    status, body, content_type = await send(http, "GET", f"{node.api}/peers?{query}")
    check_error(status, body, content_type, expected=400)


async def test_rest_peers_and_tasks_refuse_hostile_values(node: Node, http: aiohttp.ClientSession,
                                                          make_origin: OriginFactory) -> None:
    origin = await make_origin()
    origin.put("/t.bin", b"x")
    for peer in ({"IP": "::1", "hostName": "h", "port": 15000}, {"IP": "127.0.0.2", "hostName": "h", "port": 65001},
                 {"IP": "127.0.0.2", "hostName": "h/../x", "port": 15000},
                 {"IP": "127.0.0.2", "hostName": "h", "port": "15000x"}, {"IP": "127.0.0.2"}):
        status, body, content_type = await send(http, "POST", node.api + "/peers", data=json.dumps(peer).encode(),
                                                headers={"Content-Type": "application/json"})
        check_error(status, body, content_type, expected=400)
    status, body, _ = await send(http, "POST", node.api + "/peers", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"IP": "127.0.0.2", "hostName": "h", "port": 15000}).encode())
    peer_id = json.loads(body)["ID"]
    for task in ({"cID": "c", "rawURL": "http://[::1/x", "peerID": peer_id},
                 {"cID": "c", "rawURL": origin.url("/t.bin"), "peerID": peer_id, "headers": {"X\r\nY": "1"}},
                 {"cID": "c", "rawURL": origin.url("/t.bin"), "peerID": peer_id, "path": "@127.0.0.9/x"},
                 {"cID": "cdnnode:127.0.0.1~x", "rawURL": origin.url("/t.bin"), "peerID": peer_id},
                 {"cID": "c", "rawURL": origin.url("/t.bin"), "peerID": peer_id, "headers": ["x"]}):
        status, body, content_type = await send(http, "POST", node.api + "/tasks", data=json.dumps(task).encode(),
                                                headers={"Content-Type": "application/json"})
        check_error(status, body, content_type, expected=400)
    assert origin.hits == {}
    status, body, content_type = await send(http, "GET", f"{node.api}/tasks/{ZERO}/pieces?clientID=c&num=0")
    check_error(status, body, content_type, expected=400)
    status, body, content_type = await send(http, "GET", f"{node.api}/tasks/{ZERO}/pieces?clientID=c&num={10**30}")
    check_error(status, body, content_type, expected=404)


async def test_preheat_refuses_hostile_values(node: Node, http: aiohttp.ClientSession) -> None:
    for preheat in ({"type": "file", "url": "file:///etc/passwd"}, {"type": "file", "url": "gopher://127.0.0.1/"},
                    {"type": "image", "url": "http://127.0.0.1/v2/../../etc/manifests/latest"},
                    {"type": "image", "url": "http://127.0.0.1/v2/a/manifests/sha256:../../x"},
                    {"type": "file", "url": "http://[::1/x"}, {"type": "file", "url": "http://127.0.0.1:99999/x"},
                    {"type": "file", "url": "http://127.0.0.1/\x00"},
                    {"type": "file", "url": "http://127.0.0.1/x", "headers": {"X-A": "1\r\nX-Injected: 1"}},
                    {"type": "file", "url": "http://127.0.0.1/x", "caCert": "not a pem"},
                    {"type": "archive", "url": "http://127.0.0.1/x"}, {"type": "file", "url": 5},
                    {"type": "file", "url": "http://127.0.0.1/x", "headers": {"a": 1}}):
        status, body, content_type = await send(http, "POST", node.api + "/preheats",
                                                data=json.dumps(preheat).encode(),
                                                headers={"Content-Type": "application/json"})
        check_error(status, body, content_type, expected=400)
    _, body, _ = await send(http, "GET", node.api + "/preheats")
    assert json.loads(body) == []
