"""The download port (spec §5.7, §3.5): wrapped pieces of the cache, served with byte ranges.

dfget asks for ``/download/{id[:3]}/{id}`` with ``Range: bytes=start-end`` and announces the last piece
at full size, so the answer is 206 with the range clamped to the file; a range that starts past the
end is 416. Nothing but a task's data file is reachable there.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import pytest

from dfwire import pieces

from .conftest import MIB, PER_PIECE, PIECE_SIZE, Api, Node, NodeFactory, Origin, Peer, pattern_bytes, wrapped_file

SIZE = 10 * MIB
WRAPPED = pieces.wrapped_length(SIZE, PIECE_SIZE)  # 10485775, as in the upstream transcript


async def finished_task(origin: Origin, node: Node, session: aiohttp.ClientSession, data: bytes) -> str:
    origin.put("/served.bin", data)
    answer = await Peer(session, node).register(origin.url("/served.bin"))
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    await Api(session, node).wait_cdn(task_id, {"SUCCESS"})
    return task_id


async def get(session: aiohttp.ClientSession, url: str, range_value: str | None = None
              ) -> tuple[int, bytes, Mapping[str, str]]:
    headers = {"Range": range_value} if range_value is not None else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_every_announced_piece_range_is_served(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    data = pattern_bytes(SIZE, seed=20)
    node = await start_node()
    task_id = await finished_task(origin, node, session, data)
    url = f"{node.cdn}/download/{task_id[:3]}/{task_id}"
    wrapped = wrapped_file(data)
    assert len(wrapped) == WRAPPED
    for n in range(3):
        start, end = n * PIECE_SIZE, n * PIECE_SIZE + PIECE_SIZE - 1  # announced at full size, even the last
        status, body, headers = await get(session, url, f"bytes={start}-{end}")
        assert status == 206
        clamped = min(end, WRAPPED - 1)
        assert headers["Content-Range"] == f"bytes {start}-{clamped}/{WRAPPED}"
        assert body == wrapped[start:clamped + 1]
        assert pieces.unwrap(body) == data[n * PER_PIECE:(n + 1) * PER_PIECE]
    assert len(body) == 2097167  # the last piece: 2097162 data bytes + 5


@pytest.mark.parametrize(("range_value", "status", "span"), [
    (None, 200, (0, WRAPPED)),
    ("bytes=0-0", 206, (0, 1)),
    ("bytes=100-", 206, (100, WRAPPED)),
    ("bytes=-5", 206, (WRAPPED - 5, WRAPPED)),
    (f"bytes={WRAPPED - 1}-{WRAPPED + 100}", 206, (WRAPPED - 1, WRAPPED)),
    (f"bytes={WRAPPED}-{WRAPPED + PIECE_SIZE - 1}", 416, None),  # a piece past the end
    (f"bytes={3 * PIECE_SIZE}-{4 * PIECE_SIZE - 1}", 416, None),
])
async def test_ranges_are_clamped_and_past_the_end_is_416(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession, range_value: str | None,
        status: int, span: tuple[int, int] | None) -> None:
    data = pattern_bytes(SIZE, seed=21)
    node = await start_node()
    task_id = await finished_task(origin, node, session, data)
    got_status, body, headers = await get(session, f"{node.cdn}/download/{task_id[:3]}/{task_id}", range_value)
    assert got_status == status
    if span is not None:
        assert body == wrapped_file(data)[span[0]:span[1]]
    else:
        assert headers["Content-Range"] == f"bytes */{WRAPPED}"


async def test_only_task_data_files_are_reachable(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    node = await start_node()
    task_id = await finished_task(origin, node, session, pattern_bytes(MIB, seed=22))
    other = "f" * 64
    for path in (
        f"/download/{other[:3]}/{other}",  # a well-formed ID that is not cached
        f"/download/abc/{task_id}",  # wrong bucket
        f"/download/{task_id[:3]}/{task_id}.meta",
        f"/download/{task_id[:3]}/{task_id}.md5",
        f"/download/{task_id[:3]}/..%2F..%2F{task_id[:3]}%2F{task_id}",
        f"/download/{task_id[:3]}",
        f"/{task_id[:3]}/{task_id}",
    ):
        status, _, _ = await get(session, f"{node.cdn}{path}", "bytes=0-10")
        assert status == 404, path
    status, _, _ = await get(session, f"{node.cdn}/download/{task_id[:3]}/{task_id}", "bytes=0-10")
    assert status == 206


async def test_fully_deleted_task_is_no_longer_served(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    node = await start_node()
    task_id = await finished_task(origin, node, session, pattern_bytes(MIB, seed=23))
    assert await Api(session, node).delete_task(task_id, full=True) in (200, 204)
    status, _, _ = await get(session, f"{node.cdn}/download/{task_id[:3]}/{task_id}", "bytes=0-10")
    assert status == 404
    assert not node.data_path(task_id).parent.exists()  # the empty bucket is removed too (§5.3)
