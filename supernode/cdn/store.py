"""The on-disk piece cache, laid out exactly as the Go supernode's (spec §5.3).

``{repo}/download/{id[:3]}/{id}`` holds the wrapped pieces back to back, ``{id}.meta`` the cache
metadata (compact JSON, Go's key order) and ``{id}.md5`` the sealed list of piece MD5s. Keeping the
layout means a cache directory can move between the Go and the Python supernode, and nginx-style
static serving of ``{repo}`` keeps working.

Every path is built from a validated task ID, so no client input can name a file outside the repo.
Metadata files are replaced atomically (write, fsync, rename): a crash never leaves a half-written
``.meta`` or ``.md5`` that a restarted supernode would trust.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dfwire.ids import is_task_id
from dfwire.pieces import md5_file_text, parse_md5_file


class CacheMeta(BaseModel):
    """``{id}.meta``; field order is Go's ``fileMetaData`` order, times are epoch milliseconds."""

    model_config = ConfigDict(populate_by_name=True)

    task_id: str = Field(alias="taskID")
    url: str
    piece_size: int = Field(alias="pieceSize")
    http_file_len: int = Field(alias="httpFileLen")
    biz_id: str = Field("", alias="bizId")
    access_time: int = Field(0, alias="accessTime")
    interval: int = 0
    file_length: int = Field(0, alias="fileLength")
    md5: str = ""
    real_md5: str = Field("", alias="realMd5")
    last_modified: int = Field(0, alias="lastModified")
    etag: str = Field("", alias="eTag")
    finish: bool = False
    success: bool = False


class CacheStore:
    """File operations on the cache; blocking, so callers run them in a thread when they are large."""

    def __init__(self, repo_dir: Path) -> None:
        self.root = repo_dir / "download"

    def data_path(self, task_id: str) -> Path:
        if not is_task_id(task_id):
            raise ValueError(f"not a task ID: {task_id!r}")
        return self.root / task_id[:3] / task_id

    def _sibling(self, task_id: str, suffix: str) -> Path:
        path = self.data_path(task_id)
        return path.with_name(path.name + suffix)

    def read_meta(self, task_id: str) -> CacheMeta | None:
        try:
            return CacheMeta.model_validate_json(self._sibling(task_id, ".meta").read_bytes())
        except (OSError, ValidationError):
            return None

    def write_meta(self, meta: CacheMeta) -> None:
        self._replace(self._sibling(meta.task_id, ".meta"),
                      meta.model_dump_json(by_alias=True).encode())

    def read_md5s(self, task_id: str) -> tuple[list[str], str] | None:
        """Piece MD5s and the raw MD5, or ``None`` when the file is missing or its seal is broken."""
        try:
            text = self._sibling(task_id, ".md5").read_text()
        except (OSError, UnicodeDecodeError):
            return None
        return parse_md5_file(text)

    def write_md5s(self, task_id: str, piece_md5s: list[str], real_md5: str) -> None:
        self._replace(self._sibling(task_id, ".md5"), md5_file_text(piece_md5s, real_md5).encode())

    def open_fresh(self, task_id: str) -> int:
        """A new, empty data file. The old one is unlinked first, so readers holding it keep their bytes."""
        path = self.data_path(task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for suffix in (".md5",):
            with contextlib.suppress(FileNotFoundError):
                self._sibling(task_id, suffix).unlink()
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def open_existing(self, task_id: str) -> int:
        return os.open(self.data_path(task_id), os.O_RDWR)

    def data_size(self, task_id: str) -> int:
        try:
            return self.data_path(task_id).stat().st_size
        except OSError:
            return -1

    def delete(self, task_id: str) -> None:
        """Remove the data, ``.meta`` and ``.md5`` files (and temp files), then the bucket dir if it is empty."""
        path = self.data_path(task_id)
        suffixes = (".meta", ".md5", ".meta.tmp", ".md5.tmp")  # a crash may leave a ``_replace`` temp file
        for victim in (path, *(self._sibling(task_id, suffix) for suffix in suffixes)):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def task_ids(self) -> Iterator[str]:
        """Task IDs that have a data or meta file on disk."""
        if not self.root.is_dir():
            return
        for bucket in self.root.iterdir():
            if not bucket.is_dir():
                continue
            seen: set[str] = set()
            for entry in bucket.iterdir():
                name = entry.name.removesuffix(".meta").removesuffix(".md5")
                if is_task_id(name) and name[:3] == bucket.name and name not in seen:
                    seen.add(name)
                    yield name

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def _replace(self, path: Path, payload: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
