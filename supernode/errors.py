"""One exception hierarchy for the whole supernode.

Managers raise :class:`DfError` with one of the Dragonfly v1 error kinds (``DfCode``); the API layer
is the only place that turns a kind into a wire answer: an HTTP status plus ``{"code","message"}`` for
the REST API, or a ResultInfo code inside an HTTP 200 for the legacy dfget endpoints. Keeping the
kind separate from the wire form lets the same manager call serve both APIs.
"""

from __future__ import annotations

import enum
import json


class DfCode(enum.IntEnum):
    """Error kinds, numbered as in Dragonfly v1 (``pkg/errortypes``) so messages read the same."""

    DATA_NOT_FOUND = 0
    EMPTY_VALUE = 1
    INVALID_VALUE = 2
    NOT_INITIALIZED = 3
    CONVERT_FAILED = 4
    RANGE_NOT_SATISFIABLE = 5
    SYSTEM_ERROR = 6
    CDN_FAIL = 7
    CDN_WAIT = 8
    PEER_WAIT = 9
    UNKNOWN_ERROR = 10
    PEER_CONTINUE = 11
    URL_NOT_REACHABLE = 12
    TASK_ID_DUPLICATE = 13
    AUTHENTICATION_REQUIRED = 14
    SOURCE_NOT_ALLOWED = 15
    """EXTENSION: the source host is not in ``source_allow`` (no Go counterpart; answered with HTTP 403)."""


_DEFAULT_MSG = {
    DfCode.DATA_NOT_FOUND: "data not found",
    DfCode.EMPTY_VALUE: "empty value",
    DfCode.INVALID_VALUE: "invalid value",
    DfCode.NOT_INITIALIZED: "not initialized",
    DfCode.CONVERT_FAILED: "convert failed",
    DfCode.RANGE_NOT_SATISFIABLE: "range not satisfiable",
    DfCode.SYSTEM_ERROR: "system error",
    DfCode.CDN_FAIL: "cdn status is fail",
    DfCode.CDN_WAIT: "cdn status is wait",
    DfCode.PEER_WAIT: "peer should wait",
    DfCode.UNKNOWN_ERROR: "unknown error",
    DfCode.PEER_CONTINUE: "peer continue",
    DfCode.URL_NOT_REACHABLE: "url not reachable",
    DfCode.TASK_ID_DUPLICATE: "taskId conflict",
    DfCode.AUTHENTICATION_REQUIRED: "authentication required",
    DfCode.SOURCE_NOT_ALLOWED: "source not allowed",
}


class DfError(Exception):
    """A failure of a known kind, with the context that explains it.

    ``str()`` renders like the Go supernode (``context: {"Code":N,"Msg":"..."}``) because dfget
    logs these texts and operators grep for them.
    """

    def __init__(self, code: DfCode, context: str = "", msg: str | None = None) -> None:
        self.code = code
        self.context = context
        self.msg = msg if msg is not None else _DEFAULT_MSG[code]
        super().__init__(str(self))

    def __str__(self) -> str:
        tail = json.dumps({"Code": int(self.code), "Msg": self.msg}, separators=(",", ":"))
        return f"{self.context}: {tail}" if self.context else tail


class SourceNotFound(DfError):
    """The origin says the content does not exist (404/410): worth remembering for a while (§5.1)."""

    def __init__(self, context: str, msg: str) -> None:
        super().__init__(DfCode.URL_NOT_REACHABLE, context, msg)


def not_found(context: str) -> DfError:
    return DfError(DfCode.DATA_NOT_FOUND, context)


def invalid(context: str) -> DfError:
    return DfError(DfCode.INVALID_VALUE, context)
