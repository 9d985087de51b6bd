"""Swarm benchmark: N dfget peers fetch one file through a real supernode, against the physical limit.

Everything runs on loopback: the origin (``bench/origin.py``, GLOBAL limit S MiB/s, counts its bytes),
a real ``supernode`` process, and N peers, each a real dfget process with its own 127.0.0.x address
and work home, limited to D MiB/s down (``-s``) and U MiB/s up (``--totallimit``). Each peer's
uploader (``dfget server``) is started before the clock starts, as on nodes where it already runs
(a DaemonSet); ``--no-prestart`` lets dfget start it itself (its start-up then counts).

The fluid-model lower bound of the time until the last peer has the file is

    T* = max(F/S, F/D, N*F/(C + N*U))

C, the supernode's own upload capacity: the download port is not rate limited (``sendfile`` on
loopback, far above the peers' D), so C = infinity and the third term is F/U, which never binds when
U >= D. This is the strictest bound (the smallest T*). What the CDN actually served is reported
(``cdn_bytes/F`` and its mean rate) so the P2P share is visible.

``--no-p2p`` is the baseline: N plain HTTP clients, each limited to D, fetch from the origin directly.

    python bench/swarm.py --n 8,16 --size 64 --origin-rate 20 --down 10 --up 10
    python bench/swarm.py --n 8 --no-p2p
    python bench/swarm.py --n 8 --dfget /usr/local/bin/dfget --no-prestart   # any dfget-compatible binary

The machine must be quiet: every peer is two Python processes, and CPU contention (2 cores shared
with anything else) shows up as time. Each result records the 1-minute load average before and
after, and ``dl/T*`` - the slowest peer's own download time (dfget's summary, from registration to
the checked file, without interpreter start-up) over T*.

Prints a table and writes JSON to ``bench/results/swarm-<label>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
MIB = 1024 * 1024
sys.path.insert(0, str(BENCH))

from origin import GlobalBucket, file_md5  # noqa: E402

_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free a moment ago, never the same twice in one run (a just-closed port can come back at once)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def t_star(n: int, f: float, s: float, d: float, u: float, c: float = float("inf")) -> float:
    """The fluid-model lower bound (seconds) for sizes in MiB and rates in MiB/s."""
    return max(f / s, f / d, n * f / (c + n * u))


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@dataclass
class Config:
    n: int
    size_mib: float
    origin_rate: float
    down: float
    up: float
    p2p: bool = True
    dfget: list[str] = field(default_factory=lambda: [sys.executable, "-m", "dfget"])
    prestart: bool = True
    supernode_args: list[str] = field(default_factory=list)
    timeout: float = 0.0
    trace: bool = False

    def label(self) -> str:
        mode = "p2p" if self.p2p else "http"
        return f"{mode}-n{self.n}-f{self.size_mib:g}-s{self.origin_rate:g}-d{self.down:g}-u{self.up:g}"


@dataclass
class PeerResult:
    ip: str
    seconds: float
    ok: bool
    detail: str = ""
    from_peers_mib: float = 0.0
    from_supernode_mib: float = 0.0
    from_source_mib: float = 0.0
    dfget_seconds: float = 0.0
    """The download time dfget itself reports (from registration on: no process start-up)."""


# ---------------------------------------------------------------------------------------------- processes


class Children:
    """Every process this run started, stopped (by pid) at the end, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, env=_env(), stdin=asyncio.subprocess.DEVNULL,
                                                    **kwargs)
        self.procs.append(proc)
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _first_line(proc: asyncio.subprocess.Process, within: float = 20.0) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), within)
    return line.decode(errors="replace").strip()


