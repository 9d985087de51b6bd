"""Throughput estimates from finished pieces: what a source uploads and a client downloads, in bytes/s.

The supernode never sees bytes move between peers; all it has is when it handed a piece out and when
the client reported it. Two things make those timings mislead, and this module is where they are
discounted: pieces that say nothing about throughput (:func:`piece_rate` returns None for them), and
bursts (:func:`average` averages over time per byte, not over rates). Pure functions: the progress
state decides whose estimate a sample updates.
"""

from __future__ import annotations

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
