"""``piece_size``: the wrapped piece size of new tasks, from a flag, the environment or the YAML file.

0 (the default) keeps the spec's rule (§2.3: 4 MiB up to 200 MiB, then growing to 15 MiB), so a
deployment that sets nothing answers every register as Go does. A set value replaces the 4 MiB, and a
larger file keeps the spec's growing size, never less. It must be a whole number of MiB from 1 to 15:
the piece head keeps the piece size in its top byte (§3.10), and Go caps it at 15 MiB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dfwire.pieces import piece_size_for
from supernode.cli import _parser, main
from supernode.config import load_settings

MIB = 1024**2
GIB = 1024 * MIB


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERNODE_PIECE_SIZE", raising=False)


@pytest.mark.parametrize("length", [-1, 0, 5, 64 * MIB, 200 * MIB, 300 * MIB, GIB, 10 * GIB])
def test_absent_or_zero_is_the_spec_rule(length: int) -> None:
    for settings in (load_settings(None, advertise_ip="127.0.0.1"),
                     load_settings(None, advertise_ip="127.0.0.1", piece_size="0")):
        assert settings.piece_size == 0
        assert settings.piece_size_for(length) == piece_size_for(length)


@pytest.mark.parametrize(("length", "size"), [(-1, 2 * MIB), (0, 2 * MIB), (64 * MIB, 2 * MIB),
                                            (200 * MIB, 2 * MIB), (300 * MIB, 5 * MIB), (10 * GIB, 15 * MIB)])
def test_a_set_size_replaces_the_4_mib_of_files_up_to_200_mib(length: int, size: int) -> None:
    """A larger file keeps the spec's growing size: 2 MiB pieces would make a 10 GiB file 5,121 of them."""
    settings = load_settings(None, advertise_ip="127.0.0.1", piece_size="2M")
    assert settings.piece_size_for(length) == size


def test_flag_env_and_yaml_with_their_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "supernode.yml"
    config.write_text("base:\n  pieceSize: 8M\n")
    assert load_settings(config, advertise_ip="127.0.0.1").piece_size == 8 * MIB
    config.write_text("piece_size: 1048576\n")
    assert load_settings(config, advertise_ip="127.0.0.1").piece_size == MIB
    monkeypatch.setenv("SUPERNODE_PIECE_SIZE", "3M")
    assert load_settings(config, advertise_ip="127.0.0.1").piece_size == 3 * MIB
    flags = vars(_parser().parse_args(["--piece-size", "15M"]))
    assert load_settings(config, advertise_ip="127.0.0.1", **flags).piece_size == 15 * MIB


@pytest.mark.parametrize("value", ["512K", "1.5M", "16M", "1G", "-1", "fast", ""])
def test_bad_values_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="piece_size"):
        load_settings(None, advertise_ip="127.0.0.1", piece_size=value)


def test_bad_flag_stops_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--advertise-ip", "127.0.0.1", "--piece-size", "2.5M"]) == 2
    err = capsys.readouterr().err
    assert "invalid piece_size" in err and "whole number of MiB from 1M to 15M" in err and "Traceback" not in err
