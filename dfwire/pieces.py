"""Piece arithmetic, framing and MD5 texts (spec §2.3, §3.10, §5.3).

Dragonfly v1 moves a file as *wrapped* pieces: a 4-byte big-endian head ``dataLen | pieceSize << 4``,
the data, and a ``0x7f`` tail byte. Every size and range on the wire is in wrapped coordinates, the
per-piece MD5 covers the wrapped bytes, and the whole-file MD5 covers only the raw data. Getting any
of this wrong by one byte makes real dfget clients reject every piece, hence one small pure module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1024 * 1024
DEFAULT_PIECE_SIZE = 4 * MIB
MAX_PIECE_SIZE = 15 * MIB
HEAD_SIZE = 4
TAIL_BYTE = 0x7F
WRAP_SIZE = HEAD_SIZE + 1
_TAIL = bytes([TAIL_BYTE])


def piece_size_for(length: int, base: int = DEFAULT_PIECE_SIZE) -> int:
    """Wrapped piece size for a source of ``length`` bytes (-1 when unknown).

    ``base`` is the size up to 200 MiB, the spec's 4 MiB "by default"; a larger file gets the spec's
    growing size (about 100 pieces per file, at most 15 MiB), never less than ``base``, so a smaller base
    speeds the swarm's relay of small files without multiplying the pieces of large ones.
    """
    if length <= 200 * MIB:
        return base
    return max(base, min((length // (100 * MIB) - 2) * MIB + DEFAULT_PIECE_SIZE, MAX_PIECE_SIZE))


def data_size(piece_size: int) -> int:
    return piece_size - WRAP_SIZE


def piece_total_at_register(http_length: int, piece_size: int) -> int:
    """Go divides the *raw* length by the *wrapped* piece size at register time (0 when unknown)."""
    if http_length <= 0:
        return 0
    return (http_length + piece_size - 1) // piece_size


def piece_count(http_length: int, piece_size: int) -> int:
    """Number of wrapped pieces of a finished CDN file; an empty source is still one 5-byte piece."""
    if http_length <= 0:
        return 1
    per = data_size(piece_size)
    return (http_length + per - 1) // per


def wrapped_length(http_length: int, piece_size: int) -> int:
    return max(http_length, 0) + WRAP_SIZE * piece_count(http_length, piece_size)


def piece_range(piece_num: int, piece_size: int) -> str:
    """Announced range of piece ``n``; the last piece is announced at full size too."""
    start = piece_num * piece_size
    return f"{start}-{start + piece_size - 1}"


@dataclass(frozen=True)
class Range:
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def piece_num(self) -> int:
        """Go recovers the piece number as ``start / (end - start + 1)``."""
        return self.start // self.length


def parse_range(text: str) -> Range:
    """Parse ``"start-end"`` (inclusive); raise ``ValueError`` on anything else."""
    start_s, sep, end_s = text.strip().partition("-")
    if not sep or not start_s.isdigit() or not end_s.isdigit():
        raise ValueError(f"invalid piece range {text!r}")
    start, end = int(start_s), int(end_s)
    if end < start:
        raise ValueError(f"invalid piece range {text!r}: end before start")
    return Range(start, end)


def piece_head(data_len: int, piece_size: int) -> bytes:
    return ((data_len | (piece_size << 4)) & 0xFFFFFFFF).to_bytes(HEAD_SIZE, "big")


def wrap(data: bytes, piece_size: int) -> bytes:
    return piece_head(len(data), piece_size) + data + _TAIL


def unwrap(piece: bytes) -> bytes:
    """Raw data of a wrapped piece; ``ValueError`` when the frame does not add up."""
    if len(piece) < WRAP_SIZE or piece[-1] != TAIL_BYTE:
        raise ValueError("piece frame has no tail byte")
    data_len = int.from_bytes(piece[:HEAD_SIZE], "big") & 0xFFFFFF
    if data_len != len(piece) - WRAP_SIZE:
        raise ValueError(f"piece head says {data_len} data bytes, frame holds {len(piece) - WRAP_SIZE}")
    return piece[HEAD_SIZE:-1]


def piece_md5_text(md5_hex: str, wrapped_len: int) -> str:
    """How piece MD5s travel and are stored: ``"<md5hex>:<wrappedLen>"``."""
    return f"{md5_hex}:{wrapped_len}"


def wrapped_md5(data: bytes, piece_size: int) -> str:
    framed = wrap(data, piece_size)
    return piece_md5_text(hashlib.md5(framed).hexdigest(), len(framed))


def md5_file_text(piece_md5s: Sequence[str], real_md5: str) -> str:
    """The ``.md5`` file: piece lines, the raw-file MD5, then a SHA-1 seal over all previous lines."""
    lines = [*piece_md5s, real_md5]
    seal = hashlib.sha1("".join(lines).encode()).hexdigest()
    return "\n".join([*lines, seal])


def parse_md5_file(text: str) -> tuple[list[str], str] | None:
    """Piece MD5s and the raw MD5 of a ``.md5`` file, or ``None`` if its seal does not verify."""
    lines = text.split("\n")
    if len(lines) < 3:
        return None
    *body, seal = lines
    if hashlib.sha1("".join(body).encode()).hexdigest() != seal:
        return None
    *pieces, real = body
    return pieces, real
