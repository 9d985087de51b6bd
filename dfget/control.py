"""The daemon's control socket: a ``dfget`` process hands its download to ``dfget server`` instead of running it.

A dfget process that downloads itself first spends more CPU importing aiohttp and pydantic than a
small download takes; the node's daemon has them loaded (this module imports the whole download
stack when the daemon starts, so the first handed-over run is as quick as the next). It listens on
``{home}/run/dfget.sock`` (see :mod:`dfget.unixsock`: only its user and root may connect) and never
on TCP: the uploader's TCP port is open to every peer, and an endpoint there that starts downloads
would let anyone on the network make the node write files.

``POST /dfget`` takes the options as the command line parsed them, with the caller's cwd, pid and
terminal. The daemon validates them as the command line does, runs the same :class:`DfgetRun` in its
loop and streams back what the caller prints, as newline-delimited JSON: ``{"stderr": text}``,
``{"stdout": text}``, and last ``{"exit": code}``. A stream that ends without ``exit`` means the run
did not end here (the daemon stopped). The caller hanging up cancels the run, which removes its
files as an interrupted dfget does. A request that is not one gets 400 ``{"code", "message"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import DownloadConfig
from .constants import ExitCode
from .core import DfgetRun
from .logfiles import CLIENT_LOG, mark_delegated_run
from .options import InvalidOptions, download_config
from .progress import Progress
from .protocol import make_sign
from .report import run_and_report
from .unixsock import Listener, control_socket, listen
from .uploader import Uploader

log = logging.getLogger(__name__)

#: How long a stopping daemon gives a handler to end once its run was cancelled.
SHUTDOWN_TIMEOUT = 2.0
CANCEL_AGAIN_AFTER = 0.2
_CLEAR_LINE = "\r\033[K"  # a progress bar may be on the caller's line

Event = dict[str, str | int]


class DownloadArgs(BaseModel):
    """The download flags as :func:`dfget.args.download_args` returns them: still the strings typed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str
    output: str | None
    nodes: list[str] | None
    md5: str
    identifier: str
    filter: str
    headers: list[str]
    local_limit: str
    min_rate: str
    notbs: bool
    pattern: str
    call_system: str
    timeout: str
    ip: str
    port: int
    home: str
    total_limit: str
    alive_time: str
    expire_time: str
    verbose: bool


class DelegateRequest(BaseModel):
    """The body of ``POST /dfget``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    options: DownloadArgs
    cwd: str  # relative paths of the options are relative to it
    pid: int = Field(gt=0)  # signs the run (its cid and task file name), as if the caller ran it
    stderr_tty: bool  # whether to draw a progress bar
    columns: int = Field(ge=1, le=100_000)  # the caller's terminal width
    #: (device, inode) of the caller's cwd and output directory: the daemon must see the same directories.
    seen: dict[str, tuple[int, int]]

    @field_validator("cwd")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return value


def caller_config(request: DelegateRequest) -> tuple[DownloadConfig, str]:
    """The run's config as the caller's own process would have made it, and its output as the caller named it.

    Relative ``--home`` and ``--output`` (and the output name taken from the URL) are the caller's
    cwd's, not the daemon's; the summary line shows the output as the caller's process would.
    """
    raw = request.options.model_dump()
    raw["home"] = os.path.join(request.cwd, os.path.expanduser(raw["home"]))
    config = download_config(raw)
    return config.model_copy(update={"output": Path(request.cwd) / config.output}), str(config.output)


def _peer_uid(request: web.Request) -> int | None:
    """The connecting process's user (``SO_PEERCRED``); None when the transport cannot tell."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None:
        return None
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (AttributeError, OSError, struct.error):
        return None
    return int(uid)


def _refusal(request: DelegateRequest, uid: int | None) -> str:
    """Why this daemon must not run the caller's download ("" when it may).

    It writes the output with its own user and in its own view of the file system, so both must be
    the caller's: root may reach the socket of another user's daemon, and a daemon in a container
    shares the home with the host, not the caller's directories.
    """
    if uid is None or uid != os.geteuid():
        return f"the daemon runs as user {os.geteuid()}, the caller as {uid}"
    for path, identity in request.seen.items():
        try:
            st = os.stat(path)
        except OSError as exc:
            return f"the daemon cannot see {path}: {exc.strerror}"
        if (st.st_dev, st.st_ino) != identity:
            return f"{path} is another directory for the daemon"
    return "" if request.cwd in request.seen else "the caller did not say which directory its cwd is"


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
                     for error in exc.errors(include_url=False))


