"""``cdn_rate_limit``: the download port's total egress rate, from a flag, the environment or the YAML file.

Like every size it takes ``K/M/G`` suffixes (1024-based); 0 or absent is unlimited, which the rest
of the supernode sees as ``cdn_egress_rate is None``. A bad value stops the command with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from supernode.cdn.egress import MAX_CHUNK, MIN_CHUNK, EgressLimiter, chunk_size_for
from supernode.cli import _parser, main
from supernode.config import load_settings
from supernode.node import Supernode
from tests.unit.test_metrics import sample_value

MIB = 1024**2


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERNODE_CDN_RATE_LIMIT", raising=False)
    monkeypatch.delenv("SUPERNODE_CDN_MEASURE", raising=False)


def test_absent_or_zero_is_unlimited() -> None:
    s = load_settings(None, advertise_ip="127.0.0.1")
    assert s.cdn_rate_limit == 0 and s.cdn_egress_rate is None
    s = load_settings(None, advertise_ip="127.0.0.1", cdn_rate_limit="0")
    assert s.cdn_rate_limit == 0 and s.cdn_egress_rate is None


def test_flag_env_and_yaml_with_their_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "supernode.yml"
    config.write_text("base:\n  cdnRateLimit: 40M\n")  # Go-style camelCase under base normalises too
    assert load_settings(config, advertise_ip="127.0.0.1").cdn_egress_rate == 40 * MIB
    config.write_text("cdn_rate_limit: 1.5G\n")
    assert load_settings(config, advertise_ip="127.0.0.1").cdn_egress_rate == int(1.5 * 1024**3)
    monkeypatch.setenv("SUPERNODE_CDN_RATE_LIMIT", "20M")
    assert load_settings(config, advertise_ip="127.0.0.1").cdn_egress_rate == 20 * MIB
    assert load_settings(config, advertise_ip="127.0.0.1", cdn_rate_limit="4M").cdn_egress_rate == 4 * MIB
    assert load_settings(config, advertise_ip="127.0.0.1", cdn_rate_limit="0").cdn_egress_rate is None


@pytest.mark.parametrize("value", ["fast", "-1", "10Mbit", "1e6", ""])
def test_bad_values_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="cdn_rate_limit"):
        load_settings(None, advertise_ip="127.0.0.1", cdn_rate_limit=value)


def test_bad_value_in_the_environment_stops_the_command(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SUPERNODE_CDN_RATE_LIMIT", "lots")
    assert main(["--advertise-ip", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "invalid cdn_rate_limit" in err and "'lots'" in err and "Traceback" not in err


def test_bad_flag_stops_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--advertise-ip", "127.0.0.1", "--cdn-rate-limit=-5M"]) == 2
    err = capsys.readouterr().err
    assert "invalid cdn_rate_limit" in err and "K, M, G or T" in err


def test_the_node_exposes_the_limit_and_exports_it(tmp_path: Path) -> None:
    limited = Supernode(load_settings(None, advertise_ip="127.0.0.1", home_dir=tmp_path, cdn_rate_limit="4M"))
    assert limited.cdn_egress_rate == 4 * MIB
    assert sample_value(limited.metrics, "dragonfly_supernode_cdn_rate_limit_bytes") == 4 * MIB
    unlimited = Supernode(load_settings(None, advertise_ip="127.0.0.1", home_dir=tmp_path))
    assert unlimited.cdn_egress_rate is None
    assert sample_value(unlimited.metrics, "dragonfly_supernode_cdn_rate_limit_bytes") == 0


def test_the_capacity_the_scheduler_works_with_is_exported_told_or_measured(tmp_path: Path) -> None:
    told = Supernode(load_settings(None, advertise_ip="127.0.0.1", home_dir=tmp_path, cdn_rate_limit="4M"))
    assert sample_value(told.metrics, "dragonfly_supernode_cdn_capacity_bytes") == 4 * MIB
    measuring = Supernode(load_settings(None, advertise_ip="127.0.0.1", home_dir=tmp_path))
    assert measuring.progress.rates.cdn.probing
    assert sample_value(measuring.metrics, "dragonfly_supernode_cdn_capacity_bytes") == 0
    measuring.progress.rates.cdn.piece(2 * MIB, client_flows=1, cdn_flows=5, clients_take=10 * MIB)
    assert sample_value(measuring.metrics, "dragonfly_supernode_cdn_capacity_bytes") == 10 * MIB
    go = Supernode(load_settings(None, advertise_ip="127.0.0.1", home_dir=tmp_path, cdn_measure=False))
    assert not go.progress.rates.cdn.probing and not go.progress.rates.cdn.seeds


def test_measuring_is_turned_off_by_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None, advertise_ip="127.0.0.1").cdn_measure
    flags = vars(_parser().parse_args(["--no-cdn-measure"]))
    assert not load_settings(None, advertise_ip="127.0.0.1", **flags).cdn_measure
    monkeypatch.setenv("SUPERNODE_CDN_MEASURE", "false")
    assert not load_settings(None, advertise_ip="127.0.0.1").cdn_measure


@pytest.mark.parametrize(("rate", "chunk"), [(1024, MIN_CHUNK), (4 * MIB, 128 * 1024), (8 * MIB, MAX_CHUNK),
                                             (10 * 1024 * MIB, MAX_CHUNK)])
def test_chunks_are_about_a_32nd_of_a_second_within_bounds(rate: int, chunk: int) -> None:
    assert chunk_size_for(rate) == chunk
    assert EgressLimiter(rate).chunk == chunk


def test_a_limiter_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        EgressLimiter(0)
