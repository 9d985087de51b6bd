"""Plot a swarm sweep: every peer's completion time over T*, and T_all/T*, for each N, P2P vs plain HTTP.

    python bench/plot.py bench/results/swarm.json --out bench/results/swarm.png

Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"p2p": "#1f77b4", "http": "#d62728"}
NAMES = {"p2p": "P2P (dfget + supernode)", "http": "plain HTTP from the origin"}


def plot(results: list[dict[str, Any]], out: Path) -> None:
    ns = sorted({r["n"] for r in results})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    first = results[0]
    fig.suptitle(f"F = {first['size_mib']:g} MiB, origin S = {first['origin_rate_mib_s']:g} MiB/s, "
                 f"peers D = {first['down_mib_s']:g} / U = {first['up_mib_s']:g} MiB/s (loopback, C unlimited)")
    offsets = {"p2p": -0.12, "http": 0.12}
    for mode in ("p2p", "http"):
        runs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["n"])
        if not runs:
            continue
        for r in runs:
            x = ns.index(r["n"]) + offsets[mode]
            ys = [p["seconds"] / r["t_star_s"] for p in r["peers"]]
            left.scatter([x] * len(ys), ys, s=14, alpha=0.6, color=COLOURS[mode],
                         label=NAMES[mode] if r is runs[0] else None)
            own = [p["dfget_seconds"] / r["t_star_s"] for p in r["peers"] if p.get("dfget_seconds")]
            if own:
                left.scatter([x + 0.08] * len(own), own, s=14, facecolors="none", edgecolors=COLOURS[mode],
                             alpha=0.6, label="P2P, dfget's own time (no process start-up)" if r is runs[0] else None)
        right.plot([ns.index(r["n"]) for r in runs], [r["t_all_over_t_star"] for r in runs], "o-",
                   color=COLOURS[mode], label=NAMES[mode])
        for r in runs:
            right.annotate(f"{r['t_all_over_t_star']:.2f}", (ns.index(r["n"]), r["t_all_over_t_star"]),
                           textcoords="offset points", xytext=(6, 4), fontsize=8, color=COLOURS[mode])
    for ax, title in ((left, "each peer's completion time / T*"), (right, "T_all / T* (last peer)")):
        ax.axhline(1.0, color="black", linewidth=1, label="T* (fluid-model lower bound)")
        ax.axhline(1.15, color="grey", linestyle="--", linewidth=1, label="target 1.15 T*")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("N peers")
        ax.set_ylabel("time / T*")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="swarm JSON files (merged)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "swarm.png")
    args = parser.parse_args()
    results = [r for path in args.results for r in json.loads(path.read_text())]
    plot(results, args.out)


if __name__ == "__main__":
    main()
