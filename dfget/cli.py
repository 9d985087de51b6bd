"""``dfget``: the command line of Go dfget 1.0.6, for a download and for ``dfget server``.

``dfget proxy`` (the node's registry mirror for containerd, :mod:`dfget.mirror`) is dispatched from here too.

This module is the thin front end: it imports the standard library and stdlib-only dfget modules,
so that ``--help``, ``--version``, usage errors and a download handed to the node's daemon start in
milliseconds. A download goes to the daemon (:mod:`dfget.delegation`) when one listens on the
home's control socket; otherwise, with ``--verbose``, or when the daemon goes away mid-run, it runs
in this process (:mod:`dfget.inprocess`), which imports the whole stack and starts the daemon.

Either way every invalid value is reported by flag name with exit code 2 before anything else
happens. The exit code of a download says what failed (see :class:`~dfget.constants.ExitCode`);
messages go to stderr, the one-line summary to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .args import download_args, server_args
from .constants import ExitCode
from .delegation import delegate

if TYPE_CHECKING:
    from .config import DownloadConfig, ServerConfig

T = TypeVar("T")


def _valid(validate: Callable[[Mapping[str, Any]], T], raw: Mapping[str, Any]) -> T:
    """``validate(raw)``, or the problems by flag name on stderr and exit code 2."""
    from .options import InvalidOptions  # pydantic: never on the way to the daemon

    try:
        return validate(raw)
    except InvalidOptions as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def parse_download(argv: Sequence[str]) -> DownloadConfig:
    from .options import download_config

    return _valid(download_config, download_args(argv))


def parse_server(argv: Sequence[str]) -> ServerConfig:
    from .options import server_config

    return _valid(server_config, server_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["server"]:
        server = parse_server(args[1:])
        from .daemon import run_server  # loads the whole download stack, for the runs handed over to it

        return run_server(server)
    if args[:1] == ["proxy"]:
        from .mirror.cli import main as run_proxy  # the registry mirror (dfdaemon's role)

        return run_proxy(args[1:])
    options = download_args(args)
    if not options["verbose"]:  # --verbose shows this run's debug log on this process's stderr
        code = delegate(options)
        if code is not None:
            return code
    from .inprocess import run_download
    from .options import download_config

    return run_download(_valid(download_config, options))
