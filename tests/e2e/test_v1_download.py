"""Downloads through the real supernode process, driven exactly as Go dfget 1.0.6 drives it.

Each test is what a user would see with real dfget: the file arrives MD5-correct, the origin is
fetched once however many clients ask, a missing source is refused at register time, and peers
serve each other's pieces.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dfwire import ids, pieces
from tests.v1proto import (
    CODE_PEER_CONTINUE,
    CODE_PEER_FINISH,
    CODE_PEER_WAIT,
    CODE_URL_NOT_REACHABLE,
    ClientFactory,
    DownloadResult,
    OriginServer,
    SupernodeProcess,
    V1Error,
    pattern_bytes,
)

MIB = 1024 * 1024
PIECE_SIZE = 4 * MIB


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def check_download(result: DownloadResult, url: str, data: bytes) -> None:
    """What dfget itself checks, plus the register and finish answers a dfget 1.0.6 expects (§1.4)."""
    assert result.output.read_bytes() == data
    assert result.task_id == ids.task_id(url)
    assert result.register == {
        "taskId": result.task_id, "fileLength": len(data), "pieceSize": PIECE_SIZE,
        "cdnSource": "supernode", "asSeed": False, "seedTaskID": "",
    }
    assert result.finish == {"fileLength": pieces.wrapped_length(len(data), PIECE_SIZE), "md5": md5_hex(data)}
    total = pieces.piece_count(len(data), PIECE_SIZE)
    assert sorted(result.pieces) == list(range(total))
    per = PIECE_SIZE - pieces.WRAP_SIZE
    for num, record in result.pieces.items():
        assert record.piece_md5 == pieces.wrapped_md5(data[num * per:(num + 1) * per], PIECE_SIZE)
        assert record.range == pieces.piece_range(num, PIECE_SIZE)


def check_origin_sent_once(origin: OriginServer, path: str, size: int) -> None:
    """One complete transfer of the source; a length probe may add a few bytes before it is closed."""
    assert origin.full_transfers[path] == 1, f"origin requests: {origin.log}"
    assert size <= origin.bytes_sent[path] < size * 1.5 + 1 * MIB, origin.bytes_sent


async def test_small_file(origin: OriginServer, supernode: SupernodeProcess, make_client: ClientFactory) -> None:
    data = b"hello Dragonfly"
    origin.files["/small.txt"] = data
    client = await make_client("127.0.0.2")
    result = await client.download(origin.url("/small.txt"))
    check_download(result, origin.url("/small.txt"), data)
    assert result.pieces[0].piece_md5 == "8f95b369fc1f8d38262bb1b42d1ac87c:20"  # §3.10 vector
    record = result.pieces[0]
    assert record.dst_cid == ids.super_cid("127.0.0.1", result.task_id)
    assert (record.peer_ip, record.peer_port, record.path) == (
        "127.0.0.1", supernode.cdn_port, ids.cdn_http_path(result.task_id)
    )
    check_origin_sent_once(origin, "/small.txt", len(data))


async def test_empty_file(origin: OriginServer, make_client: ClientFactory) -> None:
    """A 0-byte source is still one 5-byte piece (head 04 00 00 00, tail 7f)."""
    origin.files["/empty.bin"] = b""
    client = await make_client("127.0.0.2")
    result = await client.download(origin.url("/empty.bin"))
    check_download(result, origin.url("/empty.bin"), b"")
    assert result.finish["md5"] == "d41d8cd98f00b204e9800998ecf8427e"
    assert result.pieces[0].piece_md5 == "d6991051769098273e82477afd2bb93e:5"
    assert origin.full_transfers["/empty.bin"] == 1


async def test_several_pieces(origin: OriginServer, make_client: ClientFactory) -> None:
    """10 MiB as in single-download.txt: 3 pieces, the last one 2097167 wrapped bytes."""
    data = pattern_bytes(10 * MIB)
    origin.files["/file10m.bin"] = data
    client = await make_client("127.0.0.2")
    result = await client.download(origin.url("/file10m.bin"))
    check_download(result, origin.url("/file10m.bin"), data)
    assert [result.pieces[n].piece_md5 for n in range(3)] == [
        "fa5106ae0736ef401ef8c40d61bb7b00:4194304",
        "b05a3c10f20cfeecaf5df1e3b2a30c72:4194304",
        "51a10ed5220a00b737e587b1df34e9d9:2097167",
    ]
    assert result.finish == {"fileLength": 10485775, "md5": "d9a6fbf6e6dbdfe64365f218c62dbcd7"}
    check_origin_sent_once(origin, "/file10m.bin", len(data))


async def test_missing_file(origin: OriginServer, make_client: ClientFactory) -> None:
    """Origin 404: register fails (non-200, or code 607) and nothing pretends the task is alive."""
    url = origin.url("/missing.bin")
    client = await make_client("127.0.0.2")
    for attempt in ("first", "cached"):
        with pytest.raises(V1Error) as info:
            await client.download(url)
        error = info.value
        assert error.stage == "register", f"{attempt}: {error}"
        if error.status == 200:
            assert error.code == CODE_URL_NOT_REACHABLE, f"{attempt}: {error}"
        else:
            assert error.answer is not None and error.status is not None and error.status >= 400, attempt
            body = error.answer.obj
            assert body is not None and isinstance(body.get("code"), int), f"{attempt}: {error.answer.brief()}"
            assert isinstance(body.get("message"), str), f"{attempt}: {error.answer.brief()}"
    assert origin.requests["/missing.bin"] >= 1, "the supernode never asked the origin"

    task_id = ids.task_id(url)
    pull = await client.api.pull_piece_task(
        src_cid=error.cid, dst_cid="", piece_range="", result=502, status=700, task_id=task_id
    )
    assert pull.status != 200 or pull.code not in {CODE_PEER_FINISH, CODE_PEER_CONTINUE, CODE_PEER_WAIT}, (
        f"a pull for the refused task must fail, got {pull.brief()}"
    )
    info_answer = await client.api.call("GET", f"/api/v1/tasks/{task_id}")
    if info_answer.status == 200:
        status = (info_answer.obj or {}).get("cdnStatus")
        assert status in {"FAILED", "SOURCE_ERROR"}, f"task of a 404 source: {info_answer.brief()}"
    else:
        assert info_answer.status >= 400, info_answer.brief()


async def test_cache_survives_restart(
    origin: OriginServer, supernode: SupernodeProcess, make_client: ClientFactory
) -> None:
    """After a restart the file is served from the disk cache once the origin confirms it (§5.4: 304)."""
    data = pattern_bytes(5 * MIB)
    origin.files["/cached.bin"] = data
    url = origin.url("/cached.bin")
    first = await (await make_client("127.0.0.2")).download(url)
    check_download(first, url, data)
    await supernode.restart()
    second = await (await make_client("127.0.0.3")).download(url)
    check_download(second, url, data)
    assert origin.full_transfers["/cached.bin"] == 1, f"the source was fetched again: {origin.log}"
    assert any(
        "If-None-Match" in request.headers or "If-Modified-Since" in request.headers for request in origin.log
    ), f"the cache was reused without asking the origin whether it changed: {origin.log}"


async def test_four_peers_share_one_file(origin: OriginServer, make_client: ClientFactory) -> None:
    """Four p2p clients on 127.0.0.2-5, staggered and rate-limited so that pieces flow between them."""
    size = 24 * MIB
    data = pattern_bytes(size)
    origin.files["/file24m.bin"] = data
    url = origin.url("/file24m.bin")
    clients = [await make_client(f"127.0.0.{n}", rate_limit=12 * MIB) for n in range(2, 6)]

    async def staggered(index: int) -> DownloadResult:
        await asyncio.sleep(0.4 * index)
        return await clients[index].download(url, output=f"peer{index}")

    async with asyncio.TaskGroup() as group:
        runs = [group.create_task(staggered(index)) for index in range(len(clients))]
    results = [run.result() for run in runs]

    for result in results:
        check_download(result, url, data)
    check_origin_sent_once(origin, "/file24m.bin", size)
    by_cid = {result.cid: client for result, client in zip(results, clients, strict=True)}
    peer_pieces = [(result.cid, record) for result in results for record in result.peer_pieces]
    assert peer_pieces, "every piece came from the CDN: no peer ever served another"
    for cid, record in peer_pieces:
        assert record.dst_cid != cid, "a client was sent to itself"
        source = by_cid[record.dst_cid].uploader
        assert source is not None
        assert (record.peer_ip, record.peer_port) == (source.ip, source.port)
    served = sum(len(client.uploader.uploads) for client in clients if client.uploader)
    assert served >= len(peer_pieces)