async def start_origin(children: Children, size: int, rate: int) -> int:
    proc = await children.start(sys.executable, str(BENCH / "origin.py"), "--size", str(size), "--rate", str(rate),
                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    line = await _first_line(proc)
    if not line.startswith("origin listening on "):
        raise RuntimeError(f"origin did not start: {line!r}")
    return int(line.rpartition(" ")[2])


async def start_supernode(children: Children, home: Path, extra: list[str]) -> tuple[int, int]:
    api, cdn = free_port(), free_port()
    log = (home / "supernode.log").open("wb")
    await children.start(sys.executable, "-m", "supernode", "--home-dir", str(home / "sn"), "--port", str(api),
                         "--download-port", str(cdn), "--advertise-ip", "127.0.0.1", "--listen-host", "127.0.0.1",
                         "--max-bandwidth", "100G", *extra, stdout=log, stderr=log)
    log.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{api}/_ping") as r:
                    if r.status == 200:
                        return api, cdn
            await asyncio.sleep(0.05)
    tail = (home / "supernode.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"supernode did not answer /_ping:\n{tail}")


async def start_uploader(children: Children, cfg: Config, ip: str, home: Path) -> None:
    proc = await children.start(*cfg.dfget, "server", "--ip", ip, "--home", str(home), "--totallimit",
                                f"{cfg.up:g}M", "--alivetime", "5m", "--expiretime", "5m",
                                *(["--verbose"] if cfg.trace else []),
                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    line = await _first_line(proc)
    if not line.split()[-1:] or not line.split()[-1].isdigit():
        raise RuntimeError(f"uploader on {ip} did not start: {line!r}")


async def metrics(api: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{api}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[series] = out.get(series, 0.0) + float(value)
    return out


async def origin_stats(port: int) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/stats") as r:
        return dict(await r.json())


def _counts(stdout: str) -> dict[str, float]:
    found = re.findall(r"([0-9.]+) (B|KiB|MiB|GiB) from (peers|supernode|source)", stdout)
    scale = {"B": 1 / MIB, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    return {where: float(value) * scale[unit] for value, unit, where in found}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- runs


async def _p2p(cfg: Config, work: Path, children: Children, url: str, api: int) -> list[PeerResult]:
    ips = [f"127.0.0.{2 + i}" for i in range(cfg.n)]
    homes = [work / f"node-{ip}" for ip in ips]
    if cfg.prestart:
        await asyncio.gather(*(start_uploader(children, cfg, ip, home) for ip, home in zip(ips, homes, strict=True)))
    started = time.monotonic()

    async def one(ip: str, home: Path) -> PeerResult:
        out = work / "out" / f"{ip}.bin"
        log = (work / f"{ip}.stdout").open("wb")
        proc = await children.start(
            *cfg.dfget, "-u", url, "-o", str(out), "--ip", ip, "--home", str(home), "--node", f"127.0.0.1:{api}",
            "-s", f"{cfg.down:g}M", "--totallimit", f"{cfg.up:g}M", "--timeout", f"{cfg.timeout:g}s",
            "--alivetime", "5m", cwd=work, stdout=log, stderr=asyncio.subprocess.STDOUT)
        log.close()
        try:
            code = await asyncio.wait_for(proc.wait(), cfg.timeout + 15)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        seconds = time.monotonic() - started
        text = (work / f"{ip}.stdout").read_text(errors="replace")
        counts = _counts(text)
        own = re.search(r" in ([0-9.]+)s \(", text)
        return PeerResult(ip, seconds, code == 0, "" if code == 0 else f"exit {code}: {text[-600:]}",
                          counts.get("peers", 0.0), counts.get("supernode", 0.0), counts.get("source", 0.0),
                          float(own.group(1)) if own else 0.0)

    return list(await asyncio.gather(*(one(ip, home) for ip, home in zip(ips, homes, strict=True))))


async def _http(cfg: Config, work: Path, url: str) -> list[PeerResult]:
    started = time.monotonic()

    async def one(index: int) -> PeerResult:
        bucket = GlobalBucket(cfg.down * MIB, burst=128 * 1024)
        out = work / "out" / f"http-{index}.bin"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout)) as http, \
                    http.get(url) as resp:
                resp.raise_for_status()
                with out.open("wb") as handle:
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        await bucket.take(len(chunk))
                        handle.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return PeerResult(f"http-{index}", time.monotonic() - started, False, repr(exc))
        seconds = time.monotonic() - started
        return PeerResult(f"http-{index}", seconds, True, from_source_mib=out.stat().st_size / MIB)

    return list(await asyncio.gather(*(one(i) for i in range(cfg.n))))


async def run(cfg: Config, keep: bool = False) -> dict[str, Any]:
    size = int(cfg.size_mib * MIB)
    bound = t_star(cfg.n, cfg.size_mib, cfg.origin_rate, cfg.down, cfg.up)
    if not cfg.timeout:
        cfg.timeout = max(60.0, 8 * bound * (1 if cfg.p2p else cfg.n))
    work = Path(tempfile.mkdtemp(prefix="bench-swarm-"))
    (work / "out").mkdir()
    children = Children()
    sn_metrics: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    try:
        origin_port = await start_origin(children, size, int(cfg.origin_rate * MIB))
        url = f"http://127.0.0.1:{origin_port}/bench/file-{cfg.size_mib:g}m.bin"
        if cfg.p2p:
            api, _ = await start_supernode(children, work, cfg.supernode_args)
            peers = await _p2p(cfg, work, children, url, api)
            sn_metrics = await metrics(api)
        else:
            peers = await _http(cfg, work, url)
        stats = await origin_stats(origin_port)
        trace = piece_trace(work) if cfg.trace else []
        want = await asyncio.to_thread(file_md5, size)
        for peer in peers:
            out = work / "out" / f"{peer.ip}.bin"
            if peer.ok and (not out.is_file() or await asyncio.to_thread(_md5, out) != want):
                peer.ok, peer.detail = False, "output missing or MD5 mismatch"
    finally:
        await children.stop_all()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    times = [p.seconds for p in peers]
    t_all = max(times)
    own = [p.dfget_seconds for p in peers if p.dfget_seconds]
    cdn_bytes = sn_metrics.get("dragonfly_supernode_cdn_served_bytes_total", 0.0)
    return {
        "label": cfg.label(), "mode": "p2p" if cfg.p2p else "http", "n": cfg.n, "size_mib": cfg.size_mib,
        "origin_rate_mib_s": cfg.origin_rate, "down_mib_s": cfg.down, "up_mib_s": cfg.up,
        "dfget": " ".join(shlex.quote(a) for a in cfg.dfget) if cfg.p2p else "",
        "supernode_args": cfg.supernode_args, "prestarted_uploaders": cfg.prestart and cfg.p2p,
        "c_mib_s": "inf (CDN port not rate limited)",
        "t_star_s": round(bound, 3), "t_all_s": round(t_all, 3), "t_all_over_t_star": round(t_all / bound, 3),
        "t_mean_s": round(statistics.fmean(times), 3), "t_min_s": round(min(times), 3),
        "dfget_max_s": round(max(own), 3) if own else None,
        "dfget_max_over_t_star": round(max(own) / bound, 3) if own else None,
        "origin_bytes": stats["bytes_sent"], "origin_bytes_over_f": round(stats["bytes_sent"] / size, 4),
        "origin_requests": stats["requests"],
        "cdn_served_over_f": round(cdn_bytes / size, 3),
        "cdn_mean_rate_mib_s": round(cdn_bytes / MIB / t_all, 2),
        "pieces_from_peers": sn_metrics.get('dragonfly_supernode_pieces_served_total{source="peer"}', 0.0),
        "pieces_from_cdn": sn_metrics.get('dragonfly_supernode_pieces_served_total{source="cdn"}', 0.0),
        "all_ok": all(p.ok for p in peers), "peers": [asdict(p) for p in peers], "piece_trace": trace,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_PIECE_LINE = re.compile(r"piece (\d+) from (\S+):\d+ (\S+): (\d+) bytes in ([0-9.]+)s")


def piece_trace(work: Path) -> list[dict[str, Any]]:
    """Per peer, from its dfclient.log (debug records of a traced run): pieces and mean piece time by source."""
    rows = []
    for log in sorted(work.glob("node-*/logs/dfclient.log")):
        by: dict[str, list[float]] = {"cdn": [], "peer": []}
        for match in _PIECE_LINE.finditer(log.read_text(errors="replace")):
            if int(match.group(4)) > 1024:  # the 80-byte last piece says nothing about rates
                by["cdn" if match.group(3).startswith("cdnnode:") else "peer"].append(float(match.group(5)))
        rows.append({"peer": log.parents[1].name.removeprefix("node-"),
                     **{f"{k}_pieces": len(v) for k, v in by.items()},
                     **{f"{k}_mean_s": round(statistics.fmean(v), 3) if v else None for k, v in by.items()}})
    return rows


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'config':<34} {'T*':>6} {'T_all':>7} {'T_all/T*':>8} {'mean':>7} {'dl/T*':>6} {'origin/F':>8} "
            f"{'cdn/F':>6} {'load':>5} ok")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r['label']:<34} {r['t_star_s']:>6.2f} {r['t_all_s']:>7.2f} {r['t_all_over_t_star']:>8.3f} "
                    f"{r['t_mean_s']:>7.2f} {r['dfget_max_over_t_star'] or 0:>6.3f} {r['origin_bytes_over_f']:>8.4f} "
                    f"{r['cdn_served_over_f']:>6.2f} {r['loadavg_1m_before_after'][1]:>5.1f} "
                    f"{'yes' if r['all_ok'] else 'NO'}")
    return "\n".join(rows)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=lambda t: [int(x) for x in _floats(t)], default=[8], help="peers, e.g. 8 or 1,2,4,8")
    p.add_argument("--size", type=float, default=64.0, help="file size F in MiB (default 64)")
    p.add_argument("--origin-rate", type=float, default=20.0, help="origin limit S in MiB/s, all connections")
    p.add_argument("--down", type=float, default=10.0, help="per-peer download limit D in MiB/s")
    p.add_argument("--up", type=float, default=10.0, help="per-peer upload limit U in MiB/s")
    p.add_argument("--no-p2p", action="store_true", help="baseline: N plain HTTP clients straight from the origin")
    p.add_argument("--both", action="store_true", help="run every N with P2P and without")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (default 1)")
    p.add_argument("--dfget", default="", help="dfget-compatible binary (default: this repo's dfget)")
    p.add_argument("--no-prestart", action="store_true", help="let dfget start its uploader (start-up counts)")
    p.add_argument("--supernode-arg", action="append", default=[], metavar="ARG",
                   help="extra supernode flag, e.g. --supernode-arg=--cdn-task-limit=8 (repeatable)")
    p.add_argument("--timeout", type=float, default=0.0, help="per-run dfget timeout in s (default: from T*)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) of each run")
    p.add_argument("--trace", action="store_true",
                   help="debug logs in the uploaders (which run the delegated downloads): per-peer piece times by "
                        "source in the JSON and the table")
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/swarm-<first label>.json)")
    return p


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    dfget = shlex.split(args.dfget) if args.dfget else [sys.executable, "-m", "dfget"]
    modes = [True, False] if args.both else [not args.no_p2p]
    results = []
    for p2p in modes:
        for n in args.n:
            for _ in range(args.repeat):
                cfg = Config(n=n, size_mib=args.size, origin_rate=args.origin_rate, down=args.down, up=args.up,
                             p2p=p2p, dfget=dfget, prestart=not args.no_prestart,
                             supernode_args=list(args.supernode_arg), timeout=args.timeout, trace=args.trace)
                result = await run(cfg, keep=args.keep)
                print(table([result]).splitlines()[-1], flush=True)
                for row in result["piece_trace"]:
                    print(f"    {row['peer']:<12} cdn {row['cdn_pieces']:>3} x {row['cdn_mean_s'] or 0:.2f}s   "
                          f"peer {row['peer_pieces']:>3} x {row['peer_mean_s'] or 0:.2f}s")
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    results = asyncio.run(_main(args))
    print()
    print(table(results))
    out = args.out or RESULTS / f"swarm-{results[0]['label']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
