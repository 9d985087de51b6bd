"""Swarm benchmark: N dfget peers fetch one file through a real supernode, against the physical limit.

Everything runs on loopback: the origin (``bench/origin.py``, GLOBAL limit S MiB/s, counts its bytes),
a real supernode, and N peers, each a real dfget process with its own 127.0.0.x address and work home,
limited to D MiB/s down (``-s``) and U MiB/s up (``--totallimit``). Each peer's uploader (``dfget
server``) is started before the clock starts, as on nodes where it already runs (a DaemonSet);
``--no-prestart`` lets dfget start it itself (its start-up then counts).

The fluid-model lower bound of the time until the last peer has the file is

    T* = max(F/S, F/D, N*F/(C + N*U))

C is the upload capacity of the supernode's piece port (the CDN, its ``--download-port``). Without
``--cdn-rate`` nothing limits it (``sendfile`` on loopback, far above the peers' D): C = infinity and the
third term is F/U. ``--cdn-rate C`` limits it OUTSIDE the supernode: the whole run moves into a private
network namespace (``unshare -n``, only ``lo``), where an HTB class of rate C on ``lo`` takes every packet
whose source port is the piece port (``bench/netns.py``; ``--selftest-tc`` checks the achieved rate with
curl). ``--netns`` runs in such a namespace without a limit, for comparison. What the CDN actually served
is reported (``cdn/F`` and its mean rate) so the P2P share is visible.

``--supernode go`` runs the Go supernode (``$DF_SHARED/dfv1/bin``, default ``<repo>/../shared``) with nginx
on its download port (the limit then applies to nginx's port); ``both`` runs ours, then Go, for every N.
``--dfget go`` makes every peer a Go dfget, ``mixed`` alternates Go and ours; a Go dfget always starts its
own uploader (the run stops it at the end). The Go programs listen on every interface, so they always run
in a private namespace (``--netns`` is implied).

``--no-p2p`` is the baseline: N plain HTTP clients, each limited to D, fetch from the origin directly.

    python bench/swarm.py --n 8,16 --size 64 --origin-rate 20 --down 10 --up 10
    python bench/swarm.py --n 8 --no-p2p
    python bench/swarm.py --n 8 --cdn-rate 20 --supernode both --dfget go
    python bench/swarm.py --n 8 --down 20 --up 10 --cdn-rate 20          # upload-bound: T* = N*F/(C+N*U)
    python bench/swarm.py --selftest-tc --cdn-rate 20
    python bench/swarm.py --n 8 --dfget /usr/local/bin/dfget --no-prestart   # a binary with our dfget's flags

The machine must be quiet: every peer is two Python processes, and CPU contention (2 cores shared
with anything else) shows up as time. Each result records the 1-minute load average before and
after, and ``dl/T*`` - the slowest peer's own download time (dfget's summary, from registration to
the checked file, without interpreter start-up) over T*. With Go dfget peers, ``pc/T*`` is when the last of
them had read its last piece, over T*: the supernode's part of the run. What a Go dfget does after that (flush
its writer, then the whole file's MD5, all of them at about the same moment on 2 cores) is CPU, not network,
and the JSON has its longest as ``go_after_last_piece_max_s``. ``cpu/T*`` is the machine's CPU time in the
run, less our supernode's, spread over every core, over T*: a floor for this run's client work here.

Prints a table and writes JSON to ``bench/results/swarm-<label>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
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
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
MIB = 1024 * 1024
sys.path.insert(0, str(BENCH))

import go_dfv1  # noqa: E402
import netns  # noqa: E402
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


OUR_DFGET = [sys.executable, "-m", "dfget"]


@dataclass
class Config:
    n: int
    size_mib: float
    origin_rate: float
    down: float
    up: float
    p2p: bool = True
    dfget: list[str] = field(default_factory=lambda: list(OUR_DFGET))
    """Our dfget's command line, or any binary with its flags (``dfget server`` included)."""
    dfget_kind: str = "ours"
    """``ours`` (every peer runs ``dfget``), ``go`` (every peer runs the Go dfget), ``mixed`` (alternating)."""
    supernode: str = "ours"
    """``ours`` or ``go`` (the Go supernode with nginx on its download port)."""
    prestart: bool = True
    supernode_args: list[str] = field(default_factory=list)
    go_supernode_args: list[str] = field(default_factory=list)
    cdn_rate: float = float("inf")
    """C in MiB/s: the tc limit on the bytes the piece port sends (inf: none)."""
    netns: bool = False
    timeout: float = 0.0
    trace: bool = False

    def label(self) -> str:
        mode = "p2p" if self.p2p else "http"
        who = f"-sn_{self.supernode}-dfget_{self.dfget_kind}" if self.p2p else ""
        limit = f"-c{self.cdn_rate:g}" if self.cdn_rate != float("inf") and self.p2p else ""
        return (f"{mode}{who}-n{self.n}-f{self.size_mib:g}-s{self.origin_rate:g}-d{self.down:g}-u{self.up:g}"
                f"{limit}")

    def peer_is_go(self, index: int) -> bool:
        return self.dfget_kind == "go" or (self.dfget_kind == "mixed" and index % 2 == 0)

    def bound(self) -> float:
        return t_star(self.n, self.size_mib, self.origin_rate, self.down, self.up,
                      self.cdn_rate if self.p2p else float("inf"))


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
    dfget: str = "ours"
    """Which dfget this peer ran: ``ours`` or ``go``."""
    pieces_from_supernode: int | None = None
    pieces_from_peers: int | None = None
    """Pieces by source as the Go dfget logged them (our dfget reports bytes only)."""
    after_last_piece_s: float | None = None
    """A Go dfget's time from its last piece read to its end (:class:`go_dfv1.GoTail`): writer flush, file MD5."""
    writer_wait_s: float | None = None
    md5_s: float | None = None


