"""Where a download's bytes live until they are complete and checked (spec §3.1, §3.6, §3.7).

Pieces are written at their offsets into a temporary file beside the output, which is also linked
into the uploader's data directory as ``{taskFileName}.service`` so that the node serves pieces of an
unfinished download to other peers. Only a whole-file MD5 match publishes the file, by an atomic
rename over the output: a reader of the output never sees a partial or unverified file. When the
data directory is on another file system (no hard link), pieces go to the service file and the
verified content is copied beside the output before the rename.

The whole-file MD5 is computed while the download runs: each verified piece extends the in-order
prefix that a background task hashes (reading the bytes back from the page cache) and flushes to
disk. A rate-limited download leaves the CPU idle between chunks, so the check that used to read the
whole file after its last piece now mostly happened already, and the final ``fsync`` has little left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

from .errors import LocalIOError, Md5Mismatch

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SYNC_EVERY = 8 * CHUNK  # the background hasher flushes the hashed prefix to disk this often


def io_error(what: str, exc: OSError) -> LocalIOError:
    return LocalIOError(f"{what}: {exc.strerror or exc}", no_space=exc.errno in (errno.ENOSPC, errno.EDQUOT))


def write_all(fd: int, data: bytes | bytearray, offset: int | None = None) -> None:
    """``os.pwrite`` (or ``os.write`` without an offset) until every byte is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        if offset is not None:
            offset += written


def temp_path(output: Path, sign: str, kind: str) -> Path:
    """A hidden name beside the output, unique per dfget run, so that the final rename is atomic."""
    return output.parent / f".{output.name}.{kind}-{sign}.tmp"


