"""Starting or reusing the node's uploader, and the calls a dfget run makes to it (spec §3.2, §3.7).

The first dfget on a node starts ``dfget server`` as a separate, detached process and reads its port
from the first line it prints; later runs find the port in the meta file and reuse the uploader if
``/check`` answers as it should. A lock file makes concurrent first runs on one node start a single
uploader instead of racing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import aiohttp
from yarl import URL

import dfget

from .config import DownloadConfig
from .protocol import PROTOCOL_VERSION, UPLOADER_API_TIMEOUT, UPLOADER_PORT_LINE, USER_AGENT, raw_query

log = logging.getLogger(__name__)

SPAWN_TIMEOUT = 15.0
#: The directory holding the ``dfget`` package, put on the child's PYTHONPATH so that
#: ``python -m dfget server`` works from any working directory, installed or not.
_PACKAGE_ROOT = str(Path(dfget.__file__).resolve().parents[1])


class UploaderError(Exception):
    """The uploader could not be started or does not answer: the run continues without sharing."""


class LocalUploader:
    """The uploader of this node as one dfget run sees it."""

    def __init__(self, session: aiohttp.ClientSession, ip: str, port: int) -> None:
        self._session = session
        self.ip = ip
        self.port = port

    async def _get(self, path: str, headers: dict[str, str] | None = None) -> str:
        url = URL(f"http://{self.ip}:{self.port}{path}", encoded=True)
        try:
            async with self._session.get(url, headers={"User-Agent": USER_AGENT, **(headers or {})},
                                         timeout=aiohttp.ClientTimeout(total=UPLOADER_API_TIMEOUT)) as resp:
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UploaderError(f"uploader {self.ip}:{self.port}: {exc.__class__.__name__}: {exc}") from exc
        if resp.status != 200:
            raise UploaderError(f"uploader {self.ip}:{self.port} answered {path.split('?')[0]} with HTTP "
                                f"{resp.status}: {text[:200]}")
        return text

    async def check(self, name: str, data_dir: Path, total_limit: int) -> None:
        """Register the task file; the answer proves it is a dfget uploader of our protocol version."""
        text = await self._get(f"/check/{name}", {"dataDir": str(data_dir), "totalLimit": str(total_limit)})
        if text.strip() != f"{name}@{PROTOCOL_VERSION}":
            raise UploaderError(f"{self.ip}:{self.port} is not a dfget {PROTOCOL_VERSION} uploader: {text[:200]!r}")

    async def finish(self, *, name: str, task_id: str, cid: str, super_node: str) -> None:
        await self._get("/client/finish?" + raw_query(
            [("taskFileName", name), ("taskID", task_id), ("cid", cid), ("superNode", super_node)]))


@contextlib.asynccontextmanager
async def _launch_lock(path: Path) -> AsyncIterator[None]:
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    handle = await asyncio.to_thread(open, path, "a")
    with handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def server_argv(config: DownloadConfig, ip: str) -> list[str]:
    argv = [sys.executable, "-m", "dfget", "server", "--ip", ip, "--home", str(config.home),
            "--meta", str(config.meta_path), "--data", str(config.data_dir),
            "--expiretime", f"{config.expire_time:g}s", "--alivetime", f"{config.alive_time:g}s",
            "--totallimit", str(config.total_limit)]
    if config.port:
        argv += ["--port", str(config.port)]
    if config.verbose:
        argv.append("--verbose")
    return argv


def _read_port_line(stdout: IO[bytes]) -> str:
    return stdout.readline(256).decode(errors="replace").strip()


async def _spawn(config: DownloadConfig, ip: str) -> int:
    """Start ``dfget server`` detached from this run and return the port it printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    argv = server_argv(config, ip)
    log.info("starting the uploader: %s", " ".join(argv))
    # Not asyncio's subprocess API: its transport kills a still-running child when the loop closes,
    # and the uploader must outlive this run.
    proc = await asyncio.to_thread(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True, close_fds=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(_read_port_line, proc.stdout), SPAWN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        raise UploaderError(f"the uploader printed no port within {SPAWN_TIMEOUT:g}s") from None
    finally:
        proc.stdout.close()
    if not line.startswith(UPLOADER_PORT_LINE) or not line.rpartition(" ")[2].isdigit():
        code = proc.poll()
        detail = (await asyncio.to_thread(proc.stderr.read, 2000)).decode(errors="replace").strip() \
            if code is not None else ""
        proc.stderr.close()
        raise UploaderError(f"the uploader did not start (exit {code}): {detail or line or 'no output'}")
    proc.stderr.close()
    return int(line.rpartition(" ")[2])


async def ensure_uploader(session: aiohttp.ClientSession, config: DownloadConfig, ip: str,
                          name: str) -> LocalUploader:
    """The node's uploader, with ``name`` registered: reused when it answers ``/check``, else started."""
    async with _launch_lock(config.meta_path.with_name("uploader.lock")):
        from .uploader import read_meta  # aiohttp.web: a download that reuses the uploader never needs it

        port, _ = read_meta(config.meta_path)
        if port:
            uploader = LocalUploader(session, ip, port)
            try:
                await uploader.check(name, config.data_dir, config.total_limit)
            except UploaderError as exc:
                log.info("not reusing the uploader on port %d: %s", port, exc)
            else:
                log.info("reusing the uploader on %s:%d", ip, port)
                return uploader
        uploader = LocalUploader(session, ip, await _spawn(config, ip))
        await uploader.check(name, config.data_dir, config.total_limit)
        log.info("started the uploader on %s:%d", ip, uploader.port)
        return uploader
