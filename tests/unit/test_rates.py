"""Throughput samples from piece timings (supernode/rates.py)."""

from __future__ import annotations

import pytest

from supernode import rates

MIB = 1024 * 1024


def test_a_piece_is_a_sample_only_when_it_is_big_and_slow_enough_to_say_something() -> None:
    assert rates.piece_rate(4 * MIB, 0.4) == pytest.approx(10 * MIB)
    assert rates.piece_rate(85, 0.4) is None, "a file's short last piece takes as long as a request"
    assert rates.piece_rate(4 * MIB, 0.013) is None, "a burst out of a dfget's token bucket"


def test_the_first_sample_is_the_estimate() -> None:
    assert rates.average(0.0, 7.0) == 7.0


def test_the_average_is_over_time_per_byte_so_one_burst_moves_it_little() -> None:
    steady = 10 * MIB
    after_burst = rates.average(steady, 300 * MIB)
    after_crawl = rates.average(steady, 2 * MIB)
    assert steady < after_burst < 1.4 * steady, "a burst 30x faster raises the estimate by a third at most"
    assert after_crawl < 0.6 * steady, "a crawl shows at once: it is what the next piece would do"
