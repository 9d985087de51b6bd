"""Self-tests of the dfget v1 harness, so that an e2e failure points at the supernode, not at the double.

The uploader is checked against the upstream vectors of ``peer_server_test.go`` (§3.10); the client
is driven against a tiny scripted supernode, which pins what it puts on the wire (key order, query
order, header names) and how it handles a corrupted piece.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from dfwire import pieces
from dfwire.ids import super_cid
from tests.v1proto import (
    RESULT_FAIL,
    Answer,
    DownloadResult,
    RangeNotSatisfiable,
    UploadParams,
    V1Client,
    V1Error,
    V1Uploader,
    amend_range,
    dfget_cid,
    dfget_sign,
    parse_upload_params,
    pattern_bytes,
    raw_request,
    task_file_name,
)

MIB = 1024 * 1024
PIECE_SIZE = 4 * MIB
NAME = "out-1234-1700000000.123"


@pytest.fixture
async def uploader(tmp_path: Path) -> AsyncIterator[V1Uploader]:
    async with V1Uploader("127.0.0.2", tmp_path / "data") as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


async def check(session: aiohttp.ClientSession, uploader: V1Uploader, name: str = NAME) -> None:
    answer = await raw_request(
        session, "GET", f"{uploader.url}/check/{name}", headers={"Datadir": str(uploader.data_dir)}
    )
    assert (answer.status, answer.text) == (200, f"{name}@1.0.6")


async def get_piece(
    session: aiohttp.ClientSession, uploader: V1Uploader, byte_range: str, piece_num: int = 0,
    piece_size: int = PIECE_SIZE, *, name: str = NAME, header_case: str = "Piecenum",
    extra: dict[str, str] | None = None,
) -> Answer:
    headers = {"Range": f"bytes={byte_range}", header_case: str(piece_num), "pieceSize": str(piece_size)}
    return await raw_request(
        session, "GET", f"{uploader.url}/peer/file/{name}", headers={**headers, **(extra or {})}
    )


@pytest.mark.parametrize(
    ("byte_range", "data"),
    [("0-5", b"h"), ("0-4", b""), ("0-15", b"hello File")],
    ids=["one-byte", "empty", "whole"],
)
async def test_upstream_framing_vectors(
    session: aiohttp.ClientSession, uploader: V1Uploader, byte_range: str, data: bytes
) -> None:
    """TestUploadPiece: ``hello File`` at pieceSize 4 MiB, padded ranges 0-5, 0-4 and 0-15."""
    await check(session, uploader)
    uploader.service_file(NAME).write_bytes(b"hello File")
    answer = await get_piece(session, uploader, byte_range)
    expected = pieces.piece_head(len(data), PIECE_SIZE) + data + b"\x7f"
    assert answer.status == 206
    assert answer.body == expected
    assert answer.headers["Content-Length"] == str(len(expected))
    assert "Content-Range" not in answer.headers


async def test_header_names_are_case_insensitive(session: aiohttp.ClientSession, uploader: V1Uploader) -> None:
    await check(session, uploader)
    uploader.service_file(NAME).write_bytes(b"hello File")
    for header_case in ("pieceNum", "Piecenum", "PIECENUM"):
        answer = await get_piece(session, uploader, "0-15", header_case=header_case)
        assert answer.status == 206, header_case
    answer = await raw_request(session, "GET", f"{uploader.url}/peer/file/{NAME}", headers={
        "range": "bytes=0-15", "piecenum": "0", "PIECESIZE": str(PIECE_SIZE),
    })
    assert answer.body == pieces.wrap(b"hello File", PIECE_SIZE)


async def test_unpadded_source_mode(session: aiohttp.ClientSession, uploader: V1Uploader) -> None:
    await check(session, uploader)
    uploader.service_file(NAME).write_bytes(b"hello File")
    answer = await get_piece(session, uploader, "0-5", extra={"cdnSource": "source"})
    assert (answer.status, answer.body) == (206, b"hello ")


async def test_pieces_of_a_growing_file(session: aiohttp.ClientSession, uploader: V1Uploader) -> None:
    """Piece n is read at raw offset S - 5n, from whatever the file holds at request time."""
    await check(session, uploader)
    size = 16  # wrapped piece size: 11 data bytes per piece
    content = pattern_bytes(30)
    service = uploader.service_file(NAME)
    service.write_bytes(content[:11])
    first = await get_piece(session, uploader, "0-15", 0, size)
    assert first.body == pieces.wrap(content[:11], size)
    not_yet = await get_piece(session, uploader, "16-31", 1, size)
    assert not_yet.body == pieces.wrap(b"", size), "a piece at the end of the file is empty, as in Go"
    with service.open("r+b") as handle:
        handle.seek(22)
        handle.write(content[22:30])  # piece 2 arrives before piece 1 (a sparse file)
        handle.seek(11)
        handle.write(content[11:22])
    second = await get_piece(session, uploader, "16-31", 1, size)
    last = await get_piece(session, uploader, "32-47", 2, size)
    assert second.body == pieces.wrap(content[11:22], size)
    assert last.body == pieces.wrap(content[22:30], size)
    beyond = await get_piece(session, uploader, "64-79", 4, size)
    assert (beyond.status, beyond.text) == (416, "range not satisfiable")


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=5-5", "pieceNum": "0", "pieceSize": "16"},
        {"Range": "0-5", "pieceNum": "0", "pieceSize": "16"},
        {"Range": "bytes=0-5-6", "pieceNum": "0", "pieceSize": "16"},
        {"Range": "bytes=0-5", "pieceSize": "16"},
        {"Range": "bytes=0-5", "pieceNum": "x", "pieceSize": "16"},
    ],
    ids=["end-not-after-start", "no-unit", "two-dashes", "no-piece-num", "bad-piece-num"],
)
async def test_bad_headers_are_400(
    session: aiohttp.ClientSession, uploader: V1Uploader, headers: dict[str, str]
) -> None:
    await check(session, uploader)
    uploader.service_file(NAME).write_bytes(b"hello File")
    answer = await raw_request(session, "GET", f"{uploader.url}/peer/file/{NAME}", headers=headers)
    assert answer.status == 400


async def test_unknown_task_is_500_and_missing_file_404(
    session: aiohttp.ClientSession, uploader: V1Uploader
) -> None:
    assert (await get_piece(session, uploader, "0-15")).status == 500
    await check(session, uploader)
    assert (await get_piece(session, uploader, "0-15")).status == 404


async def test_corrupt_flips_one_byte(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with V1Uploader("127.0.0.3", tmp_path / "bad", corrupt={1}) as bad:
        await check(session, bad)
        bad.service_file(NAME).write_bytes(pattern_bytes(22))
        good = await get_piece(session, bad, "0-15", 0, 16)
        flipped = await get_piece(session, bad, "16-31", 1, 16)
    assert good.body == pieces.wrap(pattern_bytes(22)[:11], 16)
    expected = pieces.wrap(pattern_bytes(22)[11:], 16)
    assert len(flipped.body) == len(expected)
    assert sum(a != b for a, b in zip(flipped.body, expected, strict=True)) == 1
    assert [record.corrupted for record in bad.uploads] == [False, True]


async def test_service_endpoints(session: aiohttp.ClientSession, uploader: V1Uploader) -> None:
    ping = await raw_request(session, "GET", f"{uploader.url}/server/ping")
    assert (ping.status, ping.text, ping.headers["Content-Type"]) == (200, "success", "application/octet-stream")
    await check(session, uploader)
    rate = await raw_request(session, "GET", f"{uploader.url}/rate/{NAME}", headers={"Ratelimit": "4194304"})
    assert (rate.status, rate.text) == (200, "4194304")
    uploader.total_limit = 1000
    shared = await raw_request(session, "GET", f"{uploader.url}/rate/{NAME}", headers={"rateLimit": "3000"})
    assert shared.text == "1000", "one running task asking 3x the total limit gets its share: the total"
    bad = await raw_request(session, "GET", f"{uploader.url}/client/finish?taskFileName={NAME}&cid=c")
    assert (bad.status, bad.text) == (400, "invalid params")
    query = f"taskFileName={NAME}&taskID=t&cid=c&superNode=127.0.0.1:8002"
    done = await raw_request(session, "GET", f"{uploader.url}/client/finish?{query}")
    assert (done.status, done.text) == (200, "success")
    assert uploader.tasks[NAME].finished


def test_pure_helpers() -> None:
    assert parse_upload_params("bytes=0-5", "0", "16") == UploadParams(0, 6, 0, 16)
    assert amend_range(10, True, UploadParams(0, 16, 0, 16)) == (0, 15)
    assert amend_range(0, True, UploadParams(0, PIECE_SIZE, 0, PIECE_SIZE)) == (0, 5)
    with pytest.raises(RangeNotSatisfiable):
        amend_range(0, False, UploadParams(0, 6, 0, 16))
    sign = dfget_sign(31923, 1550042443.708)
    assert sign == "31923-1550042443.708"
    assert dfget_cid("127.0.0.1", sign) == "127.0.0.1-31923-1550042443.708"
    assert task_file_name("/tmp/dir/out1", sign) == "out1-31923-1550042443.708"
    assert pattern_bytes(600) == bytes(i % 251 for i in range(600))


# ---------------------------------------------------------------------------------------------------
# The client against a scripted supernode


@dataclass
class ScriptedSupernode:
    """Just enough of the legacy API to walk a client through one download, recording what it sent.

    Pieces are served by ``sources`` (uploaders holding the whole raw file): the n-th time a piece is
    handed out it comes from ``sources[min(n, last)]``, so a corrupt first source exercises the
    client's error path.
    """

    content: bytes
    sources: list[tuple[str, V1Uploader, str]]  # (cid, uploader, task file name)
    task_id: str = "ab" * 32
    requests: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    handed: dict[int, int] = field(default_factory=dict)
    reported: set[int] = field(default_factory=set)
    pulls: int = 0

    @property
    def piece_total(self) -> int:
        return pieces.piece_count(len(self.content), PIECE_SIZE)

    def piece_bytes(self, num: int) -> bytes:
        per = PIECE_SIZE - 5
        return self.content[num * per:(num + 1) * per]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/peer/registry", self.register)
        app.router.add_get("/peer/task", self.pull)
        app.router.add_get("/peer/piece/suc", self.suc)
        app.router.add_get("/peer/piece/error", self.error)
        app.router.add_post("/task/metrics", self.metrics)
        return app

    async def record(self, request: web.Request) -> None:
        body = await request.read()
        self.requests.append((request.method, request.raw_path, body, dict(request.headers)))

    async def register(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.json_response({"code": 200, "data": {
            "taskId": self.task_id, "fileLength": len(self.content), "pieceSize": PIECE_SIZE,
            "cdnSource": "supernode", "asSeed": False, "seedTaskID": "",
        }, "msg": "success"})

    def item(self, num: int) -> dict[str, object]:
        cid, source, name = self.sources[min(self.handed.get(num, 0), len(self.sources) - 1)]
        self.handed[num] = self.handed.get(num, 0) + 1
        start = num * PIECE_SIZE
        return {
            "range": f"{start}-{start + PIECE_SIZE - 1}", "pieceNum": num, "pieceSize": PIECE_SIZE,
            "pieceMd5": pieces.wrapped_md5(self.piece_bytes(num), PIECE_SIZE), "cid": cid,
            "peerIp": source.ip, "peerPort": source.port, "path": f"/peer/file/{name}", "downLink": 0,
        }

    async def pull(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.pulls += 1
        if request.query["result"] == str(RESULT_FAIL):
            num = int(request.query["range"].split("-")[0]) // PIECE_SIZE
            return web.json_response({"code": 601, "data": [self.item(num)]})
        if self.pulls == 1:
            return web.json_response({"code": 602, "msg": "peer should wait"})
        if len(self.reported) == self.piece_total:
            return web.json_response({"code": 600, "data": {
                "fileLength": pieces.wrapped_length(len(self.content), PIECE_SIZE),
                "md5": hashlib.md5(self.content).hexdigest(),
            }})
        fresh = [num for num in range(self.piece_total) if num not in self.handed]
        if not fresh:
            return web.json_response({"code": 602, "msg": "peer should wait"})
        return web.json_response({"code": 601, "data": [self.item(num) for num in fresh]})

    async def suc(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.reported.add(int(request.query["pieceRange"].split("-")[0]) // PIECE_SIZE)
        return web.json_response({"code": 611})

    async def error(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response()

    async def metrics(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.json_response(None)


async def scripted_download(
    tmp_path: Path, content: bytes, *, corrupt_first: bool
) -> tuple[ScriptedSupernode, DownloadResult]:
    async with (
        V1Uploader("127.0.0.3", tmp_path / "good") as good,
        V1Uploader("127.0.0.4", tmp_path / "bad", corrupt=True) as bad,
        V1Uploader("127.0.0.2", tmp_path / "mine") as mine,
    ):
        for server in (good, bad):
            server.add_task("src")
            server.service_file("src").write_bytes(content)
        sources = [("127.0.0.4-1-1.000", bad, "src")] if corrupt_first else []
        sources.append((super_cid("127.0.0.1", "ab" * 32), good, "src"))
        fake = ScriptedSupernode(content, sources)
        runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        api_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with V1Client(api_url, tmp_path / "client", ip="127.0.0.2", uploader=mine, timeout=20) as client:
                result = await client.download("http://127.0.0.1:1/file?a=1&b=2")
        finally:
            await runner.cleanup()
        assert mine.tasks[result.task_file_name].finish_params["superNode"] == api_url.removeprefix("http://")
    return fake, result


async def test_client_wire_format(tmp_path: Path) -> None:
    content = pattern_bytes(PIECE_SIZE + 1000)  # two pieces
    fake, result = await scripted_download(tmp_path, content, corrupt_first=False)
    assert result.output.read_bytes() == content
    assert sorted(result.pieces) == [0, 1] and not result.failures
    method, path, body, headers = fake.requests[0]
    assert (method, path) == ("POST", "/peer/registry")
    assert headers["Content-Type"] == "application/json;charset=utf-8"
    assert headers["User-Agent"] == "fasthttp"
    assert "Accept-Encoding" not in headers
    sent = json.loads(body)
    assert list(sent) == [
        "superNodeIp", "rawUrl", "taskUrl", "cid", "ip", "hostName", "port", "path", "version", "pattern"
    ]
    assert b"\\u0026" in body, "Go's json.Marshal escapes '&' in URLs"
    cid = sent["cid"]
    assert cid.startswith("127.0.0.2-") and sent["path"] == f"/peer/file/{result.task_file_name}"
    first_pull = fake.requests[1][1]
    assert first_pull == f"/peer/task?srcCid={cid}&dstCid=&range=&result=502&status=700&taskId={'ab' * 32}"
    sucs = [path for _, path, _, _ in fake.requests if path.startswith("/peer/piece/suc")]
    assert sucs and all(path.startswith(f"/peer/piece/suc?taskId={'ab' * 32}&cid={cid}&dstCid=cdnnode:")
                        for path in sucs)
    metrics = [json.loads(body) for _, path, body, _ in fake.requests if path == "/task/metrics"]
    assert len(metrics) == 2 and metrics[0]["success"] is True and metrics[0]["fileLength"] == len(content)


async def test_client_reports_a_corrupt_piece(tmp_path: Path) -> None:
    content = pattern_bytes(3000)
    fake, result = await scripted_download(tmp_path, content, corrupt_first=True)
    assert result.output.read_bytes() == content
    assert [f.error_type for f in result.failures] == ["FILE_MD5_NOT_MATCH"]
    assert result.pieces[0].dst_cid.startswith("cdnnode:")
    paths = [path for _, path, _, _ in fake.requests]
    errors = [path for path in paths if path.startswith("/peer/piece/error?")]
    assert len(errors) == 1 and "&dstCid=127.0.0.4-1-1.000&dstIp=127.0.0.4&" in errors[0]
    assert any("&result=500&status=701&" in path for path in paths)


async def test_client_raises_on_unexpected_codes(tmp_path: Path) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"code": 500, "message": "boom"}, status=500)

    app = web.Application()
    app.router.add_post("/peer/registry", refuse)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with V1Client(f"http://127.0.0.1:{runner.addresses[0][1]}", tmp_path, timeout=5) as client:
            with pytest.raises(V1Error) as info:
                await client.download("http://127.0.0.1:1/x")
    finally:
        await runner.cleanup()
    assert (info.value.stage, info.value.status) == ("register", 500)
    assert info.value.cid.startswith("127.0.0.1-")