async def cancel(run: asyncio.Task[None]) -> None:
    """Cancel ``run`` and wait for its end, cancelling again while it goes on.

    Once is not always enough on Python 3.11: ``asyncio.wait_for`` returns the awaited result instead
    of raising when a cancellation arrives as that result does (fixed in 3.12), and the run goes on.
    """
    while not run.done():
        run.cancel()
        await asyncio.wait({run}, timeout=CANCEL_AGAIN_AFTER)


class _Channel:
    """The run's stdout or stderr: each write becomes an event for the caller."""

    def __init__(self, queue: asyncio.Queue[Event | None], name: str) -> None:
        self._queue = queue
        self._name = name

    def write(self, text: str, /) -> int:
        if text:
            self._queue.put_nowait({self._name: text})
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered: every write is an event already."""


class _Events:
    """What a handed-over run prints, queued for the caller, then its exit code, then the end (None)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.stdout = _Channel(self.queue, "stdout")
        self.stderr = _Channel(self.queue, "stderr")

    def exit(self, code: int) -> None:
        self.queue.put_nowait({"exit": int(code)})

    def end(self) -> None:
        self.queue.put_nowait(None)


class ControlServer:
    """``POST /dfget`` on ``{home}/run/dfget.sock``; the runs share the daemon's loop with its uploader."""

    def __init__(self, uploader: Uploader, home: Path) -> None:
        self.uploader = uploader
        self.home = home
        self.path = control_socket(home)
        self._runs: set[asyncio.Task[None]] = set()
        self._listener: Listener | None = None
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/dfget", self.dfget)
        return app

    async def start(self) -> None:
        """Listen on the control socket; without it (another daemon holds it, no permission) the dfget
        processes of this node run their downloads themselves, as before."""
        try:
            listener = await asyncio.to_thread(listen, self.path)
        except OSError as exc:
            log.warning("no control socket at %s (%s): dfget runs on this node download in their own process",
                        self.path, exc)
            return
        # Handler cancellation: a caller that hangs up (Ctrl-C, kill) cancels its handler, and so its run.
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False, handler_cancellation=True,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        await web.SockSite(runner, listener.sock).start()
        self._listener, self._runner = listener, runner
        log.info("control socket at %s", self.path)

    async def stop(self) -> None:
        """Cancel the runs in progress (their callers then run them themselves), stop listening, remove the socket."""
        await asyncio.gather(*(cancel(run) for run in self._runs))
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            self._listener.close()

    async def dfget(self, request: web.Request) -> web.StreamResponse:
        try:
            body = DelegateRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"code": 400, "message": _describe(exc)}, status=400)
        refusal = await asyncio.to_thread(_refusal, body, _peer_uid(request))
        if refusal:
            # The caller runs the download itself: that is always correct, a run here would not be.
            log.info("not running the download of dfget process %d: %s", body.pid, refusal)
            return web.json_response({"code": 409, "message": refusal}, status=409)
        events = _Events()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        run = asyncio.create_task(self._run(body, events))
        self._runs.add(run)
        self.uploader.delegated_run_started()
        run.add_done_callback(self._ended)
        try:
            while (event := await events.queue.get()) is not None:
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionError:
            log.info("the dfget process %d hung up: cancelling its run", body.pid)
        finally:
            await cancel(run)  # a no-op once the run has ended; else its caller is gone, or the daemon stops
        return response

    def _ended(self, run: asyncio.Task[None]) -> None:
        self._runs.discard(run)
        self.uploader.delegated_run_ended()

    async def _run(self, request: DelegateRequest, events: _Events) -> None:
        mark_delegated_run()  # this task's records go to dfclient.log
        try:
            events.exit(await self._download(request, events))
        except asyncio.CancelledError:
            log.info("download cancelled: its dfget process hung up, or the daemon stops")
            raise
        except Exception as exc:
            # A bug, not a download failure: the caller still gets an answer, and the daemon keeps serving.
            log.exception("the download failed unexpectedly")
            events.stderr.write(f"{_CLEAR_LINE if request.stderr_tty else ''}dfget: download failed: internal "
                                f"error: {exc!r} (see {self.home / 'logs' / CLIENT_LOG})\n")
            events.exit(ExitCode.FAILED)
        finally:
            events.end()

    async def _download(self, request: DelegateRequest, events: _Events) -> int:
        try:
            config, shown = caller_config(request)
        except InvalidOptions as exc:
            events.stderr.write("".join(f"{line}\n" for line in exc.lines))
            return ExitCode.USAGE
        log.info("download handed over by dfget process %d (cwd %s)", request.pid, request.cwd)
        progress = Progress(stream=events.stderr, enabled=request.stderr_tty, columns=request.columns)
        run = DfgetRun(config, progress, make_sign(pid=request.pid))
        return await run_and_report(run, events.stdout, events.stderr, shown)
