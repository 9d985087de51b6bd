"""Fetching one piece from a peer's uploader or the supernode's CDN port, checked before it counts.

A piece streams straight to its place in the piece file (memory stays bounded by one chunk per
running piece, whatever the piece size) while its MD5 and its frame (head, data, ``0x7f`` tail) are
checked. A piece that fails any check is never recorded as held, so it is neither reported nor
served to others, and it is fetched again elsewhere; the bytes it left are overwritten then, and the
whole-file MD5 guards the output in any case.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import aiohttp
from yarl import URL

from dfwire import pieces

from .progress import Progress
from .protocol import FILE_MD5_NOT_MATCH, FILE_NOT_EXIST, USER_AGENT
from .ratelimit import TokenBucket
from .storage import PieceFile
from .supernode_api import PieceTask

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
#: The session's per-response buffer. aiohttp's 64 KiB default pauses and resumes the socket every
#: 64-128 KiB, and each resume is a round of Python work per piece stream; a larger buffer lets one
#: iteration take a whole READ_CHUNK (a running piece holds at most twice this much in memory).
READ_BUFFER = 1024 * 1024
WRITE_BATCH = 1024 * 1024
CONNECT_TIMEOUT = 2.0


class FrameError(ValueError):
    """The bytes received do not form one wrapped piece."""


class FrameReader:
    """Unwraps a piece as it arrives: :meth:`feed` returns the data bytes inside each chunk.

    ``max_data`` is what the piece may hold (``pieceSize - 5``, less for the last piece of a file of
    known length): a larger head means a corrupt or hostile frame and stops the download early.
    """

    def __init__(self, max_data: int) -> None:
        self.max_data = max_data
        self.md5 = hashlib.md5()
        self.received = 0
        self.data_len = -1
        self._head = b""
        self._data_seen = 0
        self._tail_seen = False

    def skip(self, chunk: bytes) -> None:
        """Count and hash bytes without parsing them (after a frame error, for the MD5 report)."""
        self.md5.update(chunk)
        self.received += len(chunk)

    def feed(self, chunk: bytes) -> memoryview:
        """The data bytes inside ``chunk``: a view of it, valid while ``chunk`` is."""
        self.skip(chunk)
        view = memoryview(chunk)
        if self.data_len < 0:
            need = pieces.HEAD_SIZE - len(self._head)
            self._head += bytes(view[:need])
            view = view[need:]
            if len(self._head) < pieces.HEAD_SIZE:
                return view[:0]
            self.data_len = int.from_bytes(self._head, "big") & 0xFFFFFF
            if self.data_len > self.max_data:
                raise FrameError(f"piece head announces {self.data_len} data bytes, at most {self.max_data} fit")
        take = min(len(view), self.data_len - self._data_seen)
        data = view[:take]
        self._data_seen += take
        rest = view[take:]
        if rest:
            if self._tail_seen or len(rest) > 1:
                raise FrameError("bytes after the piece's tail")
            if rest[0] != pieces.TAIL_BYTE:
                raise FrameError(f"piece tail is {rest[0]:#04x}, not {pieces.TAIL_BYTE:#04x}")
            self._tail_seen = True
        return data

    def close(self) -> None:
        if not self._tail_seen:
            raise FrameError(f"piece ended after {self.received} bytes, before its tail")


@dataclass(frozen=True)
class PieceOutcome:
    """What came of one piece: ``data_bytes`` written when ``ok``; else why, and the report to make."""

    ok: bool
    data_bytes: int = 0
    error: str = ""
    error_type: str = ""  # FILE_NOT_EXIST or FILE_MD5_NOT_MATCH: reported with /peer/piece/error
    real_md5: str = ""
    expected_md5: str = ""


def expected_data(task: PieceTask, file_length: int) -> int:
    """Most data bytes piece ``n`` may hold: a full piece, or what is left of a file of known length."""
    per = pieces.data_size(task.piece_size)
    if file_length < 0:
        return per
    return max(0, min(per, file_length - task.piece_num * per))


class PieceFetcher:
    """Downloads pieces for one dfget run into its :class:`PieceFile`, paced by the run's ``-s`` bucket."""

    def __init__(self, session: aiohttp.ClientSession, target: PieceFile, limiter: TokenBucket, progress: Progress,
                 *, min_rate: int) -> None:
        self._session = session
        self._progress = progress
        self._target = target
        self._limiter = limiter
        self._min_rate = min_rate

    async def fetch(self, task: PieceTask, file_length: int) -> PieceOutcome:
        """Fetch, check and store one piece; disk trouble raises ``LocalIOError``, everything else is an outcome."""
        reader = FrameReader(expected_data(task, file_length))
        try:
            return await self._fetch(task, file_length, reader)
        finally:
            self._progress.moving(-reader.received)

    async def _fetch(self, task: PieceTask, file_length: int, reader: FrameReader) -> PieceOutcome:
        url = f"http://{task.peer_ip}:{task.peer_port}{task.path}"
        headers = {"User-Agent": USER_AGENT, "Range": f"bytes={task.range}", "pieceNum": str(task.piece_num),
                   "pieceSize": str(task.piece_size)}
        timeout = aiohttp.ClientTimeout(total=task.piece_size / self._min_rate + 10, sock_connect=CONNECT_TIMEOUT)
        expected_md5, _, expected_len = task.piece_md5.partition(":")
        frame_error = ""
        base = task.piece_num * pieces.data_size(task.piece_size)
        written = 0
        batch = bytearray()
        try:
            async with self._session.get(URL(url, encoded=True), headers=headers, timeout=timeout,
                                         allow_redirects=False) as resp:
                if resp.status == 416:
                    return PieceOutcome(False, error=f"{url} answered 416: range {task.range} not satisfiable")
                if not 200 <= resp.status < 300:
                    return PieceOutcome(False, error=f"{url} answered HTTP {resp.status}",
                                        error_type=FILE_NOT_EXIST if resp.status == 404 else "")
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    await self._limiter.acquire(len(chunk))
                    if reader.received + len(chunk) > task.piece_size:
                        return PieceOutcome(False, error=f"{url} sent more than the piece size {task.piece_size}")
                    self._progress.moving(len(chunk))
                    if frame_error:
                        reader.skip(chunk)
                        continue
                    try:
                        batch += reader.feed(chunk)
                    except FrameError as exc:
                        frame_error = str(exc)
                        continue
                    if len(batch) >= WRITE_BATCH:
                        await self._target.write(base + written, batch)
                        written += len(batch)
                        batch = bytearray()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return PieceOutcome(False, error=f"{url}: {exc.__class__.__name__}: {exc}")
        real_md5 = reader.md5.hexdigest()
        if expected_md5 and real_md5 != expected_md5:
            return PieceOutcome(False, error=f"{url}: piece {task.piece_num} MD5 {real_md5} != {expected_md5}",
                                error_type=FILE_MD5_NOT_MATCH, real_md5=real_md5, expected_md5=expected_md5)
        if not frame_error:
            try:
                reader.close()
            except FrameError as exc:
                frame_error = str(exc)
        if not frame_error and expected_len.isdigit() and reader.received != int(expected_len):
            frame_error = f"piece is {reader.received} bytes, the supernode announced {expected_len}"
        if not frame_error and file_length >= 0 and reader.data_len != reader.max_data:
            frame_error = (f"piece holds {reader.data_len} data bytes, a file of {file_length} bytes needs "
                           f"{reader.max_data}")
        if frame_error:
            return PieceOutcome(False, error=f"{url}: piece {task.piece_num}: {frame_error}")
        if batch:
            await self._target.write(base + written, batch)
            written += len(batch)
        return PieceOutcome(True, data_bytes=written)
