"""The pieces of a task's data file on a real cache directory: sealed and written, checked, measured for a resume.

Expected bytes and MD5 texts come from ``dfwire.pieces`` (the framing checked against the Go golden data),
so what the CDN writes is what dfget and the Go supernode read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from dfwire.ids import task_id
from dfwire.pieces import HEAD_SIZE, WRAP_SIZE, data_size, wrap, wrapped_md5
from supernode.cdn.datafile import Partial, finish_in_thread, open_data, scan_partial, seal_piece, verify_cache
from supernode.cdn.store import CacheMeta, CacheStore

URL = "http://origin.example/file.bin"
TASK = task_id(URL)
PIECE_SIZE = 64
PER = data_size(PIECE_SIZE)
CONTENT = bytes(range(256)) * 2  # 512 bytes: 8 full pieces of 59 and one of 40


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path)


def chunks(content: bytes) -> list[bytes]:
    return [content[i:i + PER] for i in range(0, len(content), PER)]


def write_pieces(store: CacheStore, content: bytes) -> tuple[list[str], str]:
    """Seal ``content`` piece by piece into a fresh data file, as a download does; piece MD5s and raw MD5."""
    raw = hashlib.md5()
    fd = open_data(store, TASK, None, PIECE_SIZE)
    try:
        md5s = []
        for n, data in enumerate(chunks(content)):
            frame = bytearray(PIECE_SIZE)
            frame[HEAD_SIZE:HEAD_SIZE + len(data)] = data
            md5s.append(seal_piece(fd, n, frame, len(data), PIECE_SIZE, raw))
    finally:
        os.close(fd)
    return md5s, raw.hexdigest()


def finished(store: CacheStore, content: bytes = CONTENT) -> CacheMeta:
    """A finished, sealed cache entry of ``content``; its ``.meta`` (not written: the checks take it as given)."""
    md5s, real_md5 = write_pieces(store, content)
    store.write_md5s(TASK, md5s, real_md5)
    return CacheMeta(task_id=TASK, url=URL, piece_size=PIECE_SIZE, http_file_len=len(content),
                     file_length=len(content) + WRAP_SIZE * len(md5s), real_md5=real_md5, finish=True, success=True)


def unfinished(length: int = len(CONTENT)) -> CacheMeta:
    return CacheMeta(task_id=TASK, url=URL, piece_size=PIECE_SIZE, http_file_len=length, etag='"v1"')


def flip_byte(store: CacheStore, offset: int) -> None:
    with open(store.data_path(TASK), "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0xFF]))


# --- sealing ------------------------------------------------------------------------------------------

def test_seal_piece_writes_the_wrapped_piece_at_its_offset(store: CacheStore) -> None:
    md5s, real_md5 = write_pieces(store, CONTENT)
    on_disk = store.data_path(TASK).read_bytes()
    assert on_disk == b"".join(wrap(data, PIECE_SIZE) for data in chunks(CONTENT))
    assert md5s == [wrapped_md5(data, PIECE_SIZE) for data in chunks(CONTENT)]
    assert real_md5 == hashlib.md5(CONTENT).hexdigest()


def test_an_empty_file_is_one_empty_frame(store: CacheStore) -> None:
    raw = hashlib.md5()
    fd = open_data(store, TASK, None, PIECE_SIZE)
    try:
        md5_text = seal_piece(fd, 0, bytearray(PIECE_SIZE), 0, PIECE_SIZE, raw)
    finally:
        os.close(fd)
    assert store.data_path(TASK).read_bytes() == wrap(b"", PIECE_SIZE)
    assert md5_text == wrapped_md5(b"", PIECE_SIZE)
    assert raw.hexdigest() == hashlib.md5(b"").hexdigest()


# --- checking a finished entry ------------------------------------------------------------------------------

def test_a_sound_cache_entry_verifies(store: CacheStore) -> None:
    meta = finished(store)
    assert verify_cache(store, TASK, meta) == [wrapped_md5(data, PIECE_SIZE) for data in chunks(CONTENT)]


@pytest.mark.parametrize("offset", [0, HEAD_SIZE, PIECE_SIZE - 1, 8 * PIECE_SIZE + HEAD_SIZE + 39])
def test_a_changed_byte_anywhere_fails_verification(store: CacheStore, offset: int) -> None:
    meta = finished(store)
    flip_byte(store, offset)
    assert verify_cache(store, TASK, meta) is None


def test_a_data_file_of_another_length_fails_verification(store: CacheStore) -> None:
    meta = finished(store)
    os.truncate(store.data_path(TASK), meta.file_length - 1)
    assert verify_cache(store, TASK, meta) is None


def test_a_seal_for_other_content_fails_verification(store: CacheStore) -> None:
    meta = finished(store)
    assert verify_cache(store, TASK, meta.model_copy(update={"real_md5": "0" * 32})) is None


def test_a_piece_md5_claiming_a_length_beyond_the_piece_size_fails_verification(store: CacheStore) -> None:
    meta = finished(store)
    md5s, real_md5 = store.read_md5s(TASK) or ([], "")
    store.write_md5s(TASK, [md5s[0].replace(f":{PIECE_SIZE}", f":{PIECE_SIZE + 1}"), *md5s[1:]], real_md5)
    assert verify_cache(store, TASK, meta) is None


def test_a_missing_seal_or_data_file_fails_verification(store: CacheStore) -> None:
    meta = finished(store)
    store.data_path(TASK).unlink()
    assert verify_cache(store, TASK, meta) is None
    store.delete(TASK)
    assert verify_cache(store, TASK, meta) is None


# --- measuring an interrupted download -----------------------------------------------------------------

def test_an_interrupted_download_resumes_after_its_complete_pieces(store: CacheStore) -> None:
    write_pieces(store, CONTENT[:3 * PER + 10])
    partial = scan_partial(store, TASK, unfinished())
    assert partial.pieces == 3
    assert partial.piece_md5s == [wrapped_md5(data, PIECE_SIZE) for data in chunks(CONTENT[:3 * PER])]
    assert partial.raw_md5.hexdigest() == hashlib.md5(CONTENT[:3 * PER]).hexdigest()


def test_the_scan_stops_at_the_first_piece_that_is_not_well_framed(store: CacheStore) -> None:
    write_pieces(store, CONTENT[:4 * PER])
    flip_byte(store, 2 * PIECE_SIZE - 1)  # the second piece's tail byte
    assert scan_partial(store, TASK, unfinished()).pieces == 1
    flip_byte(store, 2 * PIECE_SIZE - 1)
    flip_byte(store, 2 * PIECE_SIZE)  # the third piece's head
    assert scan_partial(store, TASK, unfinished()).pieces == 2


def test_the_scan_always_leaves_a_byte_to_fetch(store: CacheStore) -> None:
    write_pieces(store, CONTENT[:4 * PER])
    assert scan_partial(store, TASK, unfinished(length=4 * PER)).pieces == 3
    assert scan_partial(store, TASK, unfinished(length=4 * PER + 1)).pieces == 4


def test_a_missing_data_file_has_nothing_to_resume(store: CacheStore) -> None:
    partial = scan_partial(store, TASK, unfinished())
    assert partial.pieces == 0
    assert partial.piece_md5s == []


# --- opening the data file to write -------------------------------------------------------------------

def test_resuming_cuts_the_data_file_back_to_its_complete_pieces(store: CacheStore) -> None:
    write_pieces(store, CONTENT[:3 * PER + 10])
    before = store.data_path(TASK).read_bytes()
    os.close(open_data(store, TASK, Partial(pieces=3), PIECE_SIZE))
    assert store.data_path(TASK).read_bytes() == before[:3 * PIECE_SIZE]


def test_a_fresh_download_starts_an_empty_file_and_drops_the_old_seal(store: CacheStore) -> None:
    finished(store)
    os.close(open_data(store, TASK, None, PIECE_SIZE))
    assert store.data_size(TASK) == 0
    assert store.read_md5s(TASK) is None


# --- waiting for the worker thread -----------------------------------------------------------------------

async def test_finish_in_thread_returns_what_the_function_returns() -> None:
    assert await finish_in_thread(divmod, 7, 2) == (3, 1)


async def test_finish_in_thread_raises_what_the_function_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        await finish_in_thread(divmod, 7, 0)


async def test_a_cancelled_caller_waits_for_the_thread_then_abandons_its_result() -> None:
    started, release = threading.Event(), threading.Event()
    abandoned: list[str] = []

    def blocking() -> str:
        started.set()
        release.wait(10)
        return "fd"

    job = asyncio.create_task(finish_in_thread(blocking, abandon=abandoned.append))
    await asyncio.to_thread(started.wait, 10)
    job.cancel()
    await asyncio.sleep(0.05)
    assert not job.done(), "the caller went on while the thread was still running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert abandoned == ["fd"]


async def test_a_cancelled_caller_abandons_nothing_when_the_function_failed() -> None:
    started, release = threading.Event(), threading.Event()
    abandoned: list[object] = []

    def failing() -> int:
        started.set()
        release.wait(10)
        raise OSError("disk full")

    job = asyncio.create_task(finish_in_thread(failing, abandon=abandoned.append))
    await asyncio.to_thread(started.wait, 10)
    job.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert abandoned == []
