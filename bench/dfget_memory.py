"""Peak memory of dfget and of its uploader while one large file moves through them.

dfget must stream pieces to disk and the uploader must serve them from disk, so neither may grow with
the file size (target: under 150 MiB RSS each for a 2 GiB file). This starts a real supernode and a
generating origin on loopback (the origin never holds the file), downloads the file with one `dfget`
(all pieces from the CDN), then with a second `dfget` on another loopback IP whose pieces come from the
first peer's uploader where the scheduler allows. The peak RSS (VmHWM) of every dfget process and of
the first peer's uploader is read from /proc.

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

from cdn_memory import _free_port, _origin, _rss_kib, start_supernode, stop_supernode

from supernode.units import parse_size


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


def _uploader_pids(work: Path) -> list[int]:
    """The uploaders the dfget runs started (each records its pid in its meta file)."""
    return [int(json.loads(meta.read_text()).get("pid") or 0) for meta in work.glob("peer*/meta/host.meta")]


async def run(size: int) -> dict[str, object]:
    runner, origin_port = await _origin(size)
    api, cdn = _free_port(), _free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-dfget-"))
    supernode = await start_supernode(str(work / "sn"), api, cdn)
    try:
        url = f"http://127.0.0.1:{origin_port}/big.bin"
        first = await _dfget(url, work / "out1.bin", "127.0.0.2", work / "peer1", api)
        uploader_pid = _uploader_pids(work)[0]
        second = await _dfget(url, work / "out2.bin", "127.0.0.3", work / "peer2", api)
        uploader_peak = _rss_kib(uploader_pid, "VmHWM") if uploader_pid else 0
        sizes_ok = all((work / f"out{n}.bin").stat().st_size == size for n in (1, 2))
        return {"file_bytes": size, "first_dfget": first, "second_dfget": second,
                "uploader_peak_rss_mib": round(uploader_peak / 1024, 1), "outputs_complete": sizes_ok,
                "cpus": os.cpu_count()}
    finally:
        for pid in _uploader_pids(work):
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