def prepare_output(output: Path) -> None:
    """Fail early, before any download, when the output cannot be written."""
    if output.is_dir():
        raise LocalIOError(f"output {output} is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(f"cannot create the directory of {output}", exc) from exc


class PieceWatcher(Protocol):
    """Someone who reads a download while it runs (the registry mirror streams a layer as pieces arrive).

    ``opened`` names the file the pieces go to, before the first write; ``verified`` follows every
    piece that passed its checks and was written; ``reset`` says that every byte was forgotten.
    """

    def opened(self, path: Path) -> None: ...

    def verified(self, offset: int, length: int) -> None: ...

    def reset(self) -> None: ...


class PieceFile:
    """The file pieces are written into at their offsets; see the module docstring for the layout."""

    def __init__(self, output: Path, sign: str, service: Path | None, watcher: PieceWatcher | None = None) -> None:
        self.output = output
        self.temp = temp_path(output, sign, "dfget")
        self.service = service
        self._separate = False
        self._watcher = watcher
        self._start_digest()
        prepare_output(output)
        try:
            self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise io_error(f"cannot create {self.temp}", exc) from exc
        if service is None:
            self._tell_opened()
            return
        try:
            service.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.temp, service)
        except OSError as link_error:
            log.info("cannot hard-link %s to %s (%s): writing pieces to the service file", service, self.temp,
                     link_error)
            os.close(self._fd)
            self.temp.unlink(missing_ok=True)
            self._separate = True
            try:
                self._fd = os.open(service, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise io_error(f"cannot create {service}", exc) from exc
        self._tell_opened()

    def _tell_opened(self) -> None:
        if self._watcher is not None:
            self._watcher.opened(self.service if self._separate and self.service is not None else self.temp)

    def _start_digest(self) -> None:
        self._digest = hashlib.md5()
        self._digested = 0  # the prefix [0, _digested) is in _digest
        self._unsynced = 0
        self._pending: dict[int, int] = {}  # verified ranges beyond the prefix: start -> end
        self._hasher: asyncio.Task[None] | None = None
        self._hash_failed = False

    def verified(self, offset: int, length: int) -> None:
        """``length`` bytes at ``offset`` passed their piece's checks and will not be written again.

        The caller guarantees that no write to this range follows (a held piece is never fetched
        again; :meth:`reset` forgets every range), which is what makes hashing it early correct.
        """
        if length <= 0:
            return
        if self._watcher is not None:
            self._watcher.verified(offset, length)
        self._pending[offset] = offset + length
        if self._hasher is None and not self._hash_failed:
            self._hasher = asyncio.create_task(self._extend_digest())

    async def _extend_digest(self) -> None:
        digest = self._digest
        try:
            while True:
                end = self._digested
                while end in self._pending:
                    end = self._pending.pop(end)
                if end == self._digested:
                    return
                sync = self._unsynced + end - self._digested >= SYNC_EVERY
                await asyncio.to_thread(self._hash_range, digest, self._digested, end, sync)
                if digest is not self._digest:
                    return  # reset() started over while the thread ran
                self._unsynced = 0 if sync else self._unsynced + end - self._digested
                self._digested = end
        except OSError as exc:
            log.warning("hashing %s while downloading failed (%s): it is hashed whole at the end", self.temp, exc)
            self._hash_failed = True
        finally:
            if digest is self._digest:
                self._hasher = None

    def _hash_range(self, digest: hashlib._Hash, start: int, end: int, sync: bool) -> None:
        offset = start
        while offset < end:
            block = os.pread(self._fd, min(CHUNK, end - offset), offset)
            if not block:
                raise OSError(errno.EIO, f"{self.temp} ends at {offset}, before {end}")
            digest.update(block)
            offset += len(block)
        if sync:
            os.fdatasync(self._fd)

    async def _file_md5(self, length: int) -> str:
        """The MD5 of the first ``length`` bytes: the running digest when it covers exactly them."""
        if self._hasher is not None:
            await asyncio.shield(self._hasher)
        digest, start = self._digest.copy(), self._digested
        if self._hash_failed or start > length:
            digest, start = hashlib.md5(), 0
        await asyncio.to_thread(self._hash_range, digest, start, length, False)
        return digest.hexdigest()

    async def write(self, offset: int, data: bytes | bytearray) -> None:
        try:
            await asyncio.to_thread(self._write_all, offset, data)
        except OSError as exc:
            raise io_error(f"cannot write {self.output.name} at offset {offset}", exc) from exc

    def _write_all(self, offset: int, data: bytes | bytearray) -> None:
        write_all(self._fd, data, offset)

    async def reset(self) -> None:
        """Forget every byte (the piece size changed after a migration, so every offset moved)."""
        self._stop_digest()
        self._start_digest()
        if self._watcher is not None:
            self._watcher.reset()
        try:
            await asyncio.to_thread(os.ftruncate, self._fd, 0)
        except OSError as exc:
            raise io_error(f"cannot truncate {self.temp}", exc) from exc

    def _copy_to_temp(self, length: int) -> None:
        with open(self.temp, "xb") as out:
            offset = 0
            while offset < length:
                block = os.pread(self._fd, min(CHUNK, length - offset), offset)
                if not block:
                    break
                out.write(block)
                offset += len(block)
            out.flush()
            os.fsync(out.fileno())

    async def publish(self, length: int, expected_md5: str) -> str:
        """Cut the file to ``length``, check its MD5 (when one is expected), rename it over the output.

        Returns the file's MD5. ``Md5Mismatch`` leaves the output untouched.
        """
        try:
            await asyncio.to_thread(os.ftruncate, self._fd, length)
            real = await self._file_md5(length)
        except OSError as exc:
            raise io_error(f"cannot read back {self.temp}", exc) from exc
        if expected_md5 and real != expected_md5:
            raise Md5Mismatch(f"the downloaded file's MD5 is {real}, expected {expected_md5}")
        try:
            if self._separate:
                await asyncio.to_thread(self._copy_to_temp, length)
            else:
                await asyncio.to_thread(os.fsync, self._fd)
            os.replace(self.temp, self.output)
        except OSError as exc:
            raise io_error(f"cannot move the download to {self.output}", exc) from exc
        return real

    def _stop_digest(self) -> None:
        if self._hasher is not None:
            self._hasher.cancel()
            self._hasher = None
        self._digest = hashlib.md5()  # a thread still hashing holds the old object: its result is dropped

    def close(self) -> None:
        self._stop_digest()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Remove every name of an abandoned download: the output is never touched."""
        self.close()
        with contextlib.suppress(OSError):
            self.temp.unlink(missing_ok=True)
        if self.service is not None:
            with contextlib.suppress(OSError):
                self.service.unlink(missing_ok=True)
