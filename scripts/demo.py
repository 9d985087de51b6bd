"""Run a supernode on its embedded defaults and download a file through it with three dfget peers.

The supernode's piece port is limited to 8 MiB/s (``--cdn-rate-limit``), as a supernode that shares
one NIC with many nodes is, while each peer downloads at 16 MiB/s: the supernode seeds each piece
about once and the peers get most of their bytes from each other. The summary says how many bytes
came from peers, from the CDN and from the origin.

The supernode keeps running in the foreground afterwards (Ctrl-C stops it), so its API (:8002),
CDN port (:8001) and /metrics can be explored. Everything stays on this machine: the origin is a
local HTTP server on 127.0.0.1 serving a generated file.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

API = "http://127.0.0.1:8002"
SIZE = 48 * 1024 * 1024
CDN_RATE = "8M"


def _wait_for_ping(proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"supernode exited with {proc.returncode}; is port 8002 or 8001 in use?")
        try:
            with urllib.request.urlopen(f"{API}/_ping", timeout=1) as resp:
                if resp.read() == b"OK":
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit("supernode did not answer on :8002 within 20 s")


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="dragonfly-demo-"))
    (work / "www").mkdir()
    data = os.urandom(SIZE)
    (work / "www" / "demo.bin").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work / "www"))
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{origin.server_port}/demo.bin"

    supernode = subprocess.Popen(["supernode", "--cdn-rate-limit", CDN_RATE])
    try:
        _wait_for_ping(supernode)
        print(f"\n== supernode up, its piece port limited to {CDN_RATE}B/s; three dfget peers (16 MiB/s each) download "
              f"{SIZE >> 20} MiB from {url} through it\n", flush=True)
        peers = [subprocess.Popen(["dfget", "-u", url, "-o", str(work / f"out{n}.bin"), "--node", "127.0.0.1:8002",
                                   "--ip", f"127.0.0.{n}", "--home", str(work / f"peer{n}"), "-s", "16M",
                                   "--alivetime", "20s"]) for n in (2, 3, 4)]
        codes = [p.wait(timeout=300) for p in peers]
        want = hashlib.md5(data).hexdigest()
        for n, code in zip((2, 3, 4), codes, strict=True):
            out = work / f"out{n}.bin"
            got = hashlib.md5(out.read_bytes()).hexdigest() if out.exists() else "missing"
            print(f"peer 127.0.0.{n}: exit {code}, md5 {'OK' if got == want else 'WRONG: ' + got}")
        with urllib.request.urlopen(f"{API}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        source = _metric(metrics, "dragonfly_supernode_source_bytes_total")
        from_peers = _metric(metrics, 'dragonfly_supernode_pieces_served_bytes_total{source="peer"}')
        from_cdn = _metric(metrics, 'dragonfly_supernode_pieces_served_bytes_total{source="cdn"}')
        total = from_peers + from_cdn
        print(f"bytes: {from_peers / 2**20:.1f} MiB from peers ({from_peers / max(total, 1):.0%}), "
              f"{from_cdn / 2**20:.1f} MiB from the CDN, {source / 2**20:.1f} MiB from the origin "
              f"({source / SIZE:.2f}x the file)")
        print(f"\n== the supernode keeps running: try {API}/metrics or {API}/api/v1/peers; Ctrl-C stops it\n",
              flush=True)
        supernode.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if supernode.poll() is None:
            supernode.terminate()
            supernode.wait(timeout=15)
        origin.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
