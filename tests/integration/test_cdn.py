"""The supernode's CDN against a real (scriptable) origin, driven through the supernode's HTTP ports.

What is proved here (spec §5, §3.10, §2.3): the origin serves a task's bytes once however many peers
register at once; the cache on disk is byte-exact Go layout; pieces are served while the fetch is
still running; a finished cache is reused after a restart or a task deletion when the origin says it
is unchanged, and refetched when it changed or is corrupt; an interrupted fetch resumes with a Range
request; and every source failure ends in a FAILED task (or a 607 register) that waiting clients
learn about at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfwire import ids, pieces

from .conftest import (
    MIB,
    PER_PIECE,
    PIECE_SIZE,
    WAIT,
    Api,
    Node,
    NodeFactory,
    Origin,
    Peer,
    eventually,
    md5_hex,
    pattern_bytes,
    piece_md5s,
    wrapped_file,
)

META_KEYS = ["taskID", "url", "pieceSize", "httpFileLen", "bizId", "accessTime", "interval", "fileLength", "md5",
             "realMd5", "lastModified", "eTag", "finish", "success"]
SIZE = 10 * MIB  # three pieces: 4194299 + 4194299 + 2097154 raw bytes


async def register_ok(peer: Peer, url: str, **kwargs: Any) -> str:
    answer = await peer.register(url, **kwargs)
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    return task_id


def read_meta(node: Node, task_id: str) -> tuple[list[str], dict[str, Any], str]:
    raw = node.data_path(task_id).with_name(task_id + ".meta").read_text()
    pairs = json.loads(raw, object_pairs_hook=list)
    return [k for k, _ in pairs], dict(pairs), raw


def expected_md5_file(data: bytes, piece_size: int = PIECE_SIZE) -> str:
    """The .md5 text of §5.3, built here independently of the supernode's own helpers."""
    lines = [*piece_md5s(data, piece_size), md5_hex(data)]
    return "\n".join([*lines, hashlib.sha1("".join(lines).encode()).hexdigest()])


def check_cache(node: Node, task_id: str, url: str, data: bytes, origin: Origin, path: str,
                piece_size: int = PIECE_SIZE) -> None:
    """The three files of §5.3, byte for byte, for a finished task."""
    data_path = node.data_path(task_id)
    assert data_path == node.home / "repo" / "download" / task_id[:3] / task_id
    assert data_path.read_bytes() == wrapped_file(data, piece_size)
    assert data_path.with_name(task_id + ".md5").read_bytes() == expected_md5_file(data, piece_size).encode()
    keys, meta, raw = read_meta(node, task_id)
    assert keys == META_KEYS
    assert raw == json.dumps(dict(meta), separators=(",", ":"))  # compact, as Go's json.Marshal
    resource = origin.resources[path]
    behaviour = origin.behaviour.get(path)
    assert meta["taskID"] == task_id and meta["url"] == url
    assert meta["pieceSize"] == piece_size
    assert meta["httpFileLen"] == len(data)
    assert meta["fileLength"] == pieces.wrapped_length(len(data), piece_size)
    assert meta["realMd5"] == md5_hex(data)
    assert meta["eTag"] == (resource.etag if behaviour is None or behaviour.etag else "")
    expected_modified = int(resource.modified.timestamp() * 1000)
    assert meta["lastModified"] == (expected_modified if behaviour is None or behaviour.last_modified else 0)
    assert meta["finish"] is True and meta["success"] is True


async def check_served(peer: Peer, task_id: str, data: bytes, piece_size: int = PIECE_SIZE) -> None:
    """Every piece the supernode announces to a client is on the download port and MD5-correct."""
    per = pieces.data_size(piece_size)
    answer = await peer.pull(task_id)
    assert answer["code"] == 601, answer
    for item in answer["data"]:
        assert item["pieceSize"] == piece_size
        assert item["peerPort"] == peer.node.settings.download_port
        status, body = await peer.piece(task_id, item["range"], path=item["path"])
        assert status == 206
        assert pieces.piece_md5_text(md5_hex(body), len(body)) == item["pieceMd5"]
        n = item["pieceNum"]
        assert pieces.unwrap(body) == data[n * per:(n + 1) * per]


