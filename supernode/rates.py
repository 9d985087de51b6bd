"""Throughput estimates from finished pieces: what a source uploads and a client downloads, in bytes/s.

The supernode never sees bytes move between peers; all it has is when it handed a piece out and when
the client reported it. Two things make those timings mislead, and this module is where they are
discounted: pieces that say nothing about throughput (:func:`piece_rate` returns None for them), and
bursts (:func:`average` averages over time per byte, not over rates). The CDN port's own capacity C,
which shows only when the port saturates, is read from the same timings by :class:`CdnCapacity`.
:class:`SwarmRates` keeps the estimates of one supernode and turns each finished piece into samples of
its source, its receiver and the swarm. Pure, no I/O: the progress state feeds it, the scheduler reads it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .swarm import ClientProgress, PeerProgress, Run, TaskProgress

SAMPLE_MIN = 256 * 1024
"""Pieces smaller than this (a file's short last piece) take as long as a request does, whatever the rate:
they say nothing about throughput, and in an average of times one would outweigh every other sample."""

SAMPLE_MIN_SECONDS = 0.05
"""Pieces that took less than this (from hand-out to report) are not sampled either. Go dfget's rate
limiter lets a whole piece through at memory speed after its uploader idled (its token bucket holds
about a second of tokens): such a piece says what the bucket held, not what the peer sustains, and as
a first sample it made one peer look 30 times faster than it is, and get five uploads at once."""

CAPACITY_WEIGHT = 0.25
"""Weight of a new sample in a capacity estimate (an exponential moving average)."""


def piece_rate(size: int, seconds: float) -> float | None:
    """The rate of one finished piece of ``size`` bytes that ran ``seconds``; None when it is no sample."""
    if size < SAMPLE_MIN or seconds < SAMPLE_MIN_SECONDS:
        return None
    return size / seconds


def average(estimate: float, sample: float) -> float:
    """A rate's moving average, taken over its inverse (seconds per byte), weight ``CAPACITY_WEIGHT``.

    Averaging times rather than rates keeps bursts from swamping the estimate: Go dfget's rate limiter
    lets a piece through in a few milliseconds now and then (a sample of hundreds of MiB/s), which
    an average of rates would take for the peer's capacity, loading it with uploads it then serves at
    a crawl. The first sample is the estimate.
    """
    if not estimate:
        return sample
    return 1 / (1 / estimate + CAPACITY_WEIGHT * (1 / sample - 1 / estimate))


CDN_START = 2
"""CDN pieces out at once while C is told but no flow between peers is measured yet (the first pieces of a
swarm are the ones everybody waits for, so they go out a few at a time, each at a client's full speed)."""

PROBE_START = 4
"""CDN pieces out at once while C is neither told nor yet measured: the first window of the probe."""

PROBE_OPEN = 16
"""A probe window that has grown this wide without the port saturating says C is large: the CDN becomes a
source like the others (still watched for saturation)."""

SLOW = 0.6
"""CDN pieces whose clients took less than this share of what clients take from peers (the piece's rate times
the pieces its client ran beside it) ran at the CDN's share, not at their clients': the port was the
bottleneck. Well below 1, because a dfget's limiter lets a piece through at up to twice its rate now and
then, so the reference runs high and a piece at the rate can look 0.7 of it (0.7 made an unlimited port
look saturated); not lower, so that C = 5 D still shows before the probe's window opens."""


class CdnCapacity:
    """C, the piece port's total upload rate: as the operator told it, or as the CDN's own pieces show it.

    A supernode shares its NIC, so C is often not what the port could do alone, and not known. It shows
    only when the port saturates, and only against a reference: N clients that each get C/N from the CDN
    look exactly like N clients that can each take only C/N. The reference is what clients take from
    peers (:attr:`SwarmRates.down_capacity`), and a CDN piece says what its client took from it: its rate
    times the pieces the client ran meanwhile (a client's share of its own download, had that been the
    limit).

    While C is unknown the CDN probes, as TCP's slow start does: it runs a window of :data:`PROBE_START`
    pieces at once, one more after each piece that ran while at least half the window was in use (a
    window that grew while the CDN ran a few pieces says nothing about many), so the window doubles each
    round while the port keeps up. The port is saturated once CDN pieces run :data:`SLOW`, on average
    (over time per byte, as every rate here) and the latest one too: one slow piece on a busy machine is
    no verdict. Each such piece's rate times the CDN pieces that ran beside it is a sample of C; from the
    first, C is measured (their moving average) and the CDN is a seed of that capacity, as if told. A
    window that reaches :data:`PROBE_OPEN` first ends the probe: C is large, and a saturation later on
    still measures it. With ``measure`` off and C not told, the port is taken to be unlimited, as Go does.

    Pure: :class:`SwarmRates` feeds it every finished CDN piece; the scheduler reads :attr:`seeds`,
    :attr:`rate`, :attr:`probing` and :attr:`window`.
    """

    __slots__ = ("_measure", "_took", "measured", "told", "window")

    def __init__(self, told: float = 0.0, *, measure: bool = True) -> None:
        self.told = told
        """C as the operator set it (``--cdn-rate-limit``), bytes/s; 0: not told."""
        self.measured = 0.0
        """C as measured, bytes/s; 0 while the port has not been seen saturated."""
        self._measure = measure and not told
        self.window = PROBE_START if self._measure else PROBE_OPEN
        """CDN pieces out at once while probing."""
        self._took = 0.0

    @property
    def rate(self) -> float:
        """C in bytes/s, told or measured; 0 while unknown."""
        return self.told or self.measured

    @property
    def seeds(self) -> bool:
        """The CDN is a seed of finite capacity: C is told or measured, or being probed."""
        return bool(self.rate) or self.probing

    @property
    def probing(self) -> bool:
        """C is unknown, and the port has not yet kept up with :data:`PROBE_OPEN` pieces at once."""
        return not self.rate and self.window < PROBE_OPEN

    def piece(self, rate: float | None, *, client_flows: float, cdn_flows: float, clients_take: float) -> None:
        """One CDN piece finished.

        ``rate``: its bytes/s, None when it was too quick to time (:func:`piece_rate`); ``client_flows``
        and ``cdn_flows``: the pieces its client and the CDN ran meanwhile, this one included, on average
        over its run; ``clients_take``: what a client takes from peers, bytes/s (0: not measured yet, and
        nothing can be told).
        """
        if not self._measure:
            return
        if rate is not None:
            took = rate * max(client_flows, 1.0)
            self._took = average(self._took, took)
            slow = SLOW * clients_take
            if self._took < slow and took < slow and cdn_flows > 1:
                self.measured = average(self.measured, rate * cdn_flows)
                return
        if self.probing and cdn_flows >= self.window / 2:
            self.window += 1


class SwarmRates:
    """The throughput estimates of one supernode, and the loads over time its samples are read against.

    A piece's rate alone says little: what a source delivers is the rate times the uploads it ran at
    once, and what a client takes is the rate times the pieces it fetched at once. So beside the
    estimates this keeps the integrals of those counts over time (a client's ``flow_area``, the CDN's
    :attr:`cdn_area`), and a piece's average company is an integral's growth over its run divided by
    the run's length. Per-peer estimates live on the peers' records (``PeerProgress.capacity`` and
    ``down_capacity``); the swarm's are here. The progress state calls :meth:`count_flows` and
    :meth:`add_cdn_load` before the counts change and :meth:`sample` when a piece ends well.
    """

    __slots__ = ("_cdn_clock", "cdn", "cdn_area", "cdn_load", "down_capacity", "peer_capacity", "told_up")

    def __init__(self, told: float = 0.0, *, measure: bool) -> None:
        self.cdn = CdnCapacity(told, measure=measure)
        """The CDN's capacity C, told or measured, and how many pieces it sends at once while not told."""
        self.cdn_load = 0
        """Pieces the CDN is serving, over all tasks (the sum of their ``super_load``): they share one port."""
        self.cdn_area = 0.0
        """The integral over time of :attr:`cdn_load`, up to the last change of it."""
        self._cdn_clock = 0.0
        self.peer_capacity = 0.0
        """The upload estimate over every peer's samples: the guess for a peer not measured yet."""
        self.down_capacity = 0.0
        """The download capacity estimate over every client's samples: the guess for one not measured yet.
        Only pieces peers served count: a CDN flow moves at the CDN's share (C over the flows it runs), so
        with a saturated CDN its flows say how many it runs, and counting them as what a client can take
        made the scheduler hand the CDN more flows each round (seen: 8 at once, each at a crawl)."""
        self.told_up = 0.0
        """The upload limit sources told on register, averaged as the estimates are; 0: none told. What a
        source gives one flow, for the flows of a client that told its download limit."""

    def tell_up(self, rate: float) -> None:
        """A peer registered with an upload limit of ``rate`` bytes/s."""
        self.told_up = average(self.told_up, rate)

    @staticmethod
    def count_flows(client: ClientProgress, now: float) -> None:
        """Bring the client's ``flow_area`` up to ``now``; called before its running pieces change."""
        if now > client.flow_clock:
            client.flow_area += len(client.running) * (now - client.flow_clock)
            client.flow_clock = now

    def add_cdn_load(self, delta: int, now: float | None) -> None:
        """Change the CDN's load, bringing :attr:`cdn_area` up to ``now`` first (None: time unknown)."""
        if now is not None and now > self._cdn_clock:
            self.cdn_area += self.cdn_load * (now - self._cdn_clock)
            self._cdn_clock = now
        self.cdn_load += delta

    def sample(self, task: TaskProgress, client: ClientProgress, run: Run, peers: Mapping[str, PeerProgress],
               size: int, now: float) -> None:
        """One piece of ``size`` bytes finished well: its rate, and the rate times the flows at each end of it.

        ``run`` was already taken off the client's running pieces, but not yet off its source's load: the
        source's concurrent uploads still count this one. The client's own download limit caps each sample,
        so estimates are lower bounds; they are compared, never used as promises.
        """
        source = peers.get(run.dst)
        rate = piece_rate(size, now - run.started)
        cdn = run.dst == task.super_pid
        if cdn and size >= SAMPLE_MIN:
            self.add_cdn_load(0, now)
            span = now - run.started
            self.cdn.piece(rate, client_flows=(client.flow_area - run.flow_area) / span if span > 0 else 1.0,
                           cdn_flows=(self.cdn_area - run.cdn_area) / span if span > 0 else 1.0,
                           clients_take=self.down_capacity)
        if rate is None or source is None:
            return
        concurrent = task.super_load if cdn else source.load
        sample = rate * max(concurrent, 1)
        source.capacity = average(source.capacity, sample)
        if cdn:
            return
        self.peer_capacity = average(self.peer_capacity, sample)
        down = rate * (len(client.running) + 1)
        receiver = peers[client.pid]
        receiver.down_capacity = average(receiver.down_capacity, down)
        self.down_capacity = average(self.down_capacity, down)
