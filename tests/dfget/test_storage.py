"""The piece file: the whole-file MD5 computed while pieces arrive equals the MD5 of what is published."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from dfget.errors import Md5Mismatch
from dfget.storage import PieceFile

PIECE = 64 * 1024 + 17  # not a multiple of the hasher's read size, so ranges straddle its blocks


def _content(pieces: int) -> bytes:
    return random.Random(pieces).randbytes(PIECE * pieces - 1000)  # a short last piece


async def _download(target: PieceFile, data: bytes, order: list[int]) -> None:
    for num in order:
        chunk = data[num * PIECE:(num + 1) * PIECE]
        await target.write(num * PIECE, chunk)
        target.verified(num * PIECE, len(chunk))


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled", "never told"])
async def test_published_md5_is_the_files_whatever_the_piece_order(tmp_path: Path, order: str) -> None:
    data = _content(40)
    nums = list(range(40))
    if order == "reversed":
        nums.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(nums)
    target = PieceFile(tmp_path / "out.bin", "1-2.000", None)
    if order == "never told":
        for num in nums:
            await target.write(num * PIECE, data[num * PIECE:(num + 1) * PIECE])
    else:
        await _download(target, data, nums)
    expected = hashlib.md5(data).hexdigest()
    assert await target.publish(len(data), expected) == expected
    target.close()
    assert (tmp_path / "out.bin").read_bytes() == data


async def test_reset_forgets_what_was_hashed(tmp_path: Path) -> None:
    """After a migration changed the piece size every offset moved: the old prefix must not count."""
    first, second = _content(10), _content(12)
    target = PieceFile(tmp_path / "out.bin", "1-2.000", None)
    await _download(target, first, list(range(10)))
    await target.reset()
    await _download(target, second, list(range(12)))
    expected = hashlib.md5(second).hexdigest()
    assert await target.publish(len(second), expected) == expected
    target.close()


async def test_bytes_changed_on_disk_before_publishing_are_caught(tmp_path: Path) -> None:
    """Only verified ranges are hashed early; the rest is hashed at publish time, from the disk."""
    data = _content(10)
    target = PieceFile(tmp_path / "out.bin", "1-2.000", None)
    await _download(target, data, list(range(9)))
    await target.write(9 * PIECE, b"\0" * (len(data) - 9 * PIECE))  # the last piece, never verified
    with pytest.raises(Md5Mismatch):
        await target.publish(len(data), hashlib.md5(data).hexdigest())
    target.discard()
    assert not (tmp_path / "out.bin").exists()
    assert os.listdir(tmp_path) == []