# ---------------------------------------------------------------------------------------------------
# One fetch, exact layout, early serving


async def test_twenty_concurrent_registers_fetch_the_source_once(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE)
    origin.put("/big.bin", data)
    origin.misbehave("/big.bin", header_delay=0.2, chunk_delay=0.001)  # all 20 arrive before the origin answers
    node = await start_node()
    url = origin.url("/big.bin")
    peers = [Peer(session, node, ip=f"127.0.0.{10 + n}") for n in range(20)]
    answers = await asyncio.wait_for(asyncio.gather(*(p.register(url) for p in peers)), WAIT)
    task_id = ids.task_id(url)
    for answer in answers:
        assert answer == {"code": 200, "data": {"taskId": task_id, "fileLength": SIZE, "pieceSize": PIECE_SIZE,
                                                "cdnSource": "supernode", "asSeed": False, "seedTaskID": ""},
                          "msg": "success"}
    info = await Api(session, node).wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)
    assert info["fileLength"] == pieces.wrapped_length(SIZE, PIECE_SIZE)
    assert info["pieceTotal"] == 3
    # a registration after success joins the finished task: still no second fetch
    assert await register_ok(Peer(session, node), url) == task_id
    hits = origin.requests("/big.bin")
    assert len(hits) == 1, origin.describe("/big.bin")
    assert hits[0].status == 200 and hits[0].completed
    assert origin.body_bytes("/big.bin") == SIZE
    check_cache(node, task_id, url, data, origin, "/big.bin")
    await check_served(peers[0], task_id, data)


@pytest.mark.parametrize(("content", "piece_lines"), [
    (b"hello Dragonfly", ["8f95b369fc1f8d38262bb1b42d1ac87c:20"]),  # §3.10 vectors
    (b"", ["d6991051769098273e82477afd2bb93e:5"]),
])
async def test_small_files_match_the_spec_vectors(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, content: bytes,
        piece_lines: list[str]) -> None:
    origin.put("/small", content)
    node = await start_node()
    url = origin.url("/small")
    peer = Peer(session, node)
    task_id = await register_ok(peer, url)
    await Api(session, node).wait_cdn(task_id, {"SUCCESS"})
    md5_text = node.data_path(task_id).with_name(task_id + ".md5").read_text()
    assert md5_text.split("\n")[:-1] == [*piece_lines, md5_hex(content)]
    check_cache(node, task_id, url, content, origin, "/small")
    answer = await peer.pull(task_id)
    assert answer["code"] == 601 and answer["data"][0]["pieceMd5"] == piece_lines[0]
    status, body = await peer.piece(task_id, answer["data"][0]["range"])
    assert (status, body) == (206, pieces.wrap(content, PIECE_SIZE))


async def test_piece_is_served_while_the_fetch_is_still_running(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=1)
    origin.put("/slow.bin", data)
    gate = asyncio.Event()
    origin.misbehave("/slow.bin", body_gate_at=PER_PIECE + 1000, body_gate=gate)  # stalls inside piece 1
    node = await start_node()
    api = Api(session, node)
    peer = Peer(session, node)
    task_id = await register_ok(peer, origin.url("/slow.bin"))
    answer = await peer.wait_pull(task_id, lambda a: a["code"] == 601)
    assert [item["pieceNum"] for item in answer["data"]] == [0]
    item = answer["data"][0]
    assert item["range"] == f"0-{PIECE_SIZE - 1}"
    assert (item["peerIp"], item["peerPort"], item["path"]) == (
        "127.0.0.1", node.settings.download_port, f"/download/{task_id[:3]}/{task_id}")
    status, body = await peer.piece(task_id, item["range"], path=item["path"])
    assert status == 206 and len(body) == PIECE_SIZE
    assert pieces.piece_md5_text(md5_hex(body), len(body)) == item["pieceMd5"] == piece_md5s(data)[0]
    assert pieces.unwrap(body) == data[:PER_PIECE]
    _, info = await api.task(task_id)
    assert info["cdnStatus"] == "RUNNING"
    gate.set()
    await api.wait_cdn(task_id, {"SUCCESS"})
    check_cache(node, task_id, origin.url("/slow.bin"), data, origin, "/slow.bin")
    assert len(origin.requests("/slow.bin")) == 1 and origin.body_bytes("/slow.bin") == SIZE


