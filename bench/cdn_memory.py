"""Peak memory of the supernode while it caches and serves one large file.

The CDN must stream origin -> disk -> socket, so the supernode's RSS may not grow with the file size.
This starts a real supernode process and a generating origin on loopback (the origin never holds the
file: it produces the bytes as it sends them), registers one dfget-shaped client, lets the CDN fetch
the whole file, then reads every piece back from the download port. It samples the supernode's RSS
throughout and reports the peak (VmHWM).

    python bench/cdn_memory.py --size 2G        # writes bench/results/cdn_memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web
from swarm import answers, free_port

from dfwire.units import parse_size

PATTERN = bytes(i % 251 for i in range(251 * 4096))


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def pattern_chunks(size: int) -> Iterator[bytes]:
    """The ``size`` bytes of the benchmarks' generated file, in chunks of at most 1 MiB."""
    left = size
    while left > 0:
        chunk = PATTERN[: min(left, len(PATTERN))]
        yield chunk
        left -= len(chunk)


async def write_pattern(resp: web.StreamResponse, size: int) -> None:
    for chunk in pattern_chunks(size):
        await resp.write(chunk)


async def pattern_origin(size: int, path: str = "/big.bin") -> tuple[web.AppRunner, int]:
    """An origin on 127.0.0.1 serving the generated file of ``size`` bytes at ``path``; returns (runner, port)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(size), "ETag": '"bench"'})
        await resp.prepare(request)
        await write_pattern(resp, size)
        return resp

    app = web.Application()
    app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _expected_md5(size: int) -> str:
    digest = hashlib.md5()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


async def start_supernode(home: str, api: int, cdn: int, *extra: str,
                          entry: Sequence[str] = ("-m", "supernode")) -> asyncio.subprocess.Process:
    """A real supernode on loopback (``python *entry``; no CDN rate cap unless ``extra`` sets one), returned
    once it answers ``/_ping``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *entry, "--home-dir", home, "--port", str(api), "--download-port", str(cdn),
        "--advertise-ip", "127.0.0.1", "--listen-host", "127.0.0.1", "--max-bandwidth", "100G", *extra,
        stderr=asyncio.subprocess.DEVNULL)
    if await answers(f"http://127.0.0.1:{api}/_ping", 10):
        return proc
    proc.kill()
    await proc.wait()
    raise RuntimeError("supernode did not answer /_ping within 10 s")


async def stop_supernode(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)


async def run(size: int) -> dict[str, object]:
    runner, origin_port = await pattern_origin(size)
    api, cdn = free_port(), free_port()
    home = tempfile.mkdtemp(prefix="bench-sn-")
    proc = await start_supernode(home, api, cdn)
    samples: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            idle_rss = _rss_kib(proc.pid, "VmRSS")
            url = f"http://127.0.0.1:{origin_port}/big.bin"
            body = {"rawUrl": url, "taskUrl": url, "cid": "127.0.0.2-1-1.000", "ip": "127.0.0.2", "hostName": "b",
                    "port": 15000, "path": "/peer/file/x", "superNodeIp": "127.0.0.1", "version": "1.0.6"}
            started = time.monotonic()
            async with http.post(f"http://127.0.0.1:{api}/peer/registry", json=body) as r:
                reg = await r.json()
            task_id = reg["data"]["taskId"]
            info: dict[str, object] = {}
            while info.get("cdnStatus") not in ("SUCCESS", "FAILED"):
                samples.append(_rss_kib(proc.pid, "VmRSS"))
                await asyncio.sleep(0.05)
                async with http.get(f"http://127.0.0.1:{api}/api/v1/tasks/{task_id}") as r:
                    info = await r.json()
            fetch_seconds = time.monotonic() - started
            piece_size = int(str(info["pieceSize"]))
            wrapped = int(str(info["fileLength"]))
            served = 0
            sem = asyncio.Semaphore(4)

            async def piece(n: int) -> None:
                nonlocal served
                start = n * piece_size
                async with sem, http.get(f"http://127.0.0.1:{cdn}/download/{task_id[:3]}/{task_id}",
                                         headers={"Range": f"bytes={start}-{start + piece_size - 1}"}) as r:
                    async for chunk in r.content.iter_chunked(1 << 20):
                        served += len(chunk)
                samples.append(_rss_kib(proc.pid, "VmRSS"))

            started = time.monotonic()
            await asyncio.gather(*(piece(n) for n in range((wrapped + piece_size - 1) // piece_size)))
            serve_seconds = time.monotonic() - started
            peak = _rss_kib(proc.pid, "VmHWM")
        return {
            "file_bytes": size, "cdn_status": info["cdnStatus"],
            "real_md5_ok": info.get("realMd5") == _expected_md5(size),
            "served_bytes": served, "wrapped_bytes": wrapped, "fetch_seconds": round(fetch_seconds, 2),
            "fetch_mib_s": round(size / fetch_seconds / 2**20, 1), "serve_seconds": round(serve_seconds, 2),
            "serve_mib_s": round(served / serve_seconds / 2**20, 1), "idle_rss_mib": round(idle_rss / 1024, 1),
            "peak_sampled_rss_mib": round(max(samples) / 1024, 1), "peak_rss_hwm_mib": round(peak / 1024, 1),
            "python": platform.python_version(), "cpus": os.cpu_count(),
        }
    finally:
        await stop_supernode(proc)
        await runner.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2G", help="file size, e.g. 256M or 2G (default 2G)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cdn_memory.json")
    args = parser.parse_args()
    result = asyncio.run(run(parse_size(args.size)))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
