"""Cost of the pure scheduler (``supernode.scheduler.schedule``) in a large swarm.

One task of ``--pieces`` pieces, all on the CDN, and ``--peers`` peers each with one client. Every
peer starts holding a random share of the pieces (``--held``, default 10 %), which puts 10 % of the
swarm's piece copies in place, as in the middle of a distribution. Then, for ``--calls`` rounds, a
random client reports its running pieces as done (from the source it was given) and pulls again:
``schedule()`` is timed alone (decisions per second, p50/p99 per call) and with the report
(pulls per second, what one ``/peer/task`` costs the supernode in CPU).

Memory per peer: ``tracemalloc`` difference of the progress state before and after the peers,
their clients and their holdings are added, divided by the number of peers.

    python bench/scheduler_bench.py --peers 10000 --pieces 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supernode.errors import DfError  # noqa: E402
from supernode.progress import Limits, PieceStatus, ProgressState  # noqa: E402
from supernode.scheduler import schedule  # noqa: E402

TASK = "t" * 64
SUPER = "supernode"


def build(peers: int, pieces: int, held: float, rng: random.Random,
          cdn_rate: float) -> tuple[ProgressState, list[str]]:
    state = ProgressState(Limits(cdn_upload_rate=cdn_rate))
    state.add_task(TASK, SUPER)
    state.add_peer(SUPER, serves=False)
    for num in range(pieces):
        state.cdn_piece_done(TASK, num)
    cids = []
    per_peer = int(pieces * held)
    for i in range(peers):
        pid, cid = f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}-{i}-1700000000.000", f"cid-{i}"
        state.add_peer(pid, serves=True)
        state.add_client(TASK, cid, pid)
        for num in rng.sample(range(pieces), per_peer):
            state.update_piece(TASK, cid, SUPER, num, PieceStatus.SUCCESS, 0.0)
        cids.append(cid)
    return state, cids


def run(peers: int, pieces: int, held: float, calls: int, seed: int, cdn_rate: float = 0.0) -> dict[str, Any]:
    rng = random.Random(seed)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    state, cids = build(peers, pieces, held, rng, cdn_rate)
    build_seconds = time.perf_counter() - started
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    now = 1.0
    decide: list[float] = []
    assigned = 0
    waits = 0
    cycle_started = time.perf_counter()
    for _ in range(calls):
        cid = cids[int(rng.random() * len(cids))]
        for num, dst in state.client_running(TASK, cid).items():
            state.update_piece(TASK, cid, dst, num, PieceStatus.SUCCESS, now)
        t0 = time.perf_counter()
        try:
            got = schedule(state, TASK, cid, now=now, rng=rng)
        except DfError:
            got = []
            waits += 1
        decide.append(time.perf_counter() - t0)
        assigned += len(got)
        now += 0.0001
    cycle_seconds = time.perf_counter() - cycle_started
    decide.sort()
    return {
        "peers": peers, "pieces": pieces, "held_fraction": held, "calls": calls,
        "cdn_rate_mib_s": cdn_rate / 2**20 or None,
        "build_seconds": round(build_seconds, 2),
        "memory_bytes": total, "memory_per_peer_bytes": round(total / peers),
        "memory_per_peer_kib": round(total / peers / 1024, 2),
        "decisions_per_s": round(calls / sum(decide)),
        "pieces_assigned_per_s": round(assigned / sum(decide)),
        "pulls_per_s_with_reports": round(calls / cycle_seconds),
        "decision_p50_us": round(decide[len(decide) // 2] * 1e6, 1),
        "decision_p99_us": round(decide[int(len(decide) * 0.99)] * 1e6, 1),
        "decision_mean_us": round(statistics.fmean(decide) * 1e6, 1),
        "no_piece_answers": waits, "pieces_per_decision": round(assigned / calls, 2),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 10000],
                        help="swarm sizes, comma-separated (default 1000,10000: flat cost means equal rates)")
    parser.add_argument("--pieces", type=int, default=1000)
    parser.add_argument("--held", type=float, default=0.1, help="share of the pieces each peer starts with")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cdn-rate", type=float, default=0.0,
                        help="the CDN's known capacity C in MiB/s (the seeding scheduler); default: unknown")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scheduler_bench.json")
    args = parser.parse_args(argv)
    results = [run(n, args.pieces, args.held, args.calls, args.seed, args.cdn_rate * 2**20) for n in args.peers]
    keys = ["peers", "pieces", "decisions_per_s", "decision_p50_us", "decision_p99_us", "pulls_per_s_with_reports",
            "memory_per_peer_kib"]
    print("  ".join(f"{k:>{max(len(k), 8)}}" for k in keys))
    for r in results:
        print("  ".join(f"{r[k]!s:>{max(len(k), 8)}}" for k in keys))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
