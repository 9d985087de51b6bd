"""Where dfget's log records go: ``{home}/logs/dfclient.log`` for downloads, ``dfserver.log`` for the daemon.

A download the node's daemon runs for a caller logs through the same loggers as the daemon itself
(``dfget.core``, ``aiohttp.client``, ...), so logger names cannot tell the two apart. A context
variable does: the delegated run's task sets it first thing, and every task and thread the run
starts inherits it (asyncio copies the context into each), so its records land in dfclient.log as
a run in its own process would write them, and the daemon's own records stay in dfserver.log.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from pathlib import Path

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
CLIENT_LOG = "dfclient.log"
SERVER_LOG = "dfserver.log"

_IN_DELEGATED_RUN: ContextVar[bool] = ContextVar("dfget_in_delegated_run", default=False)


def mark_delegated_run() -> None:
    """From here on, this task's records (and those of the tasks and threads it starts) are the run's."""
    _IN_DELEGATED_RUN.set(True)


class _Records(logging.Filter):
    """Lets through either only the records of delegated runs or only the others."""

    def __init__(self, *, delegated: bool) -> None:
        super().__init__()
        self.delegated = delegated

    def filter(self, record: logging.LogRecord) -> bool:
        return _IN_DELEGATED_RUN.get() is self.delegated


def _file_handler(home: Path, file_name: str) -> logging.Handler:
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(home / "logs" / file_name)
    except OSError as exc:
        print(f"dfget: cannot write logs under {home}: {exc}", file=sys.stderr)
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def setup_logging(home: Path, file_name: str, verbose: bool) -> None:
    """Logs go to ``{home}/logs/{file_name}``; ``--verbose`` adds debug details and a copy on stderr."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(_file_handler(home, file_name))
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(stream)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def setup_daemon_logging(home: Path, verbose: bool) -> None:
    """The daemon's records to dfserver.log (and stderr with ``--verbose``), delegated runs' to dfclient.log."""
    setup_logging(home, SERVER_LOG, verbose)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(_Records(delegated=False))
    runs = _file_handler(home, CLIENT_LOG)
    runs.addFilter(_Records(delegated=True))
    root.addHandler(runs)
