"""Settings precedence and parsing: flags > SUPERNODE_* environment > YAML file > Go defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dfwire.units import parse_duration, parse_size
from supernode.config import ConfigFileError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUPERNODE_PORT", "SUPERNODE_HOME_DIR", "SUPERNODE_UP_LIMIT", "SUPERNODE_MAX_BANDWIDTH"):
        monkeypatch.delenv(name, raising=False)


def test_go_defaults() -> None:
    s = load_settings(None, advertise_ip="10.1.2.3")
    assert (s.port, s.download_port, s.up_limit, s.down_limit) == (8002, 8001, 5, 4)
    assert s.max_bandwidth == 200 * 1024**2 and s.system_bandwidth == 20 * 1024**2
    assert s.cdn_rate == 180 * 1024**2
    assert (s.gc_initial_delay, s.gc_meta_interval, s.task_expire_time, s.peer_gc_delay) == (6, 120, 180, 180)
    assert s.repo_dir == Path("/home/admin/supernode/repo")


def test_yaml_with_go_keys_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "supernode.yml"
    config.write_text("base:\n  listenPort: 7000\n  downloadPort: 7001\n  homeDir: /data/sn\n  peerUpLimit: 9\n"
                      "  systemReservedBandwidth: 10M\n  gcMetaInterval: 1m30s\n  advertiseIP: 10.0.0.5\n")
    s = load_settings(config)
    assert (s.port, s.download_port, s.home_dir, s.up_limit) == (7000, 7001, Path("/data/sn"), 9)
    assert s.system_bandwidth == 10 * 1024**2 and s.gc_meta_interval == 90 and s.advertise_ip == "10.0.0.5"
    monkeypatch.setenv("SUPERNODE_PORT", "7100")
    monkeypatch.setenv("SUPERNODE_MAX_BANDWIDTH", "1G")
    s = load_settings(config)
    assert s.port == 7100 and s.max_bandwidth == 1024**3 and s.download_port == 7001
    s = load_settings(config, port="7200")
    assert s.port == 7200


def test_snake_case_yaml_keys(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("port: 9100\nup_limit: 3\ncdn_task_limit: 8\n")
    s = load_settings(config, advertise_ip="127.0.0.1")
    assert (s.port, s.up_limit, s.cdn_task_limit) == (9100, 3, 8)


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings(tmp_path / "nope.yml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "base: [\n"])
def test_config_must_be_a_yaml_mapping(tmp_path: Path, text: str) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(ConfigFileError):
        load_settings(config)


@pytest.mark.parametrize(("field", "value"), [("port", "70000"), ("advertise_ip", "::1"), ("up_limit", "0"),
                                              ("max_bandwidth", "lots"), ("gc_meta_interval", "3 minutes")])
def test_bad_values_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(None, **{"advertise_ip": "127.0.0.1", field: value})


@pytest.mark.parametrize(("text", "size"), [("1024", 1024), ("20M", 20 * 1024**2), ("20MB", 20 * 1024**2),
                                            ("1.5G", int(1.5 * 1024**3)), ("3k", 3072), (7, 7)])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("3m", 180.0),
                                               ("3m0s", 180.0), ("2h", 7200.0), ("1h30m", 5400.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "3 m", "-1", "1d", "3mx"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
