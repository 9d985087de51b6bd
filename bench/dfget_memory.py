"""Peak memory of dfget and of its uploader while one large file moves through them.

dfget must stream pieces to disk and the uploader must serve them from disk, so neither may grow with
the file size (target: under 150 MiB RSS each for a 2 GiB file). This starts a real supernode and a
generating origin on loopback (the origin never holds the file), downloads the file with one `dfget`
(all pieces from the CDN), then with a second `dfget` on another loopback IP whose pieces come from the
first peer's uploader where the scheduler allows. Both run in their own process (no daemon runs on
their nodes yet) and start their node's daemon. A third `dfget` on the second node is then handed to
that node's daemon (delegation), so the daemon does the download. The peak RSS (VmHWM) of every dfget
process, of the first node's daemon (uploads) and of the second node's daemon (after the delegated
download) is read from /proc.

    python bench/dfget_memory.py --size 2G       # writes bench/results/dfget_memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from cdn_memory import _origin, _rss_kib, start_supernode, stop_supernode
from swarm import free_port

from dfwire.units import parse_size


async def _dfget(url: str, out: Path, ip: str, home: Path, api: int) -> dict[str, object]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "dfget", "-u", url, "-o", str(out), "--node", f"127.0.0.1:{api}", "--ip", ip, "--home", str(home),
        "-s", "1G", "--totallimit", "1G", "--alivetime", "60s",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    peak = 0
    while proc.returncode is None:
        with contextlib.suppress(OSError, ValueError):
            peak = max(peak, _rss_kib(proc.pid, "VmHWM"))
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            continue
    out_text = (await proc.stdout.read()).decode() if proc.stdout else ""
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - started, 2),
            "peak_rss_mib": round(peak / 1024, 1), "summary": out_text.strip().splitlines()[-1:] or [""]}


def _uploader_pid(home: Path) -> int:
    """The pid of the daemon a dfget run started on ``home`` (recorded in its meta file)."""
    return int(json.loads((home / "meta" / "host.meta").read_text()).get("pid") or 0)


def _daemon_pids(work: Path) -> set[int]:
    return {_uploader_pid(home) for home in work.glob("peer*") if (home / "meta" / "host.meta").exists()}


async def run(size: int) -> dict[str, object]:
    runner, origin_port = await _origin(size)
    api, cdn = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-dfget-"))
    supernode = await start_supernode(str(work / "sn"), api, cdn)
    try:
        url = f"http://127.0.0.1:{origin_port}/big.bin"
        first = await _dfget(url, work / "out1.bin", "127.0.0.2", work / "peer1", api)
        uploader_pid = _uploader_pid(work / "peer1")
        second = await _dfget(url, work / "out2.bin", "127.0.0.3", work / "peer2", api)
        uploader_peak = _rss_kib(uploader_pid, "VmHWM") if uploader_pid else 0
        third = await _dfget(url, work / "out3.bin", "127.0.0.3", work / "peer2", api)
        daemon_pid = _uploader_pid(work / "peer2")
        daemon_peak = _rss_kib(daemon_pid, "VmHWM") if daemon_pid else 0
        sizes_ok = all((work / f"out{n}.bin").stat().st_size == size for n in (1, 2, 3))
        return {"file_bytes": size, "first_dfget": first, "second_dfget": second,
                "uploader_peak_rss_mib": round(uploader_peak / 1024, 1), "delegated_dfget": third,
                "delegated_daemon_peak_rss_mib": round(daemon_peak / 1024, 1), "outputs_complete": sizes_ok,
                "cpus": os.cpu_count()}
    finally:
        for pid in _daemon_pids(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        await stop_supernode(supernode)
        await runner.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2G", help="file size, e.g. 256M or 2G (default 2G)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dfget_memory.json")
    args = parser.parse_args()
    result = asyncio.run(run(parse_size(args.size)))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
