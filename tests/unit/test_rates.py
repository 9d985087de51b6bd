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


# -- the CDN's capacity C, told or measured --

TAKES = 10 * MIB
"""What clients take from peers, in these tests."""


def test_a_told_capacity_is_never_probed_nor_measured() -> None:
    cdn = rates.CdnCapacity(20 * MIB)
    cdn.piece(1 * MIB, client_flows=1, cdn_flows=8, clients_take=TAKES)
    assert (cdn.rate, cdn.measured, cdn.probing) == (20 * MIB, 0.0, False)


def test_without_measuring_an_untold_port_is_unlimited_as_in_go() -> None:
    cdn = rates.CdnCapacity(measure=False)
    for _ in range(3):
        cdn.piece(1 * MIB, client_flows=1, cdn_flows=8, clients_take=TAKES)
    assert (cdn.rate, cdn.probing, cdn.seeds) == (0.0, False, False)


def test_the_probe_window_grows_by_one_per_piece_until_it_opens() -> None:
    cdn = rates.CdnCapacity()
    assert cdn.probing and cdn.seeds and cdn.window == rates.PROBE_START
    cdn.piece(10 * MIB, client_flows=1, cdn_flows=2, clients_take=TAKES)
    cdn.piece(None, client_flows=1, cdn_flows=3, clients_take=TAKES)  # too quick to time
    cdn.piece(2.5 * MIB, client_flows=4, cdn_flows=3, clients_take=TAKES)  # a quarter of what its client took
    assert cdn.window == rates.PROBE_START + 3
    for _ in range(rates.PROBE_OPEN):
        cdn.piece(10 * MIB, client_flows=1, cdn_flows=cdn.window, clients_take=TAKES)
    assert not cdn.probing and not cdn.seeds and cdn.rate == 0.0, "a port that kept up is taken for unlimited"


def test_pieces_slowed_by_other_cdn_pieces_measure_c() -> None:
    cdn = rates.CdnCapacity()
    cdn.piece(4 * MIB, client_flows=1, cdn_flows=5, clients_take=TAKES)  # 4 MiB/s while 5 ran: 5 x 4 MiB/s
    assert cdn.rate == pytest.approx(20 * MIB)
    assert not cdn.probing and cdn.seeds
    cdn.piece(2 * MIB, client_flows=2, cdn_flows=10, clients_take=TAKES)  # its client took 4 MiB/s of its 10
    assert cdn.rate == pytest.approx(20 * MIB), "further samples average in"


def test_one_slow_piece_among_quick_ones_is_no_verdict() -> None:
    """A busy machine slows a piece now and then; saturation slows every piece."""
    cdn = rates.CdnCapacity()
    for _ in range(4):
        cdn.piece(10 * MIB, client_flows=1, cdn_flows=4, clients_take=TAKES)
    cdn.piece(3 * MIB, client_flows=1, cdn_flows=8, clients_take=TAKES)
    assert cdn.rate == 0.0 and cdn.probing
    cdn.piece(3 * MIB, client_flows=1, cdn_flows=8, clients_take=TAKES)
    assert cdn.rate == pytest.approx(24 * MIB), "slow ones in a row are"


@pytest.mark.parametrize(("client_flows", "cdn_flows", "clients_take"), [(4, 5, TAKES), (1, 1, TAKES), (1, 5, 0.0)])
def test_a_slow_piece_is_no_measure_unless_only_other_cdn_pieces_can_have_slowed_it(
    client_flows: float, cdn_flows: float, clients_take: float,
) -> None:
    """2 MiB/s beside 3 more pieces of its client is 8 MiB/s taken; with no other CDN piece, the client or
    its link was the limit (a lone CDN flow shares C with nothing); and with nothing measured on peers,
    there is no telling slow from what a client takes."""
    cdn = rates.CdnCapacity()
    cdn.piece(2 * MIB, client_flows=client_flows, cdn_flows=cdn_flows, clients_take=clients_take)
    assert cdn.rate == 0.0 and cdn.probing


def test_the_window_grows_only_while_at_least_half_of_it_is_in_use() -> None:
    """A window that grew while the CDN ran two pieces would open the probe without the port ever tried wide."""
    cdn = rates.CdnCapacity()
    for _ in range(3 * rates.PROBE_OPEN):
        cdn.piece(10 * MIB, client_flows=1, cdn_flows=1.5, clients_take=TAKES)
    assert cdn.window == rates.PROBE_START == 4 and cdn.probing
    cdn.piece(10 * MIB, client_flows=1, cdn_flows=2, clients_take=TAKES)
    assert cdn.window == 5
