"""What travels on the wire between dfget, its uploader and the supernode (spec §1.3, §2.2, §3).

The numbers and names here are the contract with unmodified Go dfget 1.0.6 peers and the Go or
Python supernode; everything else in the package refers to them by name, never by value.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from urllib.parse import quote

from dfwire.ids import SUPER_CID_PREFIX

from .constants import PROTOCOL_VERSION as PROTOCOL_VERSION

USER_AGENT = f"dfget/{PROTOCOL_VERSION}"

DEFAULT_SUPERNODE_PORT = 8002
PEER_FILE_PREFIX = "/peer/file/"
UPLOADER_PORT_LINE = "dfget uploader server port is"
#: The supernode validates register ports against this range (spec §1.4).
PEER_PORT_MIN, PEER_PORT_MAX = 15000, 65000

API_TIMEOUT = 5.0  # dfget's per-request timeout towards the supernode
UPLOADER_API_TIMEOUT = 2.0  # local uploader calls (Go uses 0.5 s; a freshly spawned Python uploader needs more)

FILE_NOT_EXIST = "FILE_NOT_EXIST"
FILE_MD5_NOT_MATCH = "FILE_MD5_NOT_MATCH"


class Code(IntEnum):
    """ResultInfo codes the supernode answers with (§1.3)."""

    SUCCESS = 200
    SYSTEM_ERROR = 500
    PARAM_ERROR = 501
    TARGET_NOT_FOUND = 502
    PEER_FINISH = 600
    PEER_CONTINUE = 601
    PEER_WAIT = 602
    PEER_LIMITED = 603
    SUPER_FAIL = 604
    UNKNOWN_ERROR = 605
    TASK_CONFLICT = 606
    URL_NOT_REACHABLE = 607
    NEED_AUTH = 608
    WAIT_AUTH = 609
    SOURCE_ERROR = 610
    PIECE_REPORTED = 611
    PEER_DOWN = 612


class PieceResult(IntEnum):
    """The ``result`` dfget reports for a piece in ``/peer/task``."""

    FAIL = 500
    SUC = 501
    INVALID = 502
    SEMISUC = 503


class TaskStatus(IntEnum):
    """The ``status`` of the dfget task in ``/peer/task``."""

    START = 700
    RUNNING = 701
    FINISH = 702


class BackSourceReason(IntEnum):
    """Why dfget went to the source; reported in ``/task/metrics`` (+1000 when it was not allowed to)."""

    NONE = 0
    REGISTER_FAIL = 1
    MD5_MISMATCH = 2
    DOWNLOAD_ERROR = 3
    NO_SPACE = 4
    INIT_ERROR = 5
    WRITE_ERROR = 6
    HOST_SYS_ERROR = 7
    NODE_EMPTY = 8
    SOURCE_ERROR = 10
    USER_SPECIFIED = 100


NOT_BACKSOURCED = 1000

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def make_sign(pid: int | None = None, now: float | None = None) -> str:
    """``{pid}-{unixSeconds with 3 decimals}``: what makes one dfget run's cid and task file name unique."""
    return f"{os.getpid() if pid is None else pid}-{time.time() if now is None else now:.3f}"


def make_cid(ip: str, sign: str) -> str:
    return f"{ip}-{sign}"


def task_file_name(output: Path, sign: str) -> str:
    """``{basename(output)}-{sign}``, with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``.

    The name becomes a URL path (``/peer/file/{name}``) that Go peers do not escape, and a file name
    in the uploader's data directory, so it is kept to characters that are safe in both.
    """
    return f"{_UNSAFE_NAME.sub('_', output.name) or 'file'}-{sign}"


def peer_path(name: str) -> str:
    return f"{PEER_FILE_PREFIX}{name}"


def is_supernode_cid(cid: str) -> bool:
    return cid.startswith(SUPER_CID_PREFIX)


def raw_query(pairs: Sequence[tuple[str, object]]) -> str:
    """dfget's query strings: keys in its order, ``key=`` for empty values, ``:`` and ``~`` left unescaped.

    Go dfget does not escape at all; the values it sends (cids, task IDs, ranges) only ever contain
    characters that need no escaping, so escaping the rest keeps those byte-identical and makes
    anything unusual safe instead of breaking the query.
    """
    return "&".join(f"{key}={quote(str(value), safe=':~')}" for key, value in pairs)
