"""The command line's grammar: the flags of ``dfget`` and ``dfget server``, their defaults and help texts.

Standard library only: ``--help``, ``--version`` and usage errors are answered from here before
anything heavy is imported, and a download handed to the node's daemon sends the values exactly as
parsed here. They stay the strings the user typed (``20M``, ``3m``, ``host:port=2``);
:mod:`dfget.options` validates them, naming each problem by the flag in :data:`FLAGS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .constants import DEFAULT_HOME, PROTOCOL_VERSION, ExitCode

#: Config field -> the flag it comes from, for error messages.
FLAGS = {
    "url": "--url", "output": "--output", "nodes": "--node", "md5": "--md5", "identifier": "--identifier",
    "filters": "--filter", "headers": "--header", "local_limit": "--locallimit", "min_rate": "--minrate",
    "total_limit": "--totallimit", "pattern": "--pattern", "ip": "--ip", "port": "--port", "home": "--home",
    "call_system": "--callsystem", "timeout": "--timeout", "alive_time": "--alivetime",
    "expire_time": "--expiretime", "meta": "--meta", "data": "--data",
}


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code and message style for usage errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip", default="", help="IPv4 address this node is reached at by peers (default: the "
                                                  "address used to reach a supernode)")
    parser.add_argument("--port", type=int, default=0,
                        help="port of the node's uploader, 15000-65000 (default: chosen from the time)")
    parser.add_argument("--home", default=str(DEFAULT_HOME), help="work home: uploader data, meta and logs "
                                                                  "(default ~/.small-dragonfly)")
    parser.add_argument("--totallimit", dest="total_limit", default="0", metavar="RATE",
                        help="upload rate limit of the whole node, e.g. 50M (default 0: none)")
    parser.add_argument("--alivetime", dest="alive_time", default="5m", metavar="DURATION",
                        help="the uploader exits after this long without traffic (default 5m)")
    parser.add_argument("--expiretime", dest="expire_time", default="3m", metavar="DURATION",
                        help="the uploader deletes served files unused for this long (default 3m)")
    parser.add_argument("--verbose", action="store_true", help="debug logging, also on stderr")


def download_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dfget", description="Download a file through a Dragonfly P2P network (dfget v1 "
                     "protocol); 'dfget server --help' for the node's uploader.")
    parser.add_argument("-u", "--url", required=True, help="URL of the file (http or https)")
    parser.add_argument("-o", "--output", help="output file (default: the URL's file name in the current directory)")
    parser.add_argument("--node", dest="nodes", action="append", metavar="HOST[:PORT][=WEIGHT]",
                        help="a supernode; repeat or comma-separate for several (default 127.0.0.1:8002)")
    parser.add_argument("--md5", default="", help="expected MD5 of the file")
    parser.add_argument("-i", "--identifier", default="", help="identifies the file when the URL alone does not")
    parser.add_argument("-f", "--filter", default="", help="query parameters left out of the task URL, "
                                                           "'&'-separated, e.g. 'token&expires'")
    parser.add_argument("--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                        help="HTTP header for the source; repeatable")
    parser.add_argument("-s", "--locallimit", dest="local_limit", default="20M", metavar="RATE",
                        help="download rate limit of this download, e.g. 20M, 1G; 0 for none (default 20M)")
    parser.add_argument("-m", "--minrate", dest="min_rate", default="64K", metavar="RATE",
                        help="lowest acceptable rate: sizes the per-piece timeout (default 64K)")
    parser.add_argument("--notbs", action="store_true", help="never download from the source")
    parser.add_argument("-p", "--pattern", default="p2p", choices=("p2p", "cdn", "source"),
                        help="p2p: share with peers (default); cdn: only from the supernode; source: no supernode")
    parser.add_argument("--callsystem", dest="call_system", default="", metavar="NAME",
                        help="name of the calling system")
    parser.add_argument("--timeout", default="0", metavar="DURATION",
                        help="give up after this long, e.g. 90s or 5m (default: from the file length)")
    parser.add_argument("--version", action="version", version=f"dfget {__version__} (protocol {PROTOCOL_VERSION})")
    _common(parser)
    return parser


def server_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dfget server", description="The node's uploader: serves pieces of this node's "
                     "downloads to other peers. Normally started by the first dfget run on the node.")
    parser.add_argument("--meta", help="meta file recording the uploader's port (default HOME/meta/host.meta)")
    parser.add_argument("--data", help="directory of the served files (default HOME/data)")
    _common(parser)
    return parser


def download_args(argv: Sequence[str]) -> dict[str, Any]:
    """The download flags by destination name, as typed (argparse exits 2 on a usage error)."""
    return vars(download_parser().parse_args(argv))


def server_args(argv: Sequence[str]) -> dict[str, Any]:
    """The ``dfget server`` flags that were given, by destination name, as typed."""
    return {key: value for key, value in vars(server_parser().parse_args(argv)).items() if value is not None}
