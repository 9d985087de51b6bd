"""Run every benchmark with sizes that finish in a few minutes on 2 cores, write JSON, draw the plot.

    python bench/run_all.py                 # everything; results in bench/results/
    python bench/run_all.py --quick         # smaller sweep (N = 1, 4, 8), for a smoke check

Writes ``swarm.json`` (the N sweep with and without P2P, F=64, S=20, D=U=10), ``swarm-targets.json``
(N=8 and 16, plus a one-piece file and F=512 unless ``--quick``), ``scheduler_bench.json``,
``api_sim.json``, ``cdn_memory.json``, ``dfget_memory.json`` and ``swarm.png``. The swarm needs a quiet machine: see
``bench/swarm.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def _run(*argv: str) -> None:
    print(f"\n$ {' '.join(argv)}", flush=True)
    started = time.monotonic()
    subprocess.run([sys.executable, *argv], check=True, timeout=1800)
    print(f"({time.monotonic() - started:.0f}s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    parser.add_argument("--supernode-arg", action="append", default=[], metavar="ARG",
                        help="passed to every swarm run's supernode")
    args = parser.parse_args()
    extra = [f"--supernode-arg={a}" for a in args.supernode_arg]
    sweep = "1,4,8" if args.quick else "1,2,4,8,16"
    _run(str(BENCH / "scheduler_bench.py"), "--peers", "1000,10000", "--pieces", "1000",
         "--out", str(RESULTS / "scheduler_bench.json"))
    _run(str(BENCH / "api_sim.py"), "--peers", "50,200", "--seconds", "6", "--out", str(RESULTS / "api_sim.json"))
    _run(str(BENCH / "cdn_memory.py"), "--size", "256M" if args.quick else "1G",
         "--out", str(RESULTS / "cdn_memory.json"))
    _run(str(BENCH / "dfget_memory.py"), "--size", "256M" if args.quick else "1G",
         "--out", str(RESULTS / "dfget_memory.json"))
    _run(str(BENCH / "swarm.py"), "--n", sweep, "--both", *extra, "--out", str(RESULTS / "swarm.json"))
    _run(str(BENCH / "swarm.py"), "--n", "8,16", *extra, "--out", str(RESULTS / "swarm-targets.json"))
    if not args.quick:
        _run(str(BENCH / "swarm.py"), "--n", "8", "--size", "2", *extra, "--out", str(RESULTS / "swarm-onepiece.json"))
        _run(str(BENCH / "swarm.py"), "--n", "8", "--size", "512", *extra, "--out", str(RESULTS / "swarm-f512.json"))
    _run(str(BENCH / "plot.py"), str(RESULTS / "swarm.json"), "--out", str(RESULTS / "swarm.png"))


if __name__ == "__main__":
    main()
