"""The uploader's HTTP handlers in process (spec §3.9, §3.10): framing, errors, limits, clean-up."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dfget.config import ServerConfig
from dfget.uploader import Uploader
from dfwire import pieces

MIB = 1024 * 1024
PIECE = 4 * MIB
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def uploader(tmp_path: Path) -> Uploader:
    (tmp_path / "data").mkdir()
    return Uploader(ServerConfig(home=tmp_path, ip="127.0.0.1", alive_time=60, expire_time=60))


@pytest.fixture
async def client(aiohttp_client: MakeClient, uploader: Uploader) -> Client:
    return await aiohttp_client(uploader.build_app())


def piece_headers(start: int, end: int, num: int = 0, size: int = PIECE) -> dict[str, str]:
    return {"Range": f"bytes={start}-{end}", "pieceNum": str(num), "pieceSize": str(size)}


async def check(client: Client, uploader: Uploader, name: str, content: bytes | None = None) -> None:
    answer = await client.get(f"/check/{name}", headers={"dataDir": str(uploader.data_dir), "totalLimit": "0"})
    assert answer.status == 200 and await answer.text() == f"{name}@1.0.6"
    if content is not None:
        uploader.service_file(name).write_bytes(content)


async def test_ping_and_check(client: Client, uploader: Uploader, tmp_path: Path) -> None:
    assert await (await client.get("/server/ping")).text() == "success"
    await check(client, uploader, "out-1-2.000")
    other = await client.get("/check/x", headers={"dataDir": str(tmp_path / "elsewhere")})
    assert other.status == 400, "an uploader serves only its own data directory"
    assert (await client.get("/check/..")).status in (400, 404)


async def test_pieces_are_framed_from_the_raw_file(client: Client, uploader: Uploader) -> None:
    await check(client, uploader, "t", b"hello File")
    head = pieces.piece_head
    cases = [((0, 5), head(1, PIECE) + b"h\x7f"), ((0, 4), head(0, PIECE) + b"\x7f"),
             ((0, 15), head(10, PIECE) + b"hello File\x7f"), ((0, PIECE - 1), head(10, PIECE) + b"hello File\x7f")]
    for (start, end), body in cases:
        answer = await client.get("/peer/file/t", headers=piece_headers(start, end))
        assert answer.status == 206 and answer.headers["Content-Length"] == str(len(body))
        assert await answer.read() == body
        assert "Content-Range" not in answer.headers
    plain = await client.get("/peer/file/t", headers={**piece_headers(2, 5), "cdnSource": "source"})
    assert await plain.read() == b"llo "


async def test_second_piece_offsets_skip_the_frames(client: Client, uploader: Uploader) -> None:
    per = PIECE - pieces.WRAP_SIZE
    data = os.urandom(per + 100)
    await check(client, uploader, "t", data)
    answer = await client.get("/peer/file/t", headers=piece_headers(PIECE, 2 * PIECE - 1, num=1))
    assert await answer.read() == pieces.wrap(data[per:], PIECE)


async def test_upload_errors(client: Client, uploader: Uploader) -> None:
    assert (await client.get("/peer/file/unknown", headers=piece_headers(0, 9))).status == 500
    await check(client, uploader, "t")
    assert (await client.get("/peer/file/t", headers=piece_headers(0, 9))).status == 404, "no file yet"
    uploader.service_file("t").write_bytes(b"0123456789")
    assert (await client.get("/peer/file/t", headers={"Range": "bytes=0-9"})).status == 400
    assert (await client.get("/peer/file/t", headers=piece_headers(9, 9))).status == 400
    beyond = await client.get("/peer/file/t", headers=piece_headers(PIECE, 2 * PIECE - 1, num=1))
    assert beyond.status == 416 and await beyond.text() == "range not satisfiable"
    traversal = await client.get("/peer/file/../meta/host.meta", headers=piece_headers(0, 9))
    assert traversal.status in (404, 500)


async def test_symbolic_links_are_not_followed(client: Client, uploader: Uploader, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for peers")
    await check(client, uploader, "t")
    uploader.service_file("t").symlink_to(secret)
    answer = await client.get("/peer/file/t", headers=piece_headers(0, 15))
    assert answer.status != 206 and b"not for peers" not in await answer.read()


async def test_rate_shares_the_total_limit(client: Client, uploader: Uploader) -> None:
    for name in ("a", "b"):
        await client.get(f"/check/{name}", headers={"totalLimit": "100"})
    assert await (await client.get("/rate/a", headers={"rateLimit": "100"})).text() == "100"
    assert await (await client.get("/rate/b", headers={"rateLimit": "100"})).text() == "50"
    assert (await client.get("/rate/a", headers={"rateLimit": "lots"})).status == 400


async def test_client_finish(client: Client, uploader: Uploader) -> None:
    assert (await client.get("/client/finish?taskFileName=t&taskID=x")).status == 400
    answer = await client.get("/client/finish?taskFileName=t&taskID=id&cid=c&superNode=127.0.0.1:8002")
    assert await answer.text() == "success"
    task = uploader.tasks["t"]
    assert (task.finished, task.task_id, task.cid, task.super_node) == (True, "id", "c", "127.0.0.1:8002")


async def test_total_limit_paces_uploads(client: Client, uploader: Uploader) -> None:
    await check(client, uploader, "t", bytes(100_000))
    uploader.bucket.rate = 100_000
    started = time.monotonic()
    answer = await client.get("/peer/file/t", headers=piece_headers(0, PIECE - 1))
    assert len(await answer.read()) == 100_005
    assert time.monotonic() - started >= 0.7, "100 kB at 100 kB/s, less the bucket's 0.25 s of burst"


async def test_garbage_collection(client: Client, uploader: Uploader) -> None:
    await check(client, uploader, "live", b"x")
    await check(client, uploader, "old", b"y")
    await client.get("/client/finish?taskFileName=old&taskID=id&cid=c&superNode=127.0.0.1:1")
    stale = time.time() - 120
    os.utime(uploader.service_file("old"), (stale, stale))
    (uploader.data_dir / "stray").write_bytes(b"z")
    (uploader.data_dir / "subdir").mkdir()
    await uploader.collect_garbage()
    assert sorted(p.name for p in uploader.data_dir.iterdir()) == ["live.service"]
    assert set(uploader.tasks) == {"live"}
