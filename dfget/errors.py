"""Every way a dfget run can fail, each with its exit code and back-source reason.

The exit code tells a script *what* failed (the supernodes, the source, the disk, the checksum) and
the back-source reason is what the supernode's metrics record; keeping both on the exception means
the place that detects a failure decides both, once.
"""

from __future__ import annotations

from .constants import ExitCode as ExitCode
from .protocol import BackSourceReason


class DfgetError(Exception):
    """A failed download step; ``reason`` is the back-source reason it implies."""

    exit_code: ExitCode = ExitCode.FAILED
    reason: BackSourceReason = BackSourceReason.DOWNLOAD_ERROR
    #: Whether dfget may fall back to the source after this failure (without --notbs).
    backsource_allowed: bool = True


class RegisterError(DfgetError):
    """No supernode accepted the task."""

    exit_code = ExitCode.SUPERNODE_FAILED
    reason = BackSourceReason.REGISTER_FAIL

    def __init__(self, message: str, *, backsource_allowed: bool = True) -> None:
        super().__init__(message)
        self.backsource_allowed = backsource_allowed


class P2PError(DfgetError):
    """The pull loop failed: migrations exhausted, inconsistent answers, a source error on the supernode."""

    exit_code = ExitCode.SUPERNODE_FAILED
    reason = BackSourceReason.DOWNLOAD_ERROR


class Md5Mismatch(DfgetError):
    exit_code = ExitCode.MD5_MISMATCH
    reason = BackSourceReason.MD5_MISMATCH


class LocalIOError(DfgetError):
    """Writing the output or the work home failed; with no space left, the source cannot help either."""

    exit_code = ExitCode.LOCAL_IO
    reason = BackSourceReason.WRITE_ERROR

    def __init__(self, message: str, *, no_space: bool = False) -> None:
        super().__init__(message)
        if no_space:
            self.reason = BackSourceReason.NO_SPACE
            self.backsource_allowed = False


class SourceError(DfgetError):
    exit_code = ExitCode.SOURCE_FAILED
    reason = BackSourceReason.SOURCE_ERROR


class DownloadTimeout(DfgetError):
    exit_code = ExitCode.TIMEOUT
    reason = BackSourceReason.DOWNLOAD_ERROR


class NotBackSourced(DfgetError):
    """A failure that could have been rescued by the source, with --notbs set: keeps the cause's exit code."""

    backsource_allowed = False

    def __init__(self, cause: DfgetError) -> None:
        super().__init__(f"{cause}; not downloading from the source because of --notbs")
        self.exit_code = cause.exit_code
        self.reason = cause.reason
