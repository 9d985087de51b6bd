"""Small client-side helpers of the preheat tests: the API calls, waiting, and reading the CDN cache."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dfwire.pieces import unwrap
from supernode.node import Supernode

FINISHED = {"SUCCESS", "FAILED"}


def api_url(node: Supernode) -> str:
    return f"http://127.0.0.1:{node.settings.port}"


async def post_preheat(http: aiohttp.ClientSession, node: Supernode, body: dict[str, Any],
                       prefix: str = "/api/v1") -> tuple[int, dict[str, Any]]:
    async with http.post(f"{api_url(node)}{prefix}/preheats", json=body) as resp:
        return resp.status, await resp.json()


async def get_preheat(http: aiohttp.ClientSession, node: Supernode, pid: str,
                      prefix: str = "/api/v1") -> tuple[int, dict[str, Any]]:
    async with http.get(f"{api_url(node)}{prefix}/preheats/{pid}") as resp:
        return resp.status, await resp.json()


async def wait_finished(http: aiohttp.ClientSession, node: Supernode, pid: str, *, within: float = 30.0,
                        prefix: str = "/api/v1") -> dict[str, Any]:
    """Poll ``GET /preheats/{id}`` until SUCCESS or FAILED (at most ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    info: dict[str, Any] = {}
    while loop.time() < deadline:
        status, info = await get_preheat(http, node, pid, prefix)
        assert status == 200, info
        if info["status"] in FINISHED:
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"preheat {pid} not finished within {within:g}s: {info}")


async def preheat(http: aiohttp.ClientSession, node: Supernode, body: dict[str, Any],
                  within: float = 30.0) -> dict[str, Any]:
    """POST a new preheat (201 expected) and wait for its end."""
    status, answer = await post_preheat(http, node, body)
    assert status == 201, answer
    return await wait_finished(http, node, answer["ID"], within=within)


def cached_raw(node: Supernode, task_id: str) -> bytes:
    """The raw content of a finished cache entry, unwrapped from its pieces."""
    meta = node.store.read_meta(task_id)
    assert meta is not None and meta.finish and meta.success, meta
    data = node.store.data_path(task_id).read_bytes()
    return b"".join(unwrap(data[pos:pos + meta.piece_size]) for pos in range(0, len(data), meta.piece_size))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache_files(node: Supernode, task_id: str) -> list[Path]:
    path = node.store.data_path(task_id)
    return sorted(p for p in path.parent.glob(f"{task_id}*")) if path.parent.is_dir() else []


def not_complete(node: Supernode, task_id: str) -> bool:
    """Nothing of ``task_id`` in the cache may pass for complete: no meta, or a meta without success."""
    meta = node.store.read_meta(task_id)
    md5 = node.store.data_path(task_id).with_name(task_id + ".md5")
    return (meta is None or not (meta.finish and meta.success)) and not md5.exists()


async def metric(http: aiohttp.ClientSession, node: Supernode, sample: str, **labels: str) -> float:
    """One sample of ``GET /metrics`` (as the exposition renders it over HTTP)."""
    async with http.get(f"{api_url(node)}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")