# ---------------------------------------------------------------------------------------------- processes


class Children:
    """Every process this run started, stopped (by pid) at the end, whatever happens.

    A child started with ``group=True`` leads its own process group (nginx and its worker), and the
    whole group is signalled.
    """

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.groups: set[int] = set()

    async def start(self, *argv: str, group: bool = False, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, env=_env(), stdin=asyncio.subprocess.DEVNULL,
                                                    start_new_session=group, **kwargs)
        self.procs.append(proc)
        if group:
            self.groups.add(proc.pid)
        return proc

    def _signal(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if proc.pid in self.groups:
                os.killpg(proc.pid, sig)
            elif proc.returncode is None:
                proc.send_signal(sig)

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                self._signal(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                self._signal(proc, signal.SIGKILL)
                await proc.wait()
            if proc.pid in self.groups:  # workers outliving their master
                self._signal(proc, signal.SIGKILL)


def _argv(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def _daemon_pids(homes: list[Path]) -> list[int]:
    wanted = {str(home) for home in homes}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            argv = _argv(int(entry.name))
            if "server" in argv and any(a == "--home" and b in wanted for a, b in itertools.pairwise(argv)):
                found.append(int(entry.name))
    return found


def _running(pids: list[int]) -> bool:
    return any(_argv(pid) for pid in pids)  # a zombie (or a gone process) has no command line


async def stop_node_daemons(homes: list[Path]) -> list[str]:
    """Stop the uploader daemons dfget started itself for these homes (Go's and ours: own process groups).

    They are not this run's children: each was started by a dfget, in its own session, and would live
    for ``--alivetime``. They are found by their ``--home`` argument, one of this run's own temporary
    directories, so nothing else matches. Returns their command lines.
    """
    found = await asyncio.to_thread(_daemon_pids, homes)
    lines = [f"{pid}: {' '.join(_argv(pid))}" for pid in found]
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _running(found):
            break
        await asyncio.sleep(0.05)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return lines


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


async def answers(url: str, seconds: float) -> bool:
    """Whether ``url`` answers 200 within ``seconds``, polled every 50 ms: a server a benchmark started is up."""
    async with aiohttp.ClientSession() as http:
        for _ in range(max(1, round(seconds / 0.05))):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.05)
    return False


async def _wait_ping(api: int, log: Path, what: str) -> None:
    if not await answers(f"http://127.0.0.1:{api}/_ping", 20):
        raise RuntimeError(f"{what} did not answer /_ping:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.is_file() else ""


async def start_supernode(children: Children, home: Path, extra: list[str]) -> tuple[int, int, int]:
    """Our supernode; its API port, piece port and PID."""
    api, cdn = free_port(), free_port()
    log = (home / "supernode.log").open("wb")
    proc = await children.start(sys.executable, "-m", "supernode", "--home-dir", str(home / "sn"), "--port", str(api),
                         "--download-port", str(cdn), "--advertise-ip", "127.0.0.1", "--listen-host", "127.0.0.1",
                         "--max-bandwidth", "100G", *extra, stdout=log, stderr=log)
    log.close()
    await _wait_ping(api, home / "supernode.log", "supernode")
    return api, cdn, proc.pid


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far (``/proc/stat``): what share of the cores a run kept busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return float(sum(fields) - idle), float(sum(fields))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process has used (Linux ``/proc``); None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_go_supernode(children: Children, home: Path, extra: list[str]) -> tuple[int, int]:
    """The Go supernode, and nginx on its download port serving its ``{home-dir}/repo`` (as upstream deploys it).

    Same limits as ours where the Go flags exist: ``--max-bandwidth 100G`` (the source fetch is not what is
    measured); ``--up-limit``/``--down-limit`` have the same defaults in both (5 and 4).
    """
    api, cdn = free_port(), free_port()
    sn_home = home / "gosn"
    (sn_home / "repo").mkdir(parents=True)
    conf = go_dfv1.nginx_conf(home, cdn, sn_home / "repo")
    nginx_log = (home / "nginx.out").open("wb")
    await children.start(go_dfv1.nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-e",
                         str(conf.parent / "error.log"), group=True, stdout=nginx_log, stderr=nginx_log)
    nginx_log.close()
    config = home / "go-supernode.yml"  # empty: no /etc/dragonfly/supernode.yml of the machine leaks in
    config.write_text("")
    log = (home / "supernode.log").open("wb")
    await children.start(str(go_dfv1.go_binary(ROOT, "supernode")), "--home-dir", str(sn_home), "--port", str(api),
                         "--download-port", str(cdn), "--advertise-ip", "127.0.0.1", "--max-bandwidth", "100G",
                         "--config", str(config), *extra, stdout=log, stderr=log)
    log.close()
    await _wait_ping(api, home / "supernode.log", "Go supernode")
    for _ in range(200):  # nginx: any answer on the port (404 for /) means it serves
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", cdn), timeout=1).close()
            return api, cdn
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {cdn}: {(home / 'nginx.out').read_text(errors='replace')}")


async def start_uploader(children: Children, cfg: Config, ip: str, home: Path) -> None:
    """Our node's uploader (``dfget server``), started before the clock as a DaemonSet would have it."""
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


async def _p2p(cfg: Config, work: Path, children: Children, url: str, api: int
               ) -> tuple[list[PeerResult], tuple[float, float]]:
    """The peers' results, and :func:`machine_busy` when the clock started (after any prestarted uploaders)."""
    ips = [f"127.0.0.{2 + i}" for i in range(cfg.n)]
    homes = [work / f"node-{ip}" for ip in ips]
    go = [cfg.peer_is_go(i) for i in range(cfg.n)]
    if cfg.prestart:
        # Go dfget starts its own uploader whatever runs already (at times a second one beside a prestarted
        # one, whose disk GC then deletes the file being downloaded): Go peers always start their own.
        await asyncio.gather(*(start_uploader(children, cfg, ip, home)
                               for ip, home, g in zip(ips, homes, go, strict=True) if not g))
    busy_before = machine_busy()
    started = time.monotonic()

    async def one(ip: str, home: Path, is_go: bool) -> PeerResult:
        out = work / "out" / f"{ip}.bin"
        log = (work / f"{ip}.stdout").open("wb")
        binary = [str(go_dfv1.go_binary(ROOT, "dfget"))] if is_go else cfg.dfget
        proc = await children.start(
            *binary, "-u", url, "-o", str(out), "--ip", ip, "--home", str(home), "--node", f"127.0.0.1:{api}",
            "-s", f"{cfg.down:g}M", "--totallimit", f"{cfg.up:g}M", "--timeout", f"{cfg.timeout:g}s",
            # Go dfget logs each piece read only at debug level: --verbose, to count them by source
            "--alivetime", "5m", *(["--verbose"] if is_go else []), cwd=work, stdout=log,
            stderr=asyncio.subprocess.STDOUT)
        log.close()
        try:
            code = await asyncio.wait_for(proc.wait(), cfg.timeout + 15)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        seconds = time.monotonic() - started
        text = (work / f"{ip}.stdout").read_text(errors="replace")
        result = PeerResult(ip, seconds, code == 0, "" if code == 0 else f"exit {code}: {text[-600:]}",
                            dfget="go" if is_go else "ours")
        if is_go:
            pieces = go_dfv1.go_dfget_pieces(home)
            result.pieces_from_supernode, result.pieces_from_peers = pieces.from_supernode, pieces.from_peers
            result.from_supernode_mib = round(pieces.supernode_bytes / MIB, 3)
            result.from_peers_mib = round(pieces.peer_bytes / MIB, 3)
            result.from_source_mib = cfg.size_mib if go_dfv1.went_to_source(text) else 0.0
            result.dfget_seconds = go_dfv1.go_dfget_seconds(text)
            if tail := go_dfv1.go_dfget_tail(home):
                result.after_last_piece_s, result.writer_wait_s, result.md5_s = (
                    tail.after_last_piece, tail.writer_wait, tail.md5)
        else:
            counts = _counts(text)
            own = re.search(r" in ([0-9.]+)s \(", text)
            result.from_peers_mib, result.from_supernode_mib = counts.get("peers", 0.0), counts.get("supernode", 0.0)
            result.from_source_mib = counts.get("source", 0.0)
            result.dfget_seconds = float(own.group(1)) if own else 0.0
        return result

    peers = list(await asyncio.gather(*(one(ip, home, g) for ip, home, g in zip(ips, homes, go, strict=True))))
    return peers, busy_before


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


def _cdn_counts(cfg: Config, work: Path, sn_metrics: dict[str, float], peers: list[PeerResult]) -> dict[str, Any]:
    """What the CDN served: ours from its own metrics, Go's from nginx's access log (the Go supernode does
    not serve the bytes) and its dfget peers' logs."""
    if cfg.supernode == "ours":
        return {"cdn_bytes": sn_metrics.get("dragonfly_supernode_cdn_served_bytes_total", 0.0),
                "cdn_bytes_from": "supernode metric dragonfly_supernode_cdn_served_bytes_total",
                "pieces_from_peers": sn_metrics.get('dragonfly_supernode_pieces_served_total{source="peer"}', 0.0),
                "pieces_from_cdn": sn_metrics.get('dragonfly_supernode_pieces_served_total{source="cdn"}', 0.0),
                "pieces_from": "supernode metric dragonfly_supernode_pieces_served_total{source}",
                "cdn_capacity_mib_s": round(sn_metrics.get("dragonfly_supernode_cdn_capacity_bytes", 0.0) / MIB, 2)}
    nginx = go_dfv1.nginx_counts(work)
    logged = [p.pieces_from_peers for p in peers]
    return {"cdn_bytes": float(nginx.bytes_sent), "cdn_bytes_from": "nginx access log ($body_bytes_sent)",
            "pieces_from_peers": float(sum(x for x in logged if x is not None)) if None not in logged else None,
            "pieces_from_cdn": float(nginx.pieces),
            "pieces_from": "CDN: nginx 2xx requests; peers: Go dfget logs (null when some peers run our dfget)",
            "go_pieces_downloaded_size_bytes": sn_metrics.get(
                "dragonfly_supernode_pieces_downloaded_size_bytes_total"),
            "go_cdn_download_size_bytes": sn_metrics.get("dragonfly_supernode_cdn_download_size_bytes_total"),
            "go_supernode_log": go_dfv1.go_supernode_events(work / "gosn"),
            "nginx_404s": nginx.not_found}


async def run(cfg: Config, keep: bool = False) -> dict[str, Any]:
    size = int(cfg.size_mib * MIB)
    bound = cfg.bound()
    if not cfg.timeout:
        cfg.timeout = max(60.0, 8 * bound * (1 if cfg.p2p else cfg.n))
    work = Path(tempfile.mkdtemp(prefix="bench-swarm-"))
    (work / "out").mkdir()
    children = Children()
    sn_metrics: dict[str, float] = {}
    tc_bytes: int | None = None
    orphans: list[str] = []
    peers: list[PeerResult] = []
    load_before = os.getloadavg()[0]
    sn_pid, sn_cpu_before, sn_cpu, machine_cpu, machine_cpu_s = 0, None, None, None, None
    try:
        origin_port = await start_origin(children, size, int(cfg.origin_rate * MIB))
        url = f"http://127.0.0.1:{origin_port}/bench/file-{cfg.size_mib:g}m.bin"
        if cfg.p2p:
            if cfg.supernode == "go":
                api, cdn = await start_go_supernode(children, work, cfg.go_supernode_args)
            else:
                api, cdn, sn_pid = await start_supernode(children, work, cfg.supernode_args)
                sn_cpu_before = cpu_seconds(sn_pid)
            if cfg.cdn_rate != float("inf"):
                netns.limit_source_port(cdn, cfg.cdn_rate)
            peers, busy_before = await _p2p(cfg, work, children, url, api)
            busy, total = (after - before for after, before in zip(machine_busy(), busy_before, strict=True))
            machine_cpu = round(busy / total, 3) if total else None
            machine_cpu_s = busy / os.sysconf("SC_CLK_TCK")
            if sn_pid and sn_cpu_before is not None and (after := cpu_seconds(sn_pid)) is not None:
                sn_cpu = round(after - sn_cpu_before, 2)
            sn_metrics = await metrics(api)
            tc_bytes = netns.limited_bytes() if cfg.cdn_rate != float("inf") else None
        else:
            peers = await _http(cfg, work, url)
        stats = await origin_stats(origin_port)
        trace = piece_trace(work) if cfg.trace else []
        want = await asyncio.to_thread(file_md5, size)
        for peer in peers:
            out = work / "out" / f"{peer.ip}.bin"
            if peer.ok and (not out.is_file() or await asyncio.to_thread(_md5, out) != want):
                peer.ok, peer.detail = False, "output missing or MD5 mismatch"
        counted = _cdn_counts(cfg, work, sn_metrics, peers) if cfg.p2p else {"cdn_bytes": 0.0}
    finally:
        await children.stop_all()
        orphans = await stop_node_daemons([work / f"node-127.0.0.{2 + i}" for i in range(cfg.n)])
        if cfg.cdn_rate != float("inf"):
            netns.clear()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    times = [p.seconds for p in peers]
    t_all = max(times)
    own = [p.dfget_seconds for p in peers if p.dfget_seconds]
    # when the last Go peer had read its last piece: the supernode's part of T_all, without the clients' checks
    delivered = [p.seconds - p.after_last_piece_s for p in peers if p.after_last_piece_s is not None]
    # The rest of the machine's work (dfgets and their uploaders, the origin; for Go's run also its supernode
    # and nginx) spread over every core: no schedule of this run's pieces finishes sooner on this machine.
    floor = (machine_cpu_s - (sn_cpu or 0.0)) / (os.cpu_count() or 1) if machine_cpu_s is not None else None
    cdn_bytes = float(counted.pop("cdn_bytes"))
    limited = cfg.cdn_rate != float("inf") and cfg.p2p
    return {
        "label": cfg.label(), "mode": "p2p" if cfg.p2p else "http", "n": cfg.n, "size_mib": cfg.size_mib,
        "origin_rate_mib_s": cfg.origin_rate, "down_mib_s": cfg.down, "up_mib_s": cfg.up,
        "supernode": cfg.supernode if cfg.p2p else "", "dfget_kind": cfg.dfget_kind if cfg.p2p else "",
        "dfget": " ".join(shlex.quote(a) for a in cfg.dfget) if cfg.p2p and cfg.dfget_kind != "go" else "",
        "supernode_args": (cfg.go_supernode_args if cfg.supernode == "go" else cfg.supernode_args) if cfg.p2p else [],
        # our peers' uploaders; a Go peer's is always started by its dfget
        "prestarted_uploaders": cfg.prestart and cfg.p2p and cfg.dfget_kind != "go",
        "c_mib_s": cfg.cdn_rate if limited else None,
        "cdn_limit": (f"tc htb on lo of a private netns, packets from the piece port, burst "
                      f"{netns.burst_bytes(cfg.cdn_rate)} B") if limited else "none (C = inf)",
        "netns": cfg.netns, "cdn_tc_class_bytes": tc_bytes,
        "t_star_s": round(bound, 3), "t_all_s": round(t_all, 3), "t_all_over_t_star": round(t_all / bound, 3),
        "t_mean_s": round(statistics.fmean(times), 3), "t_min_s": round(min(times), 3),
        "dfget_max_s": round(max(own), 3) if own else None,
        "dfget_max_over_t_star": round(max(own) / bound, 3) if own else None,
        "go_last_piece_s": round(max(delivered), 3) if delivered else None,
        "go_last_piece_over_t_star": round(max(delivered) / bound, 3) if delivered else None,
        "go_after_last_piece_max_s": max((p.after_last_piece_s or 0.0 for p in peers), default=0.0) or None,
        "origin_bytes": stats["bytes_sent"], "origin_bytes_over_f": round(stats["bytes_sent"] / size, 4),
        "origin_requests": stats["requests"],
        "cdn_bytes": cdn_bytes, "cdn_served_over_f": round(cdn_bytes / size, 3),
        "cdn_mean_rate_mib_s": round(cdn_bytes / MIB / t_all, 2),
        "peers_report_mib_over_f": {
            "from_supernode": round(sum(p.from_supernode_mib for p in peers) / cfg.size_mib, 3),
            "from_peers": round(sum(p.from_peers_mib for p in peers) / cfg.size_mib, 3),
            "from_source": round(sum(p.from_source_mib for p in peers) / cfg.size_mib, 3)},
        **counted,
        "node_daemons_stopped_after": orphans,
        "all_ok": all(p.ok for p in peers), "peers": [asdict(p) for p in peers], "piece_trace": trace,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_1m_before_after": [round(load_before, 2), round(load_after, 2)],
        "supernode_cpu_s": sn_cpu,
        "machine_cpu_busy": machine_cpu,
        "supernode_cpu_over_t_all": round(sn_cpu / t_all, 3) if sn_cpu is not None and t_all else None,
        "machine_cpu_s": round(machine_cpu_s, 2) if machine_cpu_s is not None else None,
        "cpu_floor_s": round(floor, 2) if floor is not None else None,
        "cpu_floor_over_t_star": round(floor / bound, 3) if floor is not None else None,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_PIECE_LINE = re.compile(r"^(\S+ \S+) .*piece (\d+) from (\S+):\d+ (\S+): (\d+) bytes in ([0-9.]+)s", re.MULTILINE)
_REGISTERED = re.compile(r"^(\S+ \S+) .* dfget\.register: registered with", re.MULTILINE)


def _log_time(stamp: str) -> float:
    """A dfclient.log timestamp (``2026-12-07 11:19:03,811``) as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _idle(runs: list[tuple[float, float]]) -> float:
    """Seconds between the first start and the last end of ``runs`` (start, end) that no run covers."""
    runs = sorted(runs)
    idle, reach = 0.0, runs[0][1]
    for start, end in runs[1:]:
        idle += max(0.0, start - reach)
        reach = max(reach, end)
    return idle


def piece_trace(work: Path) -> list[dict[str, Any]]:
    """Per peer, from its dfclient.log (debug records of a traced run): pieces and mean piece time by source,
    how long it waited from registration to its first piece (``first_wait_s``), and how long it then had
    no piece running before its last one ended (``idle_s``): where a swarm's time goes besides moving bytes."""
    rows = []
    for log in sorted(work.glob("node-*/logs/dfclient.log")):
        text = log.read_text(errors="replace")
        by: dict[str, list[float]] = {"cdn": [], "peer": []}
        runs: list[tuple[float, float]] = []
        for match in _PIECE_LINE.finditer(text):
            if int(match.group(5)) > 1024:  # the 80-byte last piece says nothing about rates
                seconds, end = float(match.group(6)), _log_time(match.group(1))
                by["cdn" if match.group(4).startswith("cdnnode:") else "peer"].append(seconds)
                runs.append((end - seconds, end))
        registered = _REGISTERED.search(text)
        first_wait = min(runs)[0] - _log_time(registered.group(1)) if runs and registered else None
        rows.append({"peer": log.parents[1].name.removeprefix("node-"),
                     **{f"{k}_pieces": len(v) for k, v in by.items()},
                     **{f"{k}_mean_s": round(statistics.fmean(v), 3) if v else None for k, v in by.items()},
                     "first_wait_s": round(first_wait, 3) if first_wait is not None else None,
                     "idle_s": round(_idle(runs), 3) if runs else None})
    return rows


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'config':<58} {'T*':>6} {'T_all':>7} {'T_all/T*':>8} {'mean':>7} {'dl/T*':>6} {'pc/T*':>6} "
            f"{'origin/F':>8} {'cdn/F':>6} {'load':>5} {'sn cpu':>6} {'busy':>5} {'cpu/T*':>6} ok")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r['label']:<58} {r['t_star_s']:>6.2f} {r['t_all_s']:>7.2f} {r['t_all_over_t_star']:>8.3f} "
                    f"{r['t_mean_s']:>7.2f} {r['dfget_max_over_t_star'] or 0:>6.3f} "
                    f"{_ratio(r.get('go_last_piece_over_t_star')):>6} {r['origin_bytes_over_f']:>8.4f} "
                    f"{r['cdn_served_over_f']:>6.2f} {r['loadavg_1m_before_after'][1]:>5.1f} "
                    f"{_share(r.get('supernode_cpu_over_t_all')):>6} {_share(r.get('machine_cpu_busy')):>5} "
                    f"{_ratio(r.get('cpu_floor_over_t_star')):>6} "
                    f"{'yes' if r['all_ok'] else 'NO'}")
    return "\n".join(rows)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _share(value: float | None) -> str:
    """A CPU share (CPU seconds per wall second) as a percentage of one core; '-' when not measured."""
    return "-" if value is None else f"{value:.0%}"


