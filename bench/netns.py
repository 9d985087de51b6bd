"""A private network namespace for a benchmark run, and a rate limit on the bytes one port sends.

The CDN's capacity C is emulated OUTSIDE the supernode: the benchmark re-executes itself under
``unshare -n`` (a namespace with only its own ``lo``, so nothing it starts can reach or be reached from
another network), brings ``lo`` up, and puts an HTB qdisc on that ``lo``. One HTB class of rate C takes
every IPv4 packet whose SOURCE port is the CDN's piece port (u32 filter on ``sport``), so only the bytes
the CDN sends are limited; every other packet (origin, peers, API, the CDN's own ACKs) is unclassified
and leaves through HTB's direct queue, unlimited.

Kernel support found on the build machine (a fresh ``unshare -n``, root): ``htb``, ``tbf`` and ``pfifo``
load; ``prio``, ``fq_codel``, ``sfq`` and ``netem`` do not ("Specified qdisc kind is unknown"), so the
usual prio-band + tbf recipe is not available and HTB is used.

Burst: loopback's MTU is 65536 and TSO/GSO hand HTB packets of up to ~64 KiB, so the bucket must hold
at least one of them; ``max(128 KiB, 2 ms of C)`` keeps the achieved rate within ~0.1 % of C for files of
a few MiB and more (``--selftest``).

    python bench/netns.py --selftest --rate 20      # limited and unlimited download, achieved vs C
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

MIB = 1024 * 1024
MARKER = "DF_BENCH_NETNS"
"""Set in the environment of the re-executed process: it already runs in its own namespace."""
HANDLE = "1:"
CLASS = "1:10"


def inside() -> bool:
    return os.environ.get(MARKER) == "1"


def reexec(argv: list[str]) -> None:
    """Replace this process by ``unshare -n -- python argv``; returns only if already inside one."""
    if inside():
        return
    if os.geteuid() != 0:
        sys.exit("error: a private network namespace (--netns / --cdn-rate) needs root: unshare -n and tc")
    for tool in ("unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (Debian: util-linux / iproute2)")
    os.environ[MARKER] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *argv])


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def bring_up_loopback() -> None:
    """``lo`` up; and a check that this namespace has no other interface, so only loopback is reachable."""
    _run("ip", "link", "set", "lo", "up")
    links = re.findall(r"^\d+: ([^:@]+)", _run("ip", "-o", "link", "show"), re.MULTILINE)
    if links != ["lo"]:
        raise RuntimeError(f"expected a namespace with only lo, found {links}")


def burst_bytes(rate_mib_s: float) -> int:
    return max(128 * 1024, int(rate_mib_s * MIB * 0.002))


def limit_source_port(port: int, rate_mib_s: float) -> None:
    """Every packet ``lo`` carries FROM ``port`` goes through one HTB class of ``rate_mib_s`` MiB/s."""
    clear()
    bits = int(rate_mib_s * MIB * 8)
    burst = str(burst_bytes(rate_mib_s))
    _run("tc", "qdisc", "add", "dev", "lo", "root", "handle", HANDLE, "htb", "default", "0")
    # quantum only matters between sibling classes; set so tc does not warn about rate/r2q
    _run("tc", "class", "add", "dev", "lo", "parent", HANDLE, "classid", CLASS, "htb", "rate", f"{bits}bit",
         "ceil", f"{bits}bit", "burst", burst, "cburst", burst, "quantum", str(128 * 1024))
    _run("tc", "filter", "add", "dev", "lo", "parent", HANDLE, "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "sport", str(port), "0xffff", "flowid", CLASS)


def limited_bytes() -> int:
    """Bytes (with headers) the limited class has sent; 0 without a limit."""
    text = subprocess.run(["tc", "-s", "class", "show", "dev", "lo", "classid", CLASS], capture_output=True,
                          text=True, check=False).stdout
    match = re.search(r"Sent (\d+) bytes", text)
    return int(match.group(1)) if match else 0


def clear() -> None:
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, check=False)


# ---------------------------------------------------------------------------------------------- self-test


async def _serve(path: Path) -> tuple[web.AppRunner, int]:
    async def send(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/f", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def _curl(url: str) -> tuple[int, float]:
    out = _run("curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_starttransfer} %{time_total}", url)
    size, first, total = out.split()
    return int(size), float(total) - float(first)


async def selftest(rate_mib_s: float, seconds: float) -> bool:
    """One plain HTTP file server on a limited port and one on an unlimited port; curl each once."""
    work = Path(tempfile.mkdtemp(prefix="bench-tc-"))
    try:
        size = int(rate_mib_s * MIB * seconds)
        path = work / "f.bin"
        with path.open("wb") as handle:
            handle.truncate(size)
        limited, limited_port = await _serve(path)
        free, free_port = await _serve(path)
        limit_source_port(limited_port, rate_mib_s)
        got, took = await asyncio.to_thread(_curl, f"http://127.0.0.1:{limited_port}/f")
        achieved = got / MIB / took
        sent = limited_bytes()
        got_free, took_free = await asyncio.to_thread(_curl, f"http://127.0.0.1:{free_port}/f")
        await limited.cleanup()
        await free.cleanup()
    finally:
        clear()
        shutil.rmtree(work, ignore_errors=True)
    error = achieved / rate_mib_s - 1
    ok = abs(error) <= 0.03 and got == size and got_free == size
    print(f"htb on lo, sport {limited_port}, burst {burst_bytes(rate_mib_s)} B: C = {rate_mib_s:g} MiB/s, "
          f"curl got {got / MIB:.1f} MiB in {took:.2f} s = {achieved:.2f} MiB/s ({error:+.1%}); "
          f"class sent {sent} B (headers included)")
    print(f"unlimited port {free_port}: {got_free / MIB / max(took_free, 1e-6):.0f} MiB/s")
    print("ok" if ok else "FAILED: achieved rate more than 3 % off C")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--selftest", action="store_true", help="check the limit with curl (needs root)")
    parser.add_argument("--rate", type=float, default=20.0, help="C in MiB/s (default 20)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the limited download (default 3)")
    args = parser.parse_args()
    if not args.selftest:
        parser.error("nothing to do: pass --selftest")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    reexec([str(Path(__file__).resolve()), *sys.argv[1:]])
    bring_up_loopback()
    started = time.monotonic()
    ok = asyncio.run(selftest(args.rate, args.seconds))
    print(f"self-test took {time.monotonic() - started:.1f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
