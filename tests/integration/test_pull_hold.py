"""A pull that would answer 602 is held until the task changes, so waiting clients are never idle for long."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .conftest import MIB, PER_PIECE, NodeFactory, Origin, Peer, pattern_bytes

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
