"""Piece sizes, framing and MD5 texts against the protocol file and the Go golden data."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfwire.pieces import (
    MIB,
    data_size,
    md5_file_text,
    parse_md5_file,
    parse_range,
    piece_count,
    piece_range,
    piece_size_for,
    piece_total_at_register,
    unwrap,
    wrap,
    wrapped_length,
    wrapped_md5,
)
from tests.spec import vectors


@pytest.mark.parametrize(("length", "size"), [
    (-1, 4 * MIB), (0, 4 * MIB), (200 * MIB, 4 * MIB), (200 * MIB + 1, 4 * MIB), (300 * MIB, 5 * MIB),
    (1024 * MIB, 12 * MIB), (2048 * MIB, 15 * MIB), (100 * 1024 * MIB, 15 * MIB),
])
def test_piece_size(length: int, size: int) -> None:
    assert piece_size_for(length) == size


@pytest.mark.parametrize(("base", "length", "size"), [
    (2 * MIB, -1, 2 * MIB), (2 * MIB, 200 * MIB, 2 * MIB), (2 * MIB, 200 * MIB + 1, 4 * MIB),
    (2 * MIB, 300 * MIB, 5 * MIB), (2 * MIB, 1024 * MIB, 12 * MIB), (8 * MIB, 300 * MIB, 8 * MIB),
    (8 * MIB, 1024 * MIB, 12 * MIB), (15 * MIB, 100 * 1024 * MIB, 15 * MIB),
])
def test_a_base_sets_small_files_and_bounds_large_ones_from_below(base: int, length: int, size: int) -> None:
    assert piece_size_for(length, base) == size
    assert piece_size_for(length, base) <= piece_size_for(length * 2, base)


def test_piece_sizes_match_go_supernode() -> None:
    for vector in vectors()["piece_sizes"]:
        length = vector["length"]
        size = piece_size_for(length)
        assert size == vector["pieceSize"]
        at_register = vector["task_at_register"].get("pieceTotal") or 0
        assert piece_total_at_register(length, size) == at_register
        after = vector["task_after_cdn"]
        assert piece_count(length, size) == after["pieceTotal"]
        assert wrapped_length(length, size) == after["fileLength"] == vector["cdn_data_file_length"]


def test_cdn_files_match_go_supernode_byte_for_byte() -> None:
    for vector in vectors()["cdn_files"]:
        n = vector["source_length"]
        content = b"hello Dragonfly" if vector["file"] == "hello.txt" else bytes(i % 251 for i in range(n))
        if vector["file"] == "empty.bin":
            content = b""
        assert hashlib.md5(content).hexdigest() == vector["source_md5"]
        size = vector["register_data"]["pieceSize"]
        per = data_size(size)
        chunks = [content[i:i + per] for i in range(0, len(content), per)] or [b""]
        framed = b"".join(wrap(chunk, size) for chunk in chunks)
        expected = vector["cdn_data_file"]
        assert len(framed) == expected["length"]
        assert framed[:8].hex().startswith(expected["first8_hex"][:16])
        assert framed[-8:].hex().endswith(expected["last8_hex"])
        assert hashlib.md5(framed).hexdigest() == expected["md5_of_whole_cdn_file"]
        text = md5_file_text([wrapped_md5(chunk, size) for chunk in chunks], vector["source_md5"])
        assert text == vector["md5_file_text"]


def test_protocol_vectors() -> None:
    assert wrap(b"x" * 15, 4 * MIB)[:4].hex() == "0400000f"
    assert wrap(b"", 4 * MIB) == bytes.fromhex("040000007f")
    assert wrapped_md5(b"hello Dragonfly", 4 * MIB) == "8f95b369fc1f8d38262bb1b42d1ac87c:20"
    assert wrapped_md5(b"", 4 * MIB) == "d6991051769098273e82477afd2bb93e:5"


@given(st.binary(max_size=300), st.sampled_from([4 * MIB, 5 * MIB, 15 * MIB]))
def test_wrap_unwrap_roundtrip(data: bytes, size: int) -> None:
    assert unwrap(wrap(data, size)) == data


@pytest.mark.parametrize("bad", [b"", b"\x04\x00\x00", b"\x04\x00\x00\x01\x7f", b"\x04\x00\x00\x00\x00"])
def test_unwrap_rejects_bad_frames(bad: bytes) -> None:
    with pytest.raises(ValueError):
        unwrap(bad)


def test_ranges() -> None:
    assert piece_range(2, 4 * MIB) == "8388608-12582911"
    r = parse_range("8388608-12582911")
    assert (r.start, r.end, r.length, r.piece_num) == (8388608, 12582911, 4 * MIB, 2)
    for bad in ("", "-", "1-", "-1", "a-b", "5-4", "1-2-3", " -1"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_md5_file_seal() -> None:
    text = md5_file_text(["a:1", "b:2"], "c")
    assert parse_md5_file(text) == (["a:1", "b:2"], "c")
    assert parse_md5_file(text.replace("a:1", "x:1")) is None
    assert parse_md5_file("") is None
