"""The wrapped pieces inside a task's data file: write one, check a finished file, measure an interrupted one.

:mod:`.store` knows where a task's files are and keeps ``.meta`` and ``.md5``; the manager decides when to
fetch and what to announce. This module is the part in between that reads and writes the data file's
bytes and knows their framing (``dfwire.pieces``): it is the only code that trusts or produces piece
content on disk, so it is kept apart and tested on real files.

Everything here blocks. The manager runs the checks with ``asyncio.to_thread`` (each opens and closes its
own descriptor) and :func:`open_data` / :func:`seal_piece` through :func:`finish_in_thread`, because
their descriptor outlives the call and must not be closed while a worker thread still uses it.
Whatever the file size, a check holds one piece in memory at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dfwire.pieces import HEAD_SIZE, TAIL_BYTE, WRAP_SIZE, data_size, piece_head, piece_md5_text

from .store import CacheMeta, CacheStore

_T = TypeVar("_T")


@dataclass
class Partial:
    """What an interrupted download left on disk: complete pieces and their hashes."""

    pieces: int = 0
    piece_md5s: list[str] = field(default_factory=list)
    raw_md5: hashlib._Hash = field(default_factory=hashlib.md5)


def verify_cache(store: CacheStore, task_id: str, meta: CacheMeta) -> list[str] | None:
    """The piece MD5s of a finished entry whose every piece, and whole content, match its sealed ``.md5``.

    ``None`` when anything disagrees (seal, file length, a piece's hash or length, the raw MD5): the
    entry must then not be served.
    """
    sealed = store.read_md5s(task_id)
    if sealed is None or sealed[1] != meta.real_md5:
        return None
    piece_md5s, real_md5 = sealed
    if store.data_size(task_id) != meta.file_length:
        return None
    raw = hashlib.md5()
    try:
        fd = os.open(store.data_path(task_id), os.O_RDONLY)
    except OSError:
        return None
    try:
        for n, expected in enumerate(piece_md5s):
            length_text = expected.rpartition(":")[2]
            if not length_text.isdigit() or not 0 < int(length_text) <= meta.piece_size:
                return None
            block = os.pread(fd, int(length_text), n * meta.piece_size)
            if piece_md5_text(hashlib.md5(block).hexdigest(), len(block)) != expected:
                return None
            raw.update(block[HEAD_SIZE:-1])
    finally:
        os.close(fd)
    return piece_md5s if raw.hexdigest() == real_md5 else None


def scan_partial(store: CacheStore, task_id: str, meta: CacheMeta) -> Partial:
    """Complete, well-framed pieces at the start of an interrupted download.

    At least one byte is always left to fetch, so the ranged request can never be unsatisfiable
    (all full pieces of a file whose length is a multiple of the piece data size may be on disk).
    """
    partial = Partial()
    piece_size = meta.piece_size
    per = data_size(piece_size)
    head = piece_head(per, piece_size)
    limit = (meta.http_file_len - 1) // per
    try:
        fd = os.open(store.data_path(task_id), os.O_RDONLY)
    except OSError:
        return partial
    try:
        while partial.pieces < limit:
            block = os.pread(fd, piece_size, partial.pieces * piece_size)
            if len(block) != piece_size or block[:HEAD_SIZE] != head or block[-1] != TAIL_BYTE:
                return partial
            partial.piece_md5s.append(piece_md5_text(hashlib.md5(block).hexdigest(), piece_size))
            partial.raw_md5.update(block[HEAD_SIZE:-1])
            partial.pieces += 1
        return partial
    finally:
        os.close(fd)


def open_data(store: CacheStore, task_id: str, partial: Partial | None, piece_size: int) -> int:
    """The data file to write: fresh, or the interrupted one cut back to its complete pieces."""
    if partial is None:
        return store.open_fresh(task_id)
    fd = store.open_existing(task_id)
    try:
        os.ftruncate(fd, partial.pieces * piece_size)
    except OSError:
        os.close(fd)
        raise
    return fd


def seal_piece(fd: int, piece_num: int, frame: bytearray, data_len: int, piece_size: int,
               raw_md5: hashlib._Hash) -> str:
    """Frame the data in place (head, tail), hash it, write it at the piece's offset; its MD5 text.

    ``frame`` holds the data at ``[HEAD_SIZE:HEAD_SIZE + data_len]`` and is at least ``data_len + WRAP_SIZE``
    long. ``raw_md5`` is fed the data, so pieces must be sealed in order.
    """
    frame[:HEAD_SIZE] = piece_head(data_len, piece_size)
    frame[HEAD_SIZE + data_len] = TAIL_BYTE
    framed = memoryview(frame)[:data_len + WRAP_SIZE]
    raw_md5.update(framed[HEAD_SIZE:HEAD_SIZE + data_len])
    digest = hashlib.md5(framed).hexdigest()
    offset, view = piece_num * piece_size, framed
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
    return piece_md5_text(digest, data_len + WRAP_SIZE)


async def finish_in_thread(fn: Callable[..., _T], *args: object,
                           abandon: Callable[[_T], None] | None = None) -> _T:
    """Run blocking ``fn`` in a worker thread and wait for it to finish even if we are cancelled.

    A thread cannot be interrupted; returning early would let the caller close a file descriptor
    the thread is still writing to. On cancellation the result is handed to ``abandon`` (e.g. to
    close a descriptor that was just opened) and ``CancelledError`` is raised once the thread is done.
    """
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait({job})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if abandon is not None and job.exception() is None:
            abandon(job.result())
        raise asyncio.CancelledError
    return job.result()
