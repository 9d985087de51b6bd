"""Plot a swarm sweep: every peer's completion time over T*, and T_all/T*, for each N, P2P vs plain HTTP.

    python bench/plot.py bench/results/swarm.json --out bench/results/swarm.png

``--compare``: our supernode vs the Go one, with and without a CDN limit C (``swarm.py --supernode both``,
``--cdn-rate``): T_all/T* (line) and every peer's completion time/T* (dots) per N, and cdn/F per N, one
series per (supernode, dfget, C).

    python bench/plot.py bench/results/swarm-c20.json bench/results/swarm-cinf.json --compare \\
        --out bench/results/swarm-compare.png

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


SUPERNODE_COLOURS = {"ours": "#1f77b4", "go": "#ff7f0e"}
DFGET_MARKERS = {"ours": "o", "go": "s", "mixed": "^"}


def _series(r: dict[str, Any]) -> tuple[str, str, float | None, float, float]:
    return (r.get("supernode") or "ours", r.get("dfget_kind") or "ours", r.get("c_mib_s"), r["down_mib_s"],
            r["up_mib_s"])


def plot_compare(results: list[dict[str, Any]], out: Path) -> None:
    runs = [r for r in results if r["mode"] == "p2p"]
    if not runs:
        raise SystemExit("error: no P2P runs in the input")
    ns = sorted({r["n"] for r in runs})
    keys = sorted({_series(r) for r in runs}, key=lambda k: (k[0], k[1], k[2] is None, k[2] or 0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    first = runs[0]
    rates = {(k[3], k[4]) for k in keys}
    peers = (f"peers D = {first['down_mib_s']:g} / U = {first['up_mib_s']:g} MiB/s" if len(rates) == 1
             else "peers' D / U per series")
    fig.suptitle(f"F = {first['size_mib']:g} MiB, origin S = {first['origin_rate_mib_s']:g} MiB/s, {peers}; "
                 f"C = CDN port limit (tc), inf = none")
    width = 0.6 / max(len(keys), 1)
    for index, key in enumerate(keys):
        supernode, dfget, c, down, up = key
        mine = sorted((r for r in runs if _series(r) == key), key=lambda r: r["n"])
        colour = SUPERNODE_COLOURS.get(supernode, "grey")
        style = "-" if c is not None else "--"
        name = f"{supernode} supernode, {dfget} dfget, C = {'inf' if c is None else f'{c:g}'}"
        if len(rates) > 1:
            name += f", D = {down:g}, U = {up:g}"
        shift = (index - (len(keys) - 1) / 2) * width
        by_n: dict[int, list[dict[str, Any]]] = {}
        for r in mine:
            by_n.setdefault(r["n"], []).append(r)
            ys = [p["seconds"] / r["t_star_s"] for p in r["peers"]]
            left.scatter([ns.index(r["n"]) + shift] * len(ys), ys, s=9, alpha=0.35, color=colour,
                         marker=DFGET_MARKERS.get(dfget, "o"))
        xs = [ns.index(n) + shift for n in sorted(by_n)]
        t_all = [sum(r["t_all_over_t_star"] for r in rs) / len(rs) for _, rs in sorted(by_n.items())]
        cdn = [sum(r["cdn_served_over_f"] for r in rs) / len(rs) for _, rs in sorted(by_n.items())]
        left.plot(xs, t_all, style, marker=DFGET_MARKERS.get(dfget, "o"), color=colour, label=name)
        right.plot(xs, cdn, style, marker=DFGET_MARKERS.get(dfget, "o"), color=colour, label=name)
        for x, y in zip(xs, t_all, strict=True):
            left.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    left.axhline(1.0, color="black", linewidth=1, label="T* = max(F/S, F/D, N*F/(C+N*U))")
    left.axhline(1.15, color="grey", linestyle=":", linewidth=1, label="target 1.15 T*")
    left.set_title("T_all / T* (line), each peer's completion time / T* (dots)")
    left.set_ylabel("time / T*")
    right.set_title("bytes the CDN served / F")
    right.set_ylabel("cdn / F")
    for ax in (left, right):
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("N peers")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="swarm JSON files (merged)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "swarm.png")
    parser.add_argument("--compare", action="store_true",
                        help="our supernode vs Go, C limited vs unlimited (results of swarm.py --supernode both)")
    args = parser.parse_args()
    results = [r for path in args.results for r in json.loads(path.read_text())]
    if not results:
        parser.error("no results in the input files")
    (plot_compare if args.compare else plot)(results, args.out)


if __name__ == "__main__":
    main()
