"""A swarm with real bandwidth limits, driven through the real scheduler, for completion-time bounds.

The unit swarm in ``tests/unit/test_scheduler.py`` checks the scheduler's limits with fixed piece times;
this one asks how long a swarm takes and how many bytes the CDN sends, which depend on who shares
whose bandwidth. It is a discrete-event model of the benchmark's regime (``bench/swarm.py``):

- the origin fills the CDN at S bytes/s, so piece ``k`` is on the CDN's disk at ``(k+1) * P / S``;
- the CDN sends at most C bytes/s in total, each peer downloads at most D and uploads at most U;
- every running piece is a flow, and flows share each of those limits max-min fairly (progressive
  filling), recomputed at every event, which is how TCP flows through rate limiters roughly behave;
- a client behaves as dfget does: it pulls when it registers and after every finished piece; a pull
  that finds nothing (602) is held by the supernode until the task changes, for at most ``hold``;
  held pulls are served fewest pieces first, and while any are held a report's pull joins them, as
  ``PullLoop.pull_held`` does; a client that runs all the pieces it may pulls again when one of them ends
  (the supernode holds such a pull until the client's own next report);
- every piece costs ``latency`` seconds before its bytes flow (connect, request, first byte).

Sources are the scheduler's choice (:func:`supernode.scheduler.schedule` on a real
:class:`~supernode.progress.ProgressState`); the model only moves bytes and reports outcomes, so a bound
asserted on it is a bound on the scheduler's decisions, not on Python or the machine.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from supernode.errors import DfCode, DfError
from supernode.progress import Limits, PieceStatus, ProgressState
from supernode.scheduler import schedule

MIB = 1024 * 1024
TASK = "t" * 64
SUPER = "supernode"


@dataclass
class Flow:
    cid: str
    num: int
    src: str
    left: float
    starts_at: float
    rate: float = 0.0


@dataclass
class Outcome:
    finish: dict[str, float]
    """Completion time of every client."""
    cdn_bytes: float
    peer_bytes: float
    t_star: float

    @property
    def t_all(self) -> float:
        return max(self.finish.values())

    @property
    def ratio(self) -> float:
        return self.t_all / self.t_star


@dataclass
class _Client:
    cid: str
    pid: str
    done: set[int] = field(default_factory=set)
    waiting_since: float | None = None
    finished: float | None = None


def t_star(n: int, f: float, s: float, d: float, u: float, c: float) -> float:
    return max(f / s, f / d, n * f / (c + n * u))


def relay_bound(n: int, *, f: float, piece: float, s: float, d: float, cdn_flows: int) -> float:
    """A lower bound on T_all when D = U and only whole pieces are served (Dragonfly v1), as a multiple of T*.

    The first piece is on the CDN at ``piece / s``. A client's first piece takes a round (``piece / d``)
    from a source that serves only it; a source is the CDN (``cdn_flows`` at once) or a client that
    holds a piece, and clients that hold one need a source as well, so at most ``holders + cdn_flows``
    clients get their first piece per round. The last client to start finishes ``f / d`` later at
    the earliest. With 4 MiB pieces and D = 10 MiB/s: 1.16 at N = 8, 1.22 at 16, 1.28 at 32.
    """
    start, holders = piece / s, 0
    while True:
        holders += min(n - holders, holders + cdn_flows)
        if holders >= n:
            return (start + f / d) / max(f / s, f / d)
        start += piece / d


class BandwidthSwarm:
    def __init__(
        self, *, n: int, size: int, piece: int = 4 * MIB, s: float, c: float, d: float, u: float,
        limits: Limits | None = None, latency: float = 0.01, hold: float = 1.0, seed: int = 0,
        join_spread: float = 0.0, told: bool = False,
    ) -> None:
        """``told``: each peer registers with its rate limits (D and U), as our dfget does; Go dfget does not."""
        self.n, self.size, self.piece = n, size, piece
        self.s, self.c, self.d, self.u = s, c, d, u
        self.latency, self.hold, self.told = latency, hold, told
        self.rng = random.Random(seed)
        self.limits = limits or Limits()
        self.state = ProgressState(self.limits)
        self.state.add_peer(SUPER, serves=False)
        self.state.add_task(TASK, SUPER)
        self.n_pieces = max(1, -(-size // piece))
        self.clients = {f"c{i}": _Client(f"c{i}", f"p{i}") for i in range(n)}
        self.join = {cid: self.rng.uniform(0, join_spread) for cid in self.clients}
        self.flows: list[Flow] = []
        self.now = 0.0
        self.cdn_bytes = 0.0
        self.peer_bytes = 0.0
        self._events: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    def _piece_bytes(self, num: int) -> int:
        return min(self.piece, self.size - num * self.piece) if self.size else 0

    def _at(self, when: float, kind: str, who: str = "") -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, who))

    # -- bandwidth --

    def _share(self) -> None:
        """Max-min fair rates of the flows that have started (progressive filling)."""
        live = [f for f in self.flows if f.starts_at <= self.now]
        for f in self.flows:
            f.rate = 0.0
        limits: dict[tuple[str, str], float] = {}
        members: dict[tuple[str, str], list[Flow]] = {}
        for f in live:
            down, up = ("down", f.cid), ("up", f.src)
            limits.setdefault(down, self.d)
            limits.setdefault(up, self.c if f.src == SUPER else self.u)
            members.setdefault(down, []).append(f)
            members.setdefault(up, []).append(f)
        frozen: set[int] = set()
        while len(frozen) < len(live):
            best, best_rate = None, float("inf")
            for key, flows in members.items():
                open_flows = [f for f in flows if id(f) not in frozen]
                if open_flows:
                    rate = limits[key] / len(open_flows)
                    if rate < best_rate:
                        best, best_rate = key, rate
            assert best is not None
            for f in members[best]:
                if id(f) in frozen:
                    continue
                f.rate = best_rate
                frozen.add(id(f))
                for key in (("down", f.cid), ("up", f.src)):
                    limits[key] -= best_rate

    # -- clients --

    def _pull(self, client: _Client) -> None:
        if client.finished is not None:
            return
        if len(client.done) == self.n_pieces:
            client.finished = self.now
            return
        try:
            got = schedule(self.state, TASK, client.cid, now=self.now, rng=self.rng)
        except DfError as exc:
            if exc.code not in (DfCode.PEER_WAIT, DfCode.PEER_CONTINUE):
                raise
            if exc.code == DfCode.PEER_WAIT:
                self._hold(client)
            return
        client.waiting_since = None
        for a in got:
            self.flows.append(Flow(client.cid, a.piece_num, a.dst_pid, self._piece_bytes(a.piece_num),
                                   self.now + self.latency))
            self._at(self.now + self.latency, "start")

    def _hold(self, client: _Client) -> None:
        if len(client.done) == self.n_pieces:
            client.finished = self.now
        elif client.waiting_since is None:
            client.waiting_since = self.now
            self._at(self.now + self.hold, "hold", client.cid)

    def _changed(self) -> None:
        """A task change wakes every held pull, as the supernode's TaskChanges does: fewest pieces first."""
        held = [c for c in self.clients.values() if c.waiting_since is not None]
        held.sort(key=lambda c: (len(c.done), c.waiting_since))
        for client in held:
            if client.waiting_since is not None:
                client.waiting_since = None
                self._pull(client)

    def _complete(self, flow: Flow) -> None:
        self.flows.remove(flow)
        client = self.clients[flow.cid]
        size = self._piece_bytes(flow.num)
        if flow.src == SUPER:
            self.cdn_bytes += size
        else:
            self.peer_bytes += size
        client.done.add(flow.num)
        self.state.update_piece(TASK, flow.cid, flow.src, flow.num, PieceStatus.SUCCESS, self.now, size=size)
        if any(c.waiting_since is not None for c in self.clients.values()):
            self._hold(client)  # the report's pull joins the held ones (PullLoop.pull_held)
        else:
            self._pull(client)
        self._changed()

    # -- the run --

    def run(self, max_time: float = 600.0) -> Outcome:
        for cid, client in self.clients.items():
            self.state.add_peer(client.pid, serves=True, told_down=self.d if self.told else 0.0,
                                told_up=self.u if self.told else 0.0)
            self._at(self.join[cid], "join", cid)
        for num in range(self.n_pieces):
            self._at(min(self.size, (num + 1) * self.piece) / self.s, "cdn", str(num))
        while any(c.finished is None for c in self.clients.values()):
            self._share()
            next_done = min(
                (self.now + f.left / f.rate for f in self.flows if f.rate > 0), default=float("inf"))
            next_event = self._events[0][0] if self._events else float("inf")
            when = min(next_done, next_event)
            assert when < max_time, f"the swarm did not finish in {max_time} s"
            for f in self.flows:
                f.left -= f.rate * (when - self.now)
            self.now = when
            for f in [f for f in self.flows if f.starts_at <= self.now and f.left <= 1e-6]:
                self._complete(f)
            while self._events and self._events[0][0] <= self.now:
                _, _, kind, who = heapq.heappop(self._events)
                if kind == "join":
                    self.state.add_client(TASK, who, self.clients[who].pid)
                    self._pull(self.clients[who])
                elif kind == "cdn":
                    self.state.cdn_piece_done(TASK, int(who))
                    if int(who) == self.n_pieces - 1:
                        self.state.cdn_complete(TASK)
                    self._changed()
                elif kind == "hold":
                    client = self.clients[who]
                    if client.waiting_since is not None and self.now - client.waiting_since >= self.hold - 1e-9:
                        client.waiting_since = None
                        self._pull(client)
        finish = {cid: c.finished or 0.0 for cid, c in self.clients.items()}
        return Outcome(finish, self.cdn_bytes, self.peer_bytes,
                       t_star(self.n, self.size, self.s, self.d, self.u, self.c))