# ---------------------------------------------------------------------------------------------------
# Cache reuse


async def fetch_once(origin: Origin, node: Node, session: aiohttp.ClientSession, path: str, data: bytes) -> str:
    url = origin.url(path)
    task_id = await register_ok(Peer(session, node), url)
    await Api(session, node).wait_cdn(task_id, {"SUCCESS"})
    assert len(origin.requests(path)) == 1
    return task_id


@pytest.mark.parametrize("validators", ["both", "etag", "last-modified"])
async def test_restarted_node_revalidates_and_reuses_the_cache(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, validators: str) -> None:
    data = pattern_bytes(SIZE, seed=2)
    resource = origin.put("/reuse.bin", data)
    origin.misbehave("/reuse.bin", etag=validators != "last-modified", last_modified=validators != "etag")
    first = await start_node()
    task_id = await fetch_once(origin, first, session, "/reuse.bin", data)
    await first.stop()
    inode = first.data_path(task_id).stat().st_ino

    second = await start_node()
    peer = Peer(session, second)
    answer = await peer.register(origin.url("/reuse.bin"))
    assert answer["code"] == 200 and answer["data"]["fileLength"] == SIZE, answer
    _, info = await Api(session, second).task(task_id)  # a cache hit is complete when register answers
    assert info["cdnStatus"] == "SUCCESS" and info["realMd5"] == md5_hex(data)
    hits = origin.requests("/reuse.bin")
    assert len(hits) == 2, origin.describe("/reuse.bin")
    check = hits[1]
    assert (check.status, check.body_bytes) == (304, 0)
    assert check.header("If-None-Match") == (resource.etag if validators != "last-modified" else None)
    assert check.header("If-Modified-Since") == (resource.last_modified if validators != "etag" else None)
    assert check.header("Range") is None
    assert second.data_path(task_id).stat().st_ino == inode
    check_cache(second, task_id, origin.url("/reuse.bin"), data, origin, "/reuse.bin")
    await check_served(peer, task_id, data)