def side_by_side(results: list[dict[str, Any]]) -> str:
    """One row per configuration that both supernodes ran: T_all/T*, cdn/F and origin/F of each (mean of repeats)."""
    keyed: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        if r["mode"] == "p2p":
            key = (r["n"], r["size_mib"], r["dfget_kind"], r["c_mib_s"], r["t_star_s"])
            keyed.setdefault(key, {}).setdefault(r["supernode"], []).append(r)
    pairs = [(k, v) for k, v in keyed.items() if set(v) >= {"ours", "go"}]
    if not pairs:
        return ""

    def mean(runs: list[dict[str, Any]], name: str) -> float:
        return statistics.fmean(float(r[name]) for r in runs)

    head = (f"{'N':>3} {'F':>5} {'dfget':>6} {'C':>5} {'T*':>6} | {'ours T/T*':>9} {'go T/T*':>8} | "
            f"{'ours cdn/F':>10} {'go cdn/F':>8} | {'ours org/F':>10} {'go org/F':>9} | ok")
    rows = [head, "-" * len(head)]
    for (n, f, kind, c, bound), by in pairs:
        ours, go = by["ours"], by["go"]
        ok = all(r["all_ok"] for r in ours + go)
        rows.append(f"{n:>3} {f:>5g} {kind:>6} {'inf' if c is None else f'{c:g}':>5} {bound:>6.2f} | "
                    f"{mean(ours, 't_all_over_t_star'):>9.3f} {mean(go, 't_all_over_t_star'):>8.3f} | "
                    f"{mean(ours, 'cdn_served_over_f'):>10.2f} {mean(go, 'cdn_served_over_f'):>8.2f} | "
                    f"{mean(ours, 'origin_bytes_over_f'):>10.4f} {mean(go, 'origin_bytes_over_f'):>9.4f} | "
                    f"{'yes' if ok else 'NO'}")
    return "\n".join(rows)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=lambda t: [int(x) for x in _floats(t)], default=[8], help="peers, e.g. 8 or 1,2,4,8")
    p.add_argument("--size", type=_positive, default=64.0, help="file size F in MiB (default 64)")
    p.add_argument("--origin-rate", type=_positive, default=20.0, help="origin limit S in MiB/s, all connections")
    p.add_argument("--down", type=_positive, default=10.0, help="per-peer download limit D in MiB/s")
    p.add_argument("--up", type=_positive, default=10.0, help="per-peer upload limit U in MiB/s")
    p.add_argument("--cdn-rate", type=_positive, default=None, metavar="C",
                   help="limit the supernode's piece port to C MiB/s with tc in a private network namespace "
                        "(implies --netns; default: unlimited)")
    p.add_argument("--netns", action="store_true",
                   help="run in a private network namespace (unshare -n, only lo) even without --cdn-rate")
    p.add_argument("--selftest-tc", action="store_true",
                   help="only check the tc limit: curl from a file server on a limited port, achieved vs C")
    p.add_argument("--supernode", choices=("ours", "go", "both"), default="ours",
                   help="ours, the Go supernode (+ nginx on its download port), or both for every N (default ours)")
    p.add_argument("--no-p2p", action="store_true", help="baseline: N plain HTTP clients straight from the origin")
    p.add_argument("--both", action="store_true", help="run every N with P2P and without")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (default 1)")
    p.add_argument("--dfget", default="ours",
                   help="ours (default), go (the Go dfget for every peer), mixed (alternating Go and ours), or a "
                        "command line with our dfget's flags")
    p.add_argument("--no-prestart", action="store_true", help="let dfget start its uploader (start-up counts)")
    p.add_argument("--supernode-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for our supernode, e.g. --supernode-arg=--cdn-task-limit=8 (repeatable)")
    p.add_argument("--go-supernode-arg", action="append", default=[], metavar="ARG",
                   help="extra flag for the Go supernode, e.g. --go-supernode-arg=--down-limit=8 (repeatable)")
    p.add_argument("--timeout", type=float, default=0.0, help="per-run dfget timeout in s (default: from T*)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) of each run")
    p.add_argument("--trace", action="store_true",
                   help="debug logs in the uploaders (which run the delegated downloads): per-peer piece times by "
                        "source in the JSON and the table")
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/swarm-<first label>.json)")
    return p


