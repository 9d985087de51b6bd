"""``dfget proxy``: the command line of the node's registry mirror, and its process lifetime.

It runs until SIGTERM/SIGINT (the DaemonSet's container), logging to stderr and to
``{home}/logs/dfmirror.log``. Every invalid option is reported by flag name with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from ..constants import DEFAULT_HOME, ExitCode
from ..logfiles import FORMAT

log = logging.getLogger(__name__)

MIRROR_LOG = "dfmirror.log"
#: Config field -> the flag it comes from, for error messages.
FLAGS = {"listen": "--listen", "port": "--listen", "registries": "--registry", "nodes": "--node", "ip": "--ip",
         "home": "--home", "stall_timeout": "--stall-timeout", "local_limit": "--locallimit",
         "cache_size": "--cache-size", "alive_time": "--alivetime", "expire_time": "--expiretime",
         "metrics_port": "--metrics-listen"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfget proxy", description="Registry mirror for containerd (hosts.toml): blobs through the "
                "Dragonfly swarm, manifests from the registry.")
    p.add_argument("--listen", default="127.0.0.1:65001", metavar="IP:PORT", help="where containerd reaches the "
                   "mirror (default 127.0.0.1:65001)")
    p.add_argument("--registry", action="append", default=[], metavar="NAME[=URL]", required=True,
                   help="a registry to mirror, named as in hosts.toml (host[:port]); URL defaults to https://NAME. "
                        "Repeat for several; the first one serves requests without ?ns=")
    p.add_argument("--registry-ca", action="append", default=[], metavar="NAME=FILE",
                   help="PEM CA bundle of an https registry with a private CA")
    p.add_argument("--auth-file", metavar="FILE", help="Docker config.json with the node's registry credentials "
                   "(used when the runtime sends none)")
    p.add_argument("--node", dest="nodes", action="append", default=[], metavar="HOST[:PORT][=WEIGHT]",
                   help="a supernode (repeat or comma-separate); none: every blob comes from the registry")
    p.add_argument("--ip", default="", help="IPv4 address peers reach this node's uploader at")
    p.add_argument("--home", default=str(DEFAULT_HOME), help="dfget work home, shared with the node's dfget daemon")
    p.add_argument("--stall-timeout", default="30s", metavar="DURATION",
                   help="fetch from the registry when the swarm sends nothing for this long (default 30s)")
    p.add_argument("--locallimit", dest="local_limit", default="0", metavar="RATE",
                   help="download rate limit per blob through the swarm, e.g. 100M (default 0: none)")
    p.add_argument("--cache-size", dest="cache_size", default="20G", metavar="SIZE",
                   help="keep the node's blobs up to this size, least recently used out first (default 20G)")
    p.add_argument("--alivetime", dest="alive_time", default="10m", metavar="DURATION",
                   help="the node's uploader exits after this long without traffic (default 10m)")
    p.add_argument("--expiretime", dest="expire_time", default="10m", metavar="DURATION",
                   help="the uploader stops serving a blob unused for this long (default 10m)")
    p.add_argument("--metrics-listen", default="", metavar="IP:PORT",
                   help="also serve /metrics and /healthz here (for Prometheus, when --listen is loopback)")
    p.add_argument("--write-hosts-toml", metavar="CERTS_DIR", help="write containerd's CERTS_DIR/<registry>/hosts.toml "
                   "for every --registry, pointing at this mirror, and exit (the DaemonSet's init container)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def config_values(argv: Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """The option values and ``--write-hosts-toml``, or usage errors (exit 2)."""
    from .config import docker_auths, parse_registry

    args = parser().parse_args(argv)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        _fail("--listen", f"{args.listen!r} is not IP:PORT")
    metrics_host, metrics_port = "", 0
    if args.metrics_listen:
        metrics_host, sep, port_text = args.metrics_listen.rpartition(":")
        if not sep or not port_text.isdigit():
            _fail("--metrics-listen", f"{args.metrics_listen!r} is not IP:PORT")
        metrics_port = int(port_text)
    registries: list[dict[str, Any]] = []
    for spec in args.registry:
        try:
            registries.append(parse_registry(spec))
        except ValueError as exc:
            _fail("--registry", str(exc))
    by_name = {r["name"]: r for r in registries}
    for spec in args.registry_ca:
        name, _, path = spec.partition("=")
        if name not in by_name or not path:
            _fail("--registry-ca", f"{spec!r}: want NAME=FILE with NAME one of the --registry names")
        if not Path(path).is_file():
            _fail("--registry-ca", f"{path} is not a file")
        by_name[name]["ca_file"] = Path(path)
    if args.auth_file:
        try:
            auths = docker_auths(Path(args.auth_file))
        except ValueError as exc:
            _fail("--auth-file", str(exc))
        for name, value in auths.items():
            if name in by_name:
                by_name[name]["authorization"] = value
    return {"listen": host, "port": int(port), "registries": registries, "nodes": args.nodes or (),
            "ip": args.ip, "home": args.home, "stall_timeout": args.stall_timeout, "local_limit": args.local_limit,
            "cache_size": args.cache_size, "alive_time": args.alive_time, "metrics_listen": metrics_host,
            "metrics_port": metrics_port,
            "expire_time": args.expire_time, "verbose": args.verbose}, args.write_hosts_toml


def _fail(flag: str, message: str) -> NoReturn:
    print(f"dfget proxy: invalid {flag}: {message}", file=sys.stderr)
    raise SystemExit(ExitCode.USAGE)


def main(argv: Sequence[str]) -> int:
    from .config import MirrorConfig

    values, certs_dir = config_values(argv)
    try:
        config = MirrorConfig.model_validate(values)
    except ValidationError as exc:
        for problem in exc.errors(include_url=False):
            where = FLAGS.get(str(problem["loc"][0]), str(problem["loc"][0])) if problem["loc"] else "options"
            print(f"dfget proxy: invalid {where}: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return int(ExitCode.USAGE)
    if certs_dir is not None:
        return _write_hosts(config, Path(certs_dir))
    _setup_logging(config.home, config.verbose)
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


def _write_hosts(config: Any, certs_dir: Path) -> int:
    from .hosts import mirror_url, write_hosts

    try:
        for path in write_hosts(certs_dir, config, mirror_url(config)):
            print(f"dfget proxy: wrote {path}")
    except OSError as exc:
        print(f"dfget proxy: cannot write containerd's hosts.toml under {certs_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def _setup_logging(home: Path, verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(home / "logs" / MIRROR_LOG))
    except OSError as exc:
        print(f"dfget proxy: cannot write logs under {home}: {exc}", file=sys.stderr)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _serve(config: Any) -> int:
    from aiohttp import web

    from .server import METRICS, build_app, build_metrics_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    runners = [runner]
    try:
        try:
            await web.TCPSite(runner, config.listen, config.port, shutdown_timeout=2.0).start()
            if config.metrics_port:
                side = web.AppRunner(build_metrics_app(app[METRICS]), access_log=None, handle_signals=False)
                await side.setup()
                runners.append(side)
                await web.TCPSite(side, config.metrics_listen or None, config.metrics_port).start()
        except OSError as exc:
            print(f"dfget proxy: cannot listen: {exc}", file=sys.stderr)
            return 1
        log.info("registry mirror on %s:%d for %s, supernodes %s", config.listen, config.port,
                 ", ".join(f"{r.name}={r.url}" for r in config.registries),
                 ", ".join(str(n) for n in config.nodes) or "none (registry only)")
        await stop.wait()
    finally:
        for each in reversed(runners):
            await each.cleanup()
    return 0
