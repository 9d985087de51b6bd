"""Protocol-level swarm simulator: the supernode's scheduling API under many peers, no piece bytes.

Starts a real ``supernode`` process and a benchmark origin on loopback, lets the CDN cache one file,
then runs P simulated dfget peers in this process. Each does what dfget v1 does on the wire -
``POST /peer/registry``, ``GET /peer/task`` (700 first), and for every piece handed out
``GET /peer/piece/suc`` followed by a ``/peer/task`` carrying the result (701/503) - but "downloads"
each piece instantly. A peer that gets 600 registers again as a new download; 602 waits 20 ms.
Only requests sent inside the measuring window (after every peer registered once) are counted.
The supernode runs with ``--pull-hold 0`` unless ``--supernode-arg`` says otherwise: a held 602 is a
deliberate wait for news, not processing time, and would read as latency here.

    python bench/api_sim.py --peers 50,200 --seconds 8

Reports requests/s (all, and scheduling pulls alone) and p50/p99 latency per request kind; the
client runs in one event loop, so at high P it may itself be the limit: ``client_cpu_s`` tells.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from origin import Origin  # noqa: E402
from swarm import Children, start_supernode  # noqa: E402

MIB = 1024 * 1024


class Recorder:
    def __init__(self) -> None:
        self.on = False
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.codes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, seconds: float, code: int) -> None:
        if self.on:
            self.lat[kind].append(seconds)
            self.codes[f"{kind}:{code}"] += 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2) if ordered else 0.0


async def _peer(index: int, http: aiohttp.ClientSession, api: str, url: str, rec: Recorder, stop: asyncio.Event,
                registered: asyncio.Barrier) -> None:
    ip = f"127.0.{index // 250}.{index % 250 + 2}"
    first = True
    round_ = 0
    while not stop.is_set():
        round_ += 1
        cid = f"{ip}-{index}-{round_}.000"
        body = {"rawUrl": url, "taskUrl": url, "cid": cid, "ip": ip, "hostName": f"sim{index}",
                "port": 15000 + index % 50000, "path": f"/peer/file/sim{index}", "superNodeIp": "127.0.0.1",
                "version": "1.0.6"}
        t0 = time.perf_counter()
        async with http.post(f"{api}/peer/registry", json=body) as r:
            reg = await r.json(content_type=None)
        rec.add("register", time.perf_counter() - t0, int(reg.get("code", 0)))
        task_id = reg["data"]["taskId"]
        if first:
            first = False
            await registered.wait()
        params = {"srcCid": cid, "dstCid": "", "range": "", "result": "502", "status": "700", "taskId": task_id}
        while not stop.is_set():
            t0 = time.perf_counter()
            async with http.get(f"{api}/peer/task", params=params) as r:
                answer = await r.json(content_type=None)
            code = int(answer.get("code", 0))
            rec.add("pull", time.perf_counter() - t0, code)
            if code == 600:
                break
            if code == 602:
                await asyncio.sleep(0.02)
                continue
            items = answer.get("data") or []
            if code != 601:
                raise RuntimeError(f"/peer/task answered {answer}")
            for item in items:
                t0 = time.perf_counter()
                async with http.get(f"{api}/peer/piece/suc", params={
                        "taskId": task_id, "cid": cid, "dstCid": item["cid"], "pieceRange": item["range"]}) as r:
                    rep = await r.json(content_type=None)
                rec.add("suc", time.perf_counter() - t0, int(rep.get("code", 0)))
                params = {"srcCid": cid, "dstCid": item["cid"], "range": item["range"], "result": "503",
                          "status": "701", "taskId": task_id}


async def run(peers: int, seconds: float, size: int, extra: list[str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    children = Children()
    origin = Origin(size, 4096 * MIB)
    await origin.start()
    rec = Recorder()
    try:
        held = any(arg.startswith("--pull-hold") for arg in extra)
        api_port, _, _ = await start_supernode(children, work, extra if held else ["--pull-hold=0", *extra])
        api = f"http://127.0.0.1:{api_port}"
        url = f"http://127.0.0.1:{origin.port}/sim/file.bin"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            body = {"rawUrl": url, "taskUrl": url, "cid": "127.0.0.1-warm-1.000", "ip": "127.0.0.1", "hostName": "w",
                    "port": 0, "path": "/peer/file/warm", "superNodeIp": "127.0.0.1", "version": "1.0.6",
                    "pattern": "cdn"}
            async with http.post(f"{api}/peer/registry", json=body) as r:
                task_id = (await r.json(content_type=None))["data"]["taskId"]
            for _ in range(600):
                async with http.get(f"{api}/api/v1/tasks/{task_id}") as r:
                    info = await r.json(content_type=None)
                if info.get("cdnStatus") == "SUCCESS":
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"the CDN did not cache the file: {info}")
            stop = asyncio.Event()
            registered = asyncio.Barrier(peers + 1)
            tasks = [asyncio.create_task(_peer(i, http, api, url, rec, stop, registered)) for i in range(peers)]
            await registered.wait()
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            rec.on = True
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            rec.on = False
            window = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await children.stop_all()
        await origin.stop()
        shutil.rmtree(work, ignore_errors=True)
    every = [v for values in rec.lat.values() for v in values]
    kinds = {kind: {"count": len(v), "per_s": round(len(v) / window, 1), "p50_ms": _pct(v, 0.5),
                    "p99_ms": _pct(v, 0.99)} for kind, v in sorted(rec.lat.items())}
    pulls = rec.lat.get("pull", [])
    return {
        "peers": peers, "seconds": round(window, 2), "file_mib": size / MIB, "supernode_args": extra,
        "requests_per_s": round(len(every) / window, 1), "p50_ms": _pct(every, 0.5), "p99_ms": _pct(every, 0.99),
        "scheduling_per_s": round(len(pulls) / window, 1), "pull_p50_ms": _pct(pulls, 0.5),
        "pull_p99_ms": _pct(pulls, 0.99), "by_kind": kinds, "codes": dict(rec.codes),
        "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=lambda t: [int(x) for x in t.split(",")], default=[50, 200])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window per swarm size")
    parser.add_argument("--size", type=int, default=192, help="file size in MiB (192: 48 pieces of 4 MiB)")
    parser.add_argument("--supernode-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "api_sim.json")
    args = parser.parse_args(argv)
    results = [asyncio.run(run(p, args.seconds, args.size * MIB, args.supernode_arg)) for p in args.peers]
    print(f"{'peers':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'pulls/s':>8} {'pull p50':>8} {'pull p99':>8} "
          f"{'client cpu':>10}")
    for r in results:
        print(f"{r['peers']:>5} {r['requests_per_s']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['scheduling_per_s']:>8} "
              f"{r['pull_p50_ms']:>8} {r['pull_p99_ms']:>8} {r['client_cpu_s']:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