def _uses_go(args: argparse.Namespace) -> bool:
    return args.supernode != "ours" or args.dfget in ("go", "mixed")


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    kind = args.dfget if args.dfget in ("ours", "go", "mixed") else "ours"
    dfget = OUR_DFGET if args.dfget in ("ours", "go", "mixed") else shlex.split(args.dfget)
    modes = [True, False] if args.both else [not args.no_p2p]
    supernodes = ["ours", "go"] if args.supernode == "both" else [args.supernode]
    results = []
    for p2p in modes:
        for n in args.n:
            for supernode in supernodes if p2p else ["ours"]:
                for _ in range(args.repeat):
                    cfg = Config(n=n, size_mib=args.size, origin_rate=args.origin_rate, down=args.down, up=args.up,
                                 p2p=p2p, dfget=list(dfget), dfget_kind=kind, supernode=supernode,
                                 prestart=not args.no_prestart, supernode_args=list(args.supernode_arg),
                                 go_supernode_args=list(args.go_supernode_arg),
                                 cdn_rate=args.cdn_rate or float("inf"), netns=args.netns, timeout=args.timeout,
                                 trace=args.trace)
                    result = await run(cfg, keep=args.keep)
                    print(table([result]).splitlines()[-1], flush=True)
                    for row in result["piece_trace"]:
                        print(f"    {row['peer']:<12} cdn {row['cdn_pieces']:>3} x {row['cdn_mean_s'] or 0:.2f}s   "
                              f"peer {row['peer_pieces']:>3} x {row['peer_mean_s'] or 0:.2f}s   "
                              f"first piece after {row['first_wait_s'] or 0:.2f}s, idle {row['idle_s'] or 0:.2f}s")
                    results.append(result)
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    if args.selftest_tc and args.cdn_rate is None:
        parser().error("--selftest-tc needs --cdn-rate C")
    if any(n < 1 or n > 250 for n in args.n):
        parser().error("--n: every N must be in 1..250 (one 127.0.0.x address per peer)")
    if args.supernode != "ours":
        go_dfv1.go_binary(ROOT, "supernode")
        go_dfv1.nginx_binary()
    if args.dfget in ("go", "mixed"):
        go_dfv1.go_binary(ROOT, "dfget")
    args.netns = args.netns or args.cdn_rate is not None or _uses_go(args)
    if args.netns:
        netns.reexec([str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])
        netns.bring_up_loopback()
    if args.selftest_tc:
        sys.exit(0 if asyncio.run(netns.selftest(args.cdn_rate, 3.0)) else 1)
    results = asyncio.run(_main(args))
    print()
    print(table(results))
    pairs = side_by_side(results)
    if pairs:
        print()
        print(pairs)
    out = args.out or RESULTS / f"swarm-{results[0]['label']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