async def test_a_set_piece_size_cuts_new_tasks_and_a_cached_task_keeps_its_own(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """``piece_size`` is how a new task is cut; changing it must not re-cut a cache whose pieces peers hold."""
    data = pattern_bytes(SIZE, seed=7)
    origin.put("/small-pieces.bin", data)
    url = origin.url("/small-pieces.bin")
    first = await start_node(piece_size=MIB)
    peer = Peer(session, first)
    answer = await peer.register(url)
    assert answer["code"] == 200 and answer["data"]["pieceSize"] == MIB, answer
    task_id = answer["data"]["taskId"]
    info = await Api(session, first).wait_cdn(task_id, {"SUCCESS"})
    assert info["pieceTotal"] == 11  # 10 MiB in pieces of 1 MiB - 5 bytes of data
    check_cache(first, task_id, url, data, origin, "/small-pieces.bin", piece_size=MIB)
    await check_served(peer, task_id, data, piece_size=MIB)
    await first.stop()

    second = await start_node()
    peer = Peer(session, second)
    answer = await peer.register(url)
    assert answer["code"] == 200 and answer["data"]["pieceSize"] == MIB, answer
    assert [hit.status for hit in origin.requests("/small-pieces.bin")] == [200, 304]
    await check_served(peer, task_id, data, piece_size=MIB)


async def test_cache_without_validators_is_fetched_again(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """§5.4: a cache whose origin sent neither ETag nor Last-Modified cannot be revalidated."""
    data = pattern_bytes(MIB, seed=3)
    origin.put("/plain.bin", data)
    origin.misbehave("/plain.bin", etag=False, last_modified=False)
    first = await start_node()
    task_id = await fetch_once(origin, first, session, "/plain.bin", data)
    await first.stop()
    second = await start_node()
    await register_ok(Peer(session, second), origin.url("/plain.bin"))
    await Api(session, second).wait_cdn(task_id, {"SUCCESS"})
    hits = origin.requests("/plain.bin")
    assert [h.status for h in hits] == [200, 200]
    assert hits[1].header("If-None-Match") is None and hits[1].header("If-Modified-Since") is None
    check_cache(second, task_id, origin.url("/plain.bin"), data, origin, "/plain.bin")


async def test_deleted_task_reuses_the_cache_and_full_delete_does_not(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=4)
    resource = origin.put("/del.bin", data)
    node = await start_node()
    api = Api(session, node)
    task_id = await fetch_once(origin, node, session, "/del.bin", data)
    assert await api.delete_task(task_id) in (200, 204)
    status, _ = await api.task(task_id)
    assert status != 200
    assert node.data_path(task_id).is_file()

    peer = Peer(session, node)
    await register_ok(peer, origin.url("/del.bin"))
    _, info = await api.task(task_id)
    assert info["cdnStatus"] == "SUCCESS" and info["realMd5"] == md5_hex(data)
    hits = origin.requests("/del.bin")
    assert [(h.status, h.body_bytes) for h in hits] == [(200, SIZE), (304, 0)]
    assert hits[1].header("If-None-Match") == resource.etag
    await check_served(peer, task_id, data)

    assert await api.delete_task(task_id, full=True) in (200, 204)
    assert not node.data_path(task_id).exists()
    await register_ok(Peer(session, node), origin.url("/del.bin"))
    await api.wait_cdn(task_id, {"SUCCESS"})
    hits = origin.requests("/del.bin")
    assert [(h.status, h.body_bytes) for h in hits] == [(200, SIZE), (304, 0), (200, SIZE)]
    assert hits[2].header("If-None-Match") is None
    check_cache(node, task_id, origin.url("/del.bin"), data, origin, "/del.bin")


async def test_origin_ignoring_conditional_requests_does_not_wipe_the_cache(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=5)
    origin.put("/stubborn.bin", data)
    origin.misbehave("/stubborn.bin", ignore_conditional=True)
    first = await start_node()
    task_id = await fetch_once(origin, first, session, "/stubborn.bin", data)
    await first.stop()
    before = first.data_path(task_id).stat()

    second = await start_node()
    await register_ok(Peer(session, second), origin.url("/stubborn.bin"))
    _, info = await Api(session, second).task(task_id)
    assert info["cdnStatus"] == "SUCCESS"
    hits = origin.requests("/stubborn.bin")
    assert len(hits) == 2 and hits[1].status == 200 and hits[1].header("If-None-Match")
    after = second.data_path(task_id).stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    check_cache(second, task_id, origin.url("/stubborn.bin"), data, origin, "/stubborn.bin")


async def test_changed_content_is_fetched_again(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    old, new = pattern_bytes(SIZE, seed=6), pattern_bytes(6 * MIB + 7, seed=7)
    first_version = origin.put("/moving.bin", old)
    node = await start_node()
    api = Api(session, node)
    task_id = await fetch_once(origin, node, session, "/moving.bin", old)
    assert await api.delete_task(task_id) in (200, 204)
    origin.put("/moving.bin", new)

    peer = Peer(session, node)
    answer = await peer.register(origin.url("/moving.bin"))
    assert answer["code"] == 200 and answer["data"]["fileLength"] == len(new)
    info = await api.wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(new)
    hits = origin.requests("/moving.bin")
    assert len(hits) == 2, origin.describe("/moving.bin")  # the conditional GET itself carried the new body
    assert hits[1].header("If-None-Match") == first_version.etag
    assert (hits[1].status, hits[1].body_bytes) == (200, len(new))
    check_cache(node, task_id, origin.url("/moving.bin"), new, origin, "/moving.bin")
    await check_served(peer, task_id, new)


# ---------------------------------------------------------------------------------------------------
# Resume


async def test_fetch_cut_mid_body_resumes_with_a_range_request(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=8)
    resource = origin.put("/cut.bin", data)
    cut = 2 * PER_PIECE + 1000
    origin.misbehave("/cut.bin", close_after=cut)
    node = await start_node()
    api = Api(session, node)
    peer = Peer(session, node)
    task_id = await register_ok(peer, origin.url("/cut.bin"))
    await api.wait_cdn(task_id, {"FAILED"})
    answer = await peer.pull(task_id)
    assert answer["code"] == 500, answer

    origin.behave("/cut.bin")
    await register_ok(peer, origin.url("/cut.bin"))  # a FAILED task is retried by the next register
    info = await api.wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)
    hits = origin.requests("/cut.bin")
    assert len(hits) == 2, origin.describe("/cut.bin")
    assert hits[0].body_bytes == cut
    assert hits[1].header("Range") == f"bytes={2 * PER_PIECE}-"
    assert hits[1].header("If-Range") == resource.etag
    assert (hits[1].status, hits[1].body_bytes) == (206, SIZE - 2 * PER_PIECE)
    check_cache(node, task_id, origin.url("/cut.bin"), data, origin, "/cut.bin")
    answer = await peer.wait_pull(task_id, lambda a: a["code"] == 601)
    running = list(answer["data"])
    handed = set()
    while running and len(handed) < 10:  # bounded: each report's answer may hand out more pieces
        item = running.pop()
        handed.add(item["pieceNum"])
        answer = await peer.pull(task_id, status=701, result=503, range_=item["range"], dst_cid=item["cid"])
        running.extend((answer.get("data") or []) if answer["code"] == 601 else [])
    assert handed == {0, 1, 2} and answer["code"] == 600, answer


@pytest.mark.parametrize("interruption", ["stop-node", "delete-task"])
async def test_interrupted_fetch_resumes_with_a_range_request(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, interruption: str) -> None:
    """The node is stopped (then restarted on the same home), or the task deleted, mid-fetch."""
    data = pattern_bytes(SIZE, seed=9)
    origin.put("/stop.bin", data)
    gate = asyncio.Event()
    origin.misbehave("/stop.bin", body_gate_at=2 * PER_PIECE + 100, body_gate=gate)
    first = await start_node()
    watcher = Peer(session, first)
    task_id = await register_ok(watcher, origin.url("/stop.bin"))
    await watcher.wait_pull(task_id, lambda a: a["code"] == 601 and any(i["pieceNum"] == 1 for i in a["data"]))
    if interruption == "stop-node":
        await asyncio.wait_for(first.stop(), WAIT)
        second = await start_node()
    else:
        assert await Api(session, first).delete_task(task_id) in (200, 204)
        second = first
    _, meta, _ = read_meta(first, task_id)
    assert meta["finish"] is False
    gate.set()
    origin.behave("/stop.bin")

    await register_ok(Peer(session, second), origin.url("/stop.bin"))
    info = await Api(session, second).wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)
    hits = origin.requests("/stop.bin")
    assert len(hits) == 2, origin.describe("/stop.bin")
    assert hits[1].header("Range") == f"bytes={2 * PER_PIECE}-"
    assert (hits[1].status, hits[1].body_bytes) == (206, SIZE - 2 * PER_PIECE)
    assert md5_hex(pieces_raw(second.data_path(task_id).read_bytes())) == md5_hex(data)
    check_cache(second, task_id, origin.url("/stop.bin"), data, origin, "/stop.bin")


def pieces_raw(wrapped: bytes) -> bytes:
    return b"".join(pieces.unwrap(wrapped[i:i + PIECE_SIZE]) for i in range(0, len(wrapped), PIECE_SIZE))


@pytest.mark.parametrize("origin_checks_if_range", [True, False])
async def test_resume_is_abandoned_when_the_content_changed(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, origin_checks_if_range: bool
) -> None:
    """Old and new content are never spliced: a 200 to If-Range is used whole, and an origin that
    ignores If-Range (206 with another ETag) makes the supernode fetch the whole file again."""
    old, new = pattern_bytes(SIZE, seed=10), pattern_bytes(SIZE, seed=11)  # same length, other bytes
    origin.put("/splice.bin", old)
    origin.misbehave("/splice.bin", close_after=2 * PER_PIECE + 10)
    node = await start_node()
    api = Api(session, node)
    task_id = await register_ok(Peer(session, node), origin.url("/splice.bin"))
    await api.wait_cdn(task_id, {"FAILED"})
    origin.put("/splice.bin", new)
    origin.misbehave("/splice.bin", ignore_if_range=not origin_checks_if_range)

    await register_ok(Peer(session, node), origin.url("/splice.bin"))
    info = await api.wait_cdn(task_id, {"SUCCESS", "FAILED"})
    assert info["cdnStatus"] == "SUCCESS" and info["realMd5"] == md5_hex(new), origin.describe("/splice.bin")
    check_cache(node, task_id, origin.url("/splice.bin"), new, origin, "/splice.bin")
    hits = origin.requests("/splice.bin")
    assert hits[1].header("Range") == f"bytes={2 * PER_PIECE}-"
    if origin_checks_if_range:
        assert [(h.status, h.body_bytes) for h in hits[1:]] == [(200, SIZE)]
    else:
        assert [h.status for h in hits[1:]] == [206, 200]
        assert hits[2].header("Range") is None and hits[2].body_bytes == SIZE


async def test_crash_before_sealing_resumes_without_an_unsatisfiable_range(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """Every piece on disk but no .md5 (the node died before sealing), and the length is a multiple of
    the piece data size: the resume must still ask for at least one byte, never ``bytes={length}-``."""
    data = pattern_bytes(2 * PER_PIECE, seed=15)
    resource = origin.put("/exact.bin", data)
    first = await start_node()
    task_id = await fetch_once(origin, first, session, "/exact.bin", data)
    await first.stop()
    meta_path = first.data_path(task_id).with_name(task_id + ".meta")
    meta = json.loads(meta_path.read_text())
    meta.update(finish=False, success=False, realMd5="", fileLength=0)
    meta_path.write_text(json.dumps(meta, separators=(",", ":")))
    first.data_path(task_id).with_name(task_id + ".md5").unlink()

    second = await start_node()
    await register_ok(Peer(session, second), origin.url("/exact.bin"))
    info = await Api(session, second).wait_cdn(task_id, {"SUCCESS", "FAILED"})
    assert info["cdnStatus"] == "SUCCESS" and info["realMd5"] == md5_hex(data)
    hits = origin.requests("/exact.bin")
    assert hits[1].header("Range") == f"bytes={PER_PIECE}-" and hits[1].header("If-Range") == resource.etag
    assert (hits[1].status, hits[1].body_bytes) == (206, PER_PIECE)
    check_cache(second, task_id, origin.url("/exact.bin"), data, origin, "/exact.bin")


async def test_unknown_length_source_is_fetched_and_never_resumed(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """A chunked origin (no Content-Length): register says -1, success fills the length in, and an
    interrupted fetch starts over (a resume needs a known length, §5.4)."""
    data = pattern_bytes(SIZE, seed=16)
    origin.put("/chunked.bin", data)
    origin.misbehave("/chunked.bin", chunked=True, close_after=2 * PER_PIECE + 10)
    node = await start_node()
    api = Api(session, node)
    peer = Peer(session, node)
    answer = await peer.register(origin.url("/chunked.bin"))
    assert answer["code"] == 200 and answer["data"]["fileLength"] == -1 and answer["data"]["pieceSize"] == PIECE_SIZE
    task_id = answer["data"]["taskId"]
    await api.wait_cdn(task_id, {"FAILED"})
    origin.misbehave("/chunked.bin", chunked=True)
    await register_ok(peer, origin.url("/chunked.bin"))
    info = await api.wait_cdn(task_id, {"SUCCESS"})
    assert info["httpFileLength"] == SIZE and info["realMd5"] == md5_hex(data) and info["pieceTotal"] == 3
    hits = origin.requests("/chunked.bin")
    assert [h.header("Range") for h in hits] == [None, None]
    check_cache(node, task_id, origin.url("/chunked.bin"), data, origin, "/chunked.bin")


async def test_user_range_header_is_sent_to_the_source(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """§14.7: a task with a ``Range`` header caches that slice; fileLength is the slice's length."""
    data = pattern_bytes(1000, seed=17)
    origin.put("/slice.bin", data)
    node = await start_node()
    peer = Peer(session, node)
    url = origin.url("/slice.bin")
    answer = await peer.register(url, headers=["Range: bytes=0-99"])
    assert answer["code"] == 200 and answer["data"]["fileLength"] == 100, answer
    task_id = answer["data"]["taskId"]
    assert task_id == ids.task_id(url, headers={"Range": "bytes=0-99"})
    info = await Api(session, node).wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data[:100])
    assert node.data_path(task_id).read_bytes() == wrapped_file(data[:100])
    hit = origin.requests("/slice.bin")[0]
    assert (hit.header("Range"), hit.status) == ("bytes=0-99", 206)


# ---------------------------------------------------------------------------------------------------
# Corruption


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("damage", ["flip-data", "flip-head", "truncate", "md5-file"])
async def test_corrupt_cache_is_detected_and_fetched_again(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, damage: str) -> None:
    data = pattern_bytes(SIZE, seed=12)
    origin.put("/rot.bin", data)
    first = await start_node()
    task_id = await fetch_once(origin, first, session, "/rot.bin", data)
    await first.stop()
    path = first.data_path(task_id)
    if damage == "flip-data":
        flip_byte(path, PIECE_SIZE + 12345)
    elif damage == "flip-head":
        flip_byte(path, 2 * PIECE_SIZE + 3)
    elif damage == "truncate":
        os.truncate(path, path.stat().st_size - 7)
    else:
        md5_path = path.with_name(task_id + ".md5")
        md5_path.write_text(md5_path.read_text().replace("a", "b", 1))

    second = await start_node()
    peer = Peer(session, second)
    await register_ok(peer, origin.url("/rot.bin"))
    await Api(session, second).wait_cdn(task_id, {"SUCCESS"})
    hits = origin.requests("/rot.bin")
    assert len(hits) == 2, origin.describe("/rot.bin")  # the bad cache costs one fetch, not a 304 and a fetch
    assert (hits[1].status, hits[1].body_bytes) == (200, SIZE)
    assert hits[1].header("If-None-Match") is None
    check_cache(second, task_id, origin.url("/rot.bin"), data, origin, "/rot.bin")
    await check_served(peer, task_id, data)


# ---------------------------------------------------------------------------------------------------
# Source failures


@pytest.mark.parametrize("status", [404, 401, 403, 503])
async def test_refusing_source_fails_register_with_607(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, status: int) -> None:
    origin.put("/refused", b"secret")
    origin.misbehave("/refused", status=status)
    node = await start_node(fail_access_interval=1.0)
    api = Api(session, node)
    peer = Peer(session, node)
    url = origin.url("/refused")
    answer = await peer.register(url)
    assert answer["code"] == 607 and str(status) in answer["msg"], answer
    task_id = ids.task_id(url)
    code, _ = await api.task(task_id)
    assert code != 200  # no half-made task is left behind
    again = await peer.register(url)
    assert again["code"] == 607
    # a 404 is remembered for failAccessInterval (§5.1); other refusals are asked again
    assert len(origin.requests("/refused")) == (1 if status == 404 else 2)

    origin.behave("/refused")
    if status == 404:
        await asyncio.sleep(1.05)  # past failAccessInterval
    await register_ok(peer, url)
    await api.wait_cdn(task_id, {"SUCCESS"})
    assert origin.requests("/refused")[-1].status == 200


async def test_silent_source_fails_register_within_the_probe_timeout(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    origin.put("/mute", b"never sent")
    gate = asyncio.Event()
    origin.misbehave("/mute", header_gate=gate)
    node = await start_node(source_probe_timeout=0.5)
    peer = Peer(session, node)
    started = time.monotonic()
    answer = await peer.register(origin.url("/mute"))
    elapsed = time.monotonic() - started
    assert answer["code"] == 607, answer
    assert 0.4 <= elapsed < 2.0, elapsed
    gate.set()


@pytest.mark.parametrize("failure", ["cut", "short", "stall", "cut-after-piece"])
async def test_broken_transfer_fails_the_task_and_waiting_clients_learn_at_once(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, failure: str) -> None:
    data = pattern_bytes(SIZE, seed=13)
    origin.put("/broken.bin", data)
    gate = asyncio.Event()
    switches: dict[str, Any] = {
        "cut": {"body_gate_at": 1000, "body_gate": gate, "close_after": 1000},
        "cut-after-piece": {"body_gate_at": PER_PIECE + 10, "body_gate": gate, "close_after": PER_PIECE + 10},
        "short": {"short_by": 1000},  # ends early and keeps the connection open: only a read timeout helps
        "stall": {"body_gate_at": 1000, "body_gate": asyncio.Event()},  # never resumes
    }[failure]
    origin.misbehave("/broken.bin", **switches)
    node = await start_node(source_read_timeout=0.5)
    api = Api(session, node)
    peer = Peer(session, node)
    task_id = await register_ok(peer, origin.url("/broken.bin"))
    started = time.monotonic()
    # While the fetch runs the client waits (or starts); a pull held until the fetch fails is told at once.
    answer = await peer.pull(task_id)
    gate.set()
    if answer["code"] in (601, 602):
        started = time.monotonic()
        answer = await peer.wait_pull(task_id, lambda a: a["code"] not in (601, 602), within=5.0)
    assert time.monotonic() - started < 2.0
    assert answer["code"] == 500 and task_id in answer["msg"], answer
    _, info = await api.task(task_id)
    assert info["cdnStatus"] == "FAILED"

    origin.behave("/broken.bin")
    await register_ok(peer, origin.url("/broken.bin"))
    info = await api.wait_cdn(task_id, {"SUCCESS"})
    assert info["realMd5"] == md5_hex(data)
    check_cache(node, task_id, origin.url("/broken.bin"), data, origin, "/broken.bin")
    hits = origin.requests("/broken.bin")
    assert len(hits) == 2, origin.describe("/broken.bin")
    resumed_at = {"cut": None, "stall": None, "cut-after-piece": PER_PIECE, "short": 2 * PER_PIECE}[failure]
    assert hits[1].header("Range") == (None if resumed_at is None else f"bytes={resumed_at}-")


async def test_wrong_user_md5_fails_the_task_and_discards_the_cache(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=14)
    origin.put("/md5.bin", data)
    node = await start_node()
    api = Api(session, node)
    peer = Peer(session, node)
    url = origin.url("/md5.bin")
    task_id = await register_ok(peer, url, md5="0" * 32)
    assert task_id == ids.task_id(url, md5="0" * 32)
    await api.wait_cdn(task_id, {"FAILED"})
    answer = await peer.pull(task_id)
    assert answer["code"] == 500 and "md5" in answer["msg"], answer
    await eventually(lambda: not node.data_path(task_id).exists(), "the bad content to be deleted")
    assert not node.data_path(task_id).with_name(task_id + ".md5").exists()

    await register_ok(Peer(session, node), url, md5="0" * 32)  # retried, and fails again
    await api.wait_cdn(task_id, {"FAILED"})
    assert [h.status for h in origin.requests("/md5.bin")] == [200, 200]

    good = await register_ok(Peer(session, node), url, md5=md5_hex(data))
    await api.wait_cdn(good, {"SUCCESS"})


async def test_registrants_waiting_on_a_failing_source_share_its_answer(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    origin.put("/flaky", b"data")
    origin.misbehave("/flaky", status=503, header_delay=0.3)
    node = await start_node()
    url = origin.url("/flaky")
    answers = await asyncio.gather(*(Peer(session, node).register(url) for _ in range(6)))
    assert all(a["code"] == 607 and "503" in a["msg"] for a in answers), answers
    assert len(origin.requests("/flaky")) == 1
    again = await Peer(session, node).register(url)
    assert again["code"] == 607
    assert len(origin.requests("/flaky")) == 2, "a later registration asks the origin again"
