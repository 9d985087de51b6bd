"""``supernode``: the command line, with the Go supernode's flags so it is a drop-in replacement."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import ConfigFileError, Settings, load_settings
from .node import Supernode
from .security import TokenError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="supernode",
        description="Dragonfly SuperNode: P2P scheduler and CDN for dfget v1 clients. Every option can also "
                    "be set as SUPERNODE_<NAME> in the environment or in the YAML file given by --config.",
        argument_default=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help="YAML configuration file (default /etc/dragonfly/supernode.yml "
                                                "if it exists)")
    p.add_argument("--home-dir", dest="home_dir", help="home of the CDN cache (default /home/admin/supernode)")
    p.add_argument("--port", help="API port (default 8002)")
    p.add_argument("--download-port", dest="download_port", help="CDN piece port (default 8001)")
    p.add_argument("--advertise-ip", dest="advertise_ip",
                   help="IPv4 that peers use to reach this node (default: first non-loopback IPv4)")
    p.add_argument("--listen-host", dest="listen_host", help="address to bind (default 0.0.0.0)")
    p.add_argument("-D", "--debug", action="store_const", const=True, help="debug logging")
    p.add_argument("--up-limit", dest="up_limit", help="concurrent uploads per peer (default 5)")
    p.add_argument("--down-limit", dest="down_limit", help="concurrent downloads per client (default 4)")
    p.add_argument("--cdn-task-limit", dest="cdn_task_limit",
                   help="concurrent CDN pieces served per task, an upper bound: within it the scheduler weighs the "
                        "CDN against peers by measured throughput (default 64; Go: 4)")
    p.add_argument("--pull-hold", dest="pull_hold",
                   help="hold a pull that would answer 602 (wait) until a piece can be handed out, at most this "
                        "long, e.g. 500ms (default 1s; 0: answer at once, as Go)")
    p.add_argument("--max-bandwidth", dest="max_bandwidth", help="total bandwidth, e.g. 200M (default 200M)")
    p.add_argument("--system-bandwidth", dest="system_bandwidth",
                   help="bandwidth kept for the system, e.g. 20M (default 20M)")
    p.add_argument("--cdn-rate-limit", dest="cdn_rate_limit",
                   help="total rate of the CDN piece port, all connections together, e.g. 100M (bytes/s; "
                        "default 0: unlimited)")
    p.add_argument("--piece-size", dest="piece_size",
                   help="piece size of new tasks of files up to 200 MiB, 1M to 15M in whole MiB, e.g. 2M: smaller "
                        "pieces spread sooner through a swarm behind a slow piece port; larger files keep the "
                        "spec's growing size, never less (default 4M, as Go)")
    p.add_argument("--no-cdn-measure", dest="cdn_measure", action="store_const", const=False,
                   help="with no --cdn-rate-limit, take the piece port for unlimited as Go does, instead of "
                        "measuring its capacity from the pieces it sends")
    p.add_argument("--api-token-file", dest="api_token_file",
                   help="file with the bearer token that state-changing REST and preheat calls must send "
                        "(a mounted Secret; the token itself is SUPERNODE_API_TOKEN or api_token in the config "
                        "file, never a flag, because every user of the host can read a process's arguments)")
    p.add_argument("--tls-cert", dest="tls_cert", help="PEM certificate of the API port (with --tls-key: HTTPS)")
    p.add_argument("--tls-key", dest="tls_key", help="PEM private key of --tls-cert")
    p.add_argument("--source-allow", dest="source_allow", action="append",
                   help="host the supernode may fetch from: name, *.domain, IP or network (comma-separated or "
                        "repeated; default: every host)")
    p.add_argument("--version", action="version", version=f"supernode {__version__}")
    return p


async def _serve(settings: Settings) -> None:
    node = Supernode(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        await stop.wait()
        logging.getLogger(__name__).info("shutting down")
    finally:
        await node.stop()


def _run(settings: Settings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))


def main(argv: list[str] | None = None) -> int:
    args: dict[str, Any] = vars(_parser().parse_args(argv))
    config = args.pop("config", None)
    try:
        settings = load_settings(config, **args)
    except ConfigFileError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "configuration"
            print(f"supernode: invalid {where}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings.repo_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"supernode: cannot use home dir {settings.home_dir}: {exc}", file=sys.stderr)
        return 2
    try:
        _run(settings)
    except TokenError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"supernode: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
