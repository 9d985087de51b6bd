"""Achieved vs configured egress of the download port with ``--cdn-rate-limit`` (one bucket for all).

For each limit and connection count this starts a real supernode process on loopback with
``--cdn-rate-limit``, lets it cache a file from a local origin, then keeps N connections fetching
pieces from its download port for a few seconds (each connection loops over the pieces, starting at
a different one). It reports the total achieved rate over the first second (burst included), over
the whole run and over the run after its first second, plus each connection's share and Jain's
fairness index (1.0 = equal shares).

The supernode runs on uvloop when installed (the deployed path: chunks are read and written, uvloop has
no ``loop.sendfile``); ``--asyncio`` starts it on the standard loop, where chunks go out with sendfile.

    python bench/cdn_rate_limit.py                           # 4M, 16M, 64M x 1, 3, 8 connections
    python bench/cdn_rate_limit.py --limits 4M --conns 3 --seconds 2 --asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
from cdn_memory import pattern_origin, start_supernode
from swarm import free_port

from dfwire.units import parse_size

_NO_UVLOOP = "import sys; sys.modules['uvloop'] = None; from supernode.cli import main; raise SystemExit(main())"


async def _cache(http: aiohttp.ClientSession, api: int, url: str) -> tuple[str, int, int]:
    """Register a client for ``url``; return (task id, piece size, wrapped length) once cached."""
    body = {"rawUrl": url, "taskUrl": url, "cid": "127.0.0.2-1-1.000", "ip": "127.0.0.2", "hostName": "b",
            "port": 15000, "path": "/peer/file/x", "superNodeIp": "127.0.0.1", "version": "1.0.6"}
    async with http.post(f"http://127.0.0.1:{api}/peer/registry", json=body) as r:
        task_id = str((await r.json())["data"]["taskId"])
    deadline = time.monotonic() + 60
    info: dict[str, object] = {}
    while info.get("cdnStatus") != "SUCCESS":
        if time.monotonic() > deadline or info.get("cdnStatus") == "FAILED":
            raise RuntimeError(f"the CDN did not cache the file: {info}")
        await asyncio.sleep(0.05)
        async with http.get(f"http://127.0.0.1:{api}/api/v1/tasks/{task_id}") as r:
            info = await r.json()
    return task_id, int(str(info["pieceSize"])), int(str(info["fileLength"]))


async def measure(limit: str, conns: int, seconds: float, size: int, use_asyncio: bool) -> dict[str, object]:
    rate = parse_size(limit)
    runner, origin_port = await pattern_origin(size, "/file.bin")
    api, cdn = free_port(), free_port()
    home = tempfile.mkdtemp(prefix="bench-cdnlimit-")
    proc = await start_supernode(home, api, cdn, "--cdn-rate-limit", limit,
                                 entry=["-c", _NO_UVLOOP] if use_asyncio else ["-m", "supernode"])
    try:
        connector = aiohttp.TCPConnector(limit=conns)
        async with aiohttp.ClientSession(connector=connector) as http:
            task_id, piece_size, wrapped = await _cache(http, api, f"http://127.0.0.1:{origin_port}/file.bin")
            url = f"http://127.0.0.1:{cdn}/download/{task_id[:3]}/{task_id}"
            count = (wrapped + piece_size - 1) // piece_size
            received = [0] * conns
            first_second = [0] * conns
            started = time.monotonic()
            stop_at = started + seconds

            async def connection(k: int) -> None:
                piece = k % count
                while time.monotonic() < stop_at:
                    start = piece * piece_size
                    async with http.get(url, headers={"Range": f"bytes={start}-{start + piece_size - 1}"}) as r:
                        async for chunk in r.content.iter_chunked(64 * 1024):
                            now = time.monotonic()
                            if now >= stop_at:
                                return
                            received[k] += len(chunk)
                            if now < started + 1.0:
                                first_second[k] += len(chunk)
                    piece = (piece + 1) % count

            await asyncio.gather(*(connection(k) for k in range(conns)))
        # Bytes are counted up to stop_at only, so the window is ``seconds`` (a connection may notice
        # the end only when its next chunk arrives, which must not count as time spent sending).
        elapsed = seconds
        total = sum(received)
        after = total - sum(first_second)
        jain = total**2 / (conns * sum(x * x for x in received)) if total else 0.0
        return {
            "limit": limit, "limit_bytes_s": rate, "connections": conns, "loop": "asyncio" if use_asyncio else
            "uvloop if installed", "seconds": elapsed, "bytes": total,
            "first_second_ratio": round(sum(first_second) / rate, 3),
            "whole_run_ratio": round(total / elapsed / rate, 3),
            "after_first_second_ratio": round(after / (elapsed - 1.0) / rate, 3) if elapsed > 1.5 else None,
            "shares": [round(x / total, 3) for x in received] if total else [],
            "jain_fairness": round(jain, 3),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await runner.cleanup()
        shutil.rmtree(home, ignore_errors=True)


async def run(limits: list[str], conns: list[int], seconds: float, size: int, use_asyncio: bool
              ) -> list[dict[str, object]]:
    results = []
    for limit in limits:
        for n in conns:
            result = await measure(limit, n, seconds, size, use_asyncio)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limits", default="4M,16M,64M", help="comma-separated --cdn-rate-limit values")
    parser.add_argument("--conns", default="1,3,8", help="comma-separated connection counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the connections fetch")
    parser.add_argument("--size", default="32M", help="file size (default 32M: 8 pieces of 4 MiB)")
    parser.add_argument("--asyncio", action="store_true", help="run the supernode without uvloop (sendfile)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cdn_rate_limit.json")
    args = parser.parse_args()
    results = asyncio.run(run(args.limits.split(","), [int(n) for n in args.conns.split(",")], args.seconds,
                              parse_size(args.size), args.asyncio))
    report = {"python": platform.python_version(), "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0],
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
