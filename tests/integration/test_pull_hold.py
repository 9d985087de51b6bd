"""A pull that would answer 602 is held until the task changes, so waiting clients are never idle for long."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from .conftest import MIB, PER_PIECE, Api, NodeFactory, Origin, Peer, pattern_bytes

SIZE = 10 * MIB


async def _register(peer: Peer, url: str) -> str:
    answer = await peer.register(url)
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    return task_id


async def test_a_held_pull_gets_the_piece_the_moment_the_cdn_seals_it(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    origin.put("/held.bin", pattern_bytes(SIZE, seed=21))
    gate = asyncio.Event()
    origin.misbehave("/held.bin", body_gate_at=PER_PIECE - 1000, body_gate=gate)  # piece 0 stays unsealed
    node = await start_node(pull_hold=3.0)
    peer = Peer(session, node)
    task_id = await _register(peer, origin.url("/held.bin"))
    pull = asyncio.create_task(peer.pull(task_id))
    await asyncio.sleep(0.5)
    assert not pull.done(), f"answered while nothing could be handed out: {pull.result()}"
    opened = time.monotonic()
    gate.set()
    answer = await pull
    assert answer["code"] == 601, answer
    assert [item["pieceNum"] for item in answer["data"]] == [0]
    assert time.monotonic() - opened < 1.0, "the pull was not woken by the sealed piece"


async def test_a_pull_is_held_at_most_pull_hold_and_not_at_all_with_0(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    origin.put("/stuck.bin", pattern_bytes(SIZE, seed=22))
    origin.misbehave("/stuck.bin", body_gate_at=1000, body_gate=asyncio.Event())  # never sends piece 0
    for hold, low, high in ((0.4, 0.4, 1.5), (0.0, 0.0, 0.3)):
        node = await start_node(pull_hold=hold)
        peer = Peer(session, node)
        task_id = await _register(peer, origin.url("/stuck.bin"))
        started = time.monotonic()
        answer = await peer.pull(task_id)
        took = time.monotonic() - started
        assert answer["code"] == 602, answer
        assert low <= took < high, f"pull_hold={hold}: answered after {took:.2f}s"


async def _at_the_limit(peer: Peer, api: Api, url: str) -> tuple[str, list[dict[str, Any]]]:
    """Register and take as many pieces as the client may run (the CDN holds the whole file; the client,
    never measured, may run two at once while the CDN's capacity is probed)."""
    task_id = await _register(peer, url)
    await api.wait_cdn(task_id, {"SUCCESS"})
    answer = await peer.pull(task_id)
    assert answer["code"] == 601 and len(answer["data"]) == 2, answer
    return task_id, answer["data"]


async def test_a_client_at_its_limit_is_held_and_gets_a_piece_when_one_of_its_own_is_reported(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    """Go dfget pulls again only when a piece of its own ends: a 601 without data, to a client whose last
    pieces the supernode learns of only from its writer's reports still to come, left it idle for good."""
    origin.put("/limit.bin", pattern_bytes(6 * PER_PIECE, seed=23))
    node = await start_node(pull_hold=3.0)
    peer = Peer(session, node)
    task_id, running = await _at_the_limit(peer, Api(session, node), origin.url("/limit.bin"))
    pull = asyncio.create_task(peer.pull(task_id))
    await asyncio.sleep(0.5)
    assert not pull.done(), f"a client at its limit was answered at once: {pull.result()}"
    first = running[0]
    query = f"taskId={task_id}&cid={peer.cid}&dstCid={first['cid']}&pieceRange={first['range']}"
    async with session.get(f"{node.api}/peer/piece/suc?{query}") as resp:
        assert resp.status == 200, await resp.text()
    answer = await asyncio.wait_for(pull, 1.0)
    assert answer["code"] == 601, answer
    (item,) = answer["data"]  # the freed slot, at once
    assert item["pieceNum"] not in {r["pieceNum"] for r in running}, answer


async def test_a_client_still_at_its_limit_when_the_hold_ends_is_told_to_wait(
        origin: Origin, start_node: NodeFactory, session: aiohttp.ClientSession) -> None:
    origin.put("/limit2.bin", pattern_bytes(6 * PER_PIECE, seed=24))
    for hold, code in ((0.4, 602), (0.0, 601)):  # with no hold, Go's answer: 601 without data
        node = await start_node(pull_hold=hold)
        peer = Peer(session, node)
        task_id, _ = await _at_the_limit(peer, Api(session, node), origin.url("/limit2.bin"))
        started = time.monotonic()
        answer = await peer.pull(task_id)
        assert answer["code"] == code and "data" not in answer, answer
        assert time.monotonic() - started >= hold, f"pull_hold={hold}: not held"
