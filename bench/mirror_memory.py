"""Peak memory of the registry mirror (``dfget proxy``) while it streams one large layer to a client.

The mirror must stream a layer from its piece file as pieces arrive and hash it on the way, so its
memory may not grow with the layer (target: under 150 MiB RSS for a 1 GiB layer). This starts a real
supernode, a generating "registry" on loopback (HEAD and GET of one blob; it never holds the blob)
and ``python -m dfget proxy``; a client GETs the blob through the mirror, checks its sha256 and
counts bytes. The mirror's peak RSS (VmHWM) and that of the uploader it starts are read from /proc;
a second GET of the same blob (from the node's cache) is measured as well.

    python bench/mirror_memory.py --size 1G     # writes bench/results/mirror_memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from cdn_memory import _rss_kib, pattern_chunks, start_supernode, stop_supernode, write_pattern
from swarm import answers, free_port

from dfwire.units import parse_size

REPO = Path(__file__).resolve().parents[1]


def _blob_digest(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


async def _registry(size: int, digest: str) -> tuple[web.AppRunner, int]:
    """One repository ``bench/layer`` with one blob, generated on the fly."""
    async def blob(request: web.Request) -> web.StreamResponse:
        if request.match_info["digest"] != digest:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]}, status=404)
        resp = web.StreamResponse(headers={"Content-Length": str(size), "Docker-Content-Digest": digest})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        await write_pattern(resp, size)
        return resp

    app = web.Application()
    app.router.add_route("GET", "/v2/bench/layer/blobs/{digest}", blob)
    app.router.add_route("HEAD", "/v2/bench/layer/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _get(url: str, pid: int, digest: str) -> dict[str, object]:
    """GET the blob through the mirror, sampling the mirror's VmHWM meanwhile."""
    started = time.monotonic()
    check = hashlib.sha256()
    size = 0
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=600)) as resp:
        status = resp.status
        async for chunk in resp.content.iter_chunked(1 << 20):
            check.update(chunk)
            size += len(chunk)
    return {"status": status, "bytes": size, "digest_ok": "sha256:" + check.hexdigest() == digest,
            "seconds": round(time.monotonic() - started, 2),
            "mirror_peak_rss_mib": round(_rss_kib(pid, "VmHWM") / 1024, 1)}


async def run(size: int) -> dict[str, object]:
    digest = await asyncio.to_thread(_blob_digest, size)
    registry, reg_port = await _registry(size, digest)
    api, cdn, mirror_port = free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    supernode = await start_supernode(str(work / "supernode"), api, cdn)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    home = work / "node"
    mirror = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfget", "proxy", "--listen", f"127.0.0.2:{mirror_port}", "--ip", "127.0.0.2",
        "--home", str(home), "--registry", f"127.0.0.1:{reg_port}=http://127.0.0.1:{reg_port}",
        "--node", f"127.0.0.1:{api}", "--alivetime", "60s", env=env, stderr=asyncio.subprocess.DEVNULL)
    result: dict[str, object] = {"layer_bytes": size, "cpus": os.cpu_count()}
    try:
        url = f"http://127.0.0.2:{mirror_port}/v2/bench/layer/blobs/{digest}?ns=127.0.0.1:{reg_port}"
        if not await answers(f"http://127.0.0.2:{mirror_port}/v2/", 10):
            raise RuntimeError("the registry mirror did not answer /v2/ within 10 s")
        result["through_swarm"] = await _get(url, mirror.pid, digest)
        result["from_node_cache"] = await _get(url, mirror.pid, digest)
        meta = json.loads((home / "meta" / "host.meta").read_text())
        uploader = int(meta.get("pid") or 0)
        if uploader:
            result["uploader_peak_rss_mib"] = round(_rss_kib(uploader, "VmHWM") / 1024, 1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(uploader, signal.SIGTERM)
    finally:
        mirror.send_signal(signal.SIGTERM)
        await asyncio.wait_for(mirror.wait(), 30)
        await stop_supernode(supernode)
        await registry.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="layer size (default 1G)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mirror_memory.json"))
    args = parser.parse_args()
    result = asyncio.run(run(parse_size(args.size)))
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
