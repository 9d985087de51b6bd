"""``dfget server``, the node's daemon: the uploader on TCP and the control socket for dfget processes.

One long-lived process per work home, started by the first dfget run on the node or by a DaemonSet.
It serves pieces to peers (:mod:`dfget.uploader`) and runs downloads that dfget processes of this
node hand over to it (:mod:`dfget.control`), until it is idle for ``--alivetime`` or is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from .config import ServerConfig
from .constants import ExitCode
from .control import ControlServer
from .logfiles import setup_daemon_logging
from .protocol import UPLOADER_PORT_LINE
from .supernode_api import SupernodeApi
from .uploader import Uploader, generated_ports, read_meta, write_meta

log = logging.getLogger(__name__)

GC_INTERVAL = 15.0


async def _bind(runner: web.AppRunner, ip: str, ports: list[int]) -> int:
    last: OSError | None = None
    for port in ports:
        site = web.TCPSite(runner, ip or "0.0.0.0", port, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            last = exc
            log.info("port %d: %s", port, exc)
            continue
        return port
    raise OSError(f"no free port among {ports[0]}..{ports[-1]}: {last}")


async def serve(config: ServerConfig) -> int:
    """Run the daemon until it is idle for ``alive_time`` or gets SIGTERM/SIGINT/SIGHUP; exit code."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as session:
        uploader = Uploader(config, SupernodeApi(session))
        runner = web.AppRunner(uploader.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        control = ControlServer(uploader, config.home)
        try:
            try:
                uploader.port = await _bind(runner, config.ip, [config.port] if config.port else
                                            generated_ports(time.time()))
            except OSError as exc:
                print(f"dfget server: cannot listen on {config.ip or '*'}: {exc}", file=sys.stderr, flush=True)
                return 1
            write_meta(config.meta_path, uploader.port)
            log.info("uploader on %s:%d, data %s, alive %gs, expire %gs, total limit %d B/s", config.ip or "*",
                     uploader.port, uploader.data_dir, config.alive_time, config.expire_time, config.total_limit)
            await control.start()  # before the port line: the dfget run that started us may hand over the next
            print(f"{UPLOADER_PORT_LINE} {uploader.port}", flush=True)
            _detach_output()
            await _run_until_idle(uploader, stop)
        finally:
            await control.stop()  # first: its runs use the uploader
            await runner.cleanup()
            await uploader.shut_down()
            if read_meta(config.meta_path)[0] == uploader.port:
                write_meta(config.meta_path, 0)
            log.info("uploader stopped")
    return 0


def _detach_output() -> None:
    """The parent dfget stops reading our stdout and stderr once it has the port: from now on the log
    file is the only output, and a stray write must not hit a closed pipe."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)


async def _run_until_idle(uploader: Uploader, stop: asyncio.Event) -> None:
    config = uploader.config
    tick = max(0.05, min(1.0, config.alive_time / 4))
    gc_every = max(0.5, min(GC_INTERVAL, config.expire_time / 2))
    next_gc = time.monotonic() + gc_every
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        if uploader.idle():
            log.info("no traffic for %gs: stopping", config.alive_time)
            return
        if time.monotonic() >= next_gc:
            next_gc = time.monotonic() + gc_every
            await uploader.collect_garbage()


def run_server(config: ServerConfig) -> int:
    setup_daemon_logging(config.home, config.verbose)
    try:
        import uvloop  # the ``perf`` extra: the daemon moves every byte of the node's downloads and uploads
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(serve(config))
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
