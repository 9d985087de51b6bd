"""``dfget``: the command line of Go dfget 1.0.6, for a download and for ``dfget server``.

Parsing turns flags into a :class:`~dfget.config.DownloadConfig` or :class:`~dfget.config.ServerConfig`;
every invalid value is reported by flag name with exit code 2 before anything else happens. The exit
code of a download says what failed (see :class:`~dfget.errors.ExitCode`); messages go to stderr,
the one-line summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from . import __version__
from .config import DEFAULT_HOME, DownloadConfig, ServerConfig
from .core import DfgetRun, RunResult
from .errors import DfgetError, ExitCode
from .progress import Progress, summary
from .protocol import PROTOCOL_VERSION

M = TypeVar("M", bound=BaseModel)

#: Config field -> the flag it comes from, for error messages.
_FLAGS = {
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


def _validate(model: type[M], values: dict[str, Any], prog: str) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            detail = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing" and field == "output":
                detail = "required: the URL names no file, give -o/--output"
            print(f"{prog}: invalid {_FLAGS.get(field, field)}: {detail}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def parse_download(argv: Sequence[str]) -> DownloadConfig:
    args = vars(download_parser().parse_args(argv))
    args["filters"] = tuple(f for f in args.pop("filter").split("&") if f)
    args["headers"] = tuple(args["headers"])
    if args["nodes"] is None:
        del args["nodes"]
    return _validate(DownloadConfig, args, "dfget")


def parse_server(argv: Sequence[str]) -> ServerConfig:
    args = {key: value for key, value in vars(server_parser().parse_args(argv)).items() if value is not None}
    return _validate(ServerConfig, args, "dfget server")


def _setup_logging(home: Path, file_name: str, verbose: bool) -> None:
    """Logs go to ``{home}/logs/{file_name}``; ``--verbose`` adds debug details and a copy on stderr."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(home / "logs" / file_name)
    except OSError as exc:
        print(f"dfget: cannot write logs under {home}: {exc}", file=sys.stderr)
        handler = logging.NullHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _execute(run: DfgetRun) -> RunResult:
    """The run, cancelled by SIGTERM like by Ctrl-C, so that its temporary files are removed either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run.execute()


def run_download(config: DownloadConfig) -> int:
    progress = Progress.for_terminal(sys.stderr)
    logging.getLogger(__name__).info("dfget %s: %s -> %s", __version__, config.url, config.output)
    try:
        result = asyncio.run(_execute(DfgetRun(config, progress)))
    except DfgetError as exc:
        progress.clear()
        logging.getLogger(__name__).error("download failed: %s", exc)
        print(f"dfget: download failed: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.clear()
        print("dfget: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    progress.clear()
    line = summary(output=result.output, length=result.length, seconds=result.seconds, counts=result.counts,
                   supernode=result.supernode, piece_failures=result.piece_failures, migrations=result.migrations,
                   backsource=result.backsource)
    logging.getLogger(__name__).info("%s", line)
    print(line, flush=True)
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["server"]:
        server = parse_server(args[1:])
        _setup_logging(server.home, "dfserver.log", server.verbose)
        try:
            from .uploader import serve  # aiohttp.web: only the uploader pays for its import

            return asyncio.run(serve(server))
        except KeyboardInterrupt:
            return int(ExitCode.INTERRUPTED)
    config = parse_download(args)
    _setup_logging(config.home, "dfclient.log", config.verbose)
    return run_download(config)
