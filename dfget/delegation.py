"""Handing a download to the node's daemon (``dfget server``) instead of running it in this process.

Importing aiohttp and pydantic and building the models costs a dfget process more CPU than a small
download does, and on a busy node many dfget processes start at once; the daemon has all of it
loaded already. This is the caller's side, standard library only: it sends the options as the
command line parsed them, with this process's cwd, pid and terminal, to ``POST /dfget`` on the
control socket (served by :mod:`dfget.control`) and prints what comes back, as the run in this
process would have printed it, then exits with the run's code.

The run happens in this process instead when nobody answers on the socket, when the daemon refuses
the request (a daemon of another dfget version, say), or when the daemon goes away before the run's
end; in that last case after saying so, since part of the run may already have been shown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

from .constants import ExitCode
from .unixsock import connect, control_socket

CONNECT_TIMEOUT = 1.0
#: For the answer's head: the daemon sends it once it has validated the options, before the download.
ANSWER_TIMEOUT = 5.0
_LINE_LIMIT = 64 * 1024
_CLEAR_LINE = "\r\033[K"


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the wait like Ctrl-C: the connection closes, which cancels the run in the daemon."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _identities(cwd: str, output: str | None) -> dict[str, list[int]]:
    """(device, inode) of the directories the run writes in, as this process sees them.

    The daemon compares them with what it sees: a daemon in a container (the chart's DaemonSet) shares
    the home with the host but not the rest of the file system, and must not write the output into
    its own copy of the path.
    """
    paths = [cwd]
    if output:
        parent = os.path.dirname(os.path.join(cwd, os.path.expanduser(output))) or cwd
        while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)  # the output's directory may not exist yet: its nearest ancestor
        paths.append(parent)
    seen = {}
    for path in paths:
        st = os.stat(path)
        seen[path] = [st.st_dev, st.st_ino]
    return seen


def _request(options: dict[str, Any]) -> bytes:
    """``POST /dfget``. HTTP/1.0, so the answer's body is the event stream up to the daemon's close,
    with no chunked framing to decode."""
    cwd = os.getcwd()
    body = json.dumps({
        "options": options, "cwd": cwd, "pid": os.getpid(), "stderr_tty": sys.stderr.isatty(),
        "columns": shutil.get_terminal_size((100, 20)).columns, "seen": _identities(cwd, options.get("output")),
    }).encode()
    head = (f"POST /dfget HTTP/1.0\r\nHost: dfget\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _status(stream: IO[bytes]) -> int:
    """The answer's status code, with its head read up to the body."""
    parts = stream.readline(_LINE_LIMIT).split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP answer: {b' '.join(parts)[:100]!r}")
    while (line := stream.readline(_LINE_LIMIT)) not in (b"\r\n", b"\n"):
        if not line:
            raise ValueError("the answer's head ends early")
    return int(parts[1])


class _Relay:
    """Prints the events of a run as they come; remembers whether a progress bar is left on the line."""

    def __init__(self) -> None:
        self.mid_line = False

    def events(self, stream: IO[bytes]) -> int | None:
        """The run's exit code, or None when the stream breaks off without one (the daemon went away).

        Only reading can end the relay early: a failure to print (our own stdout closed) is this
        process's, and ends it as it would end a run in this process.
        """
        while True:
            try:
                line = stream.readline()
                event = json.loads(line) if line else None
            except (OSError, ValueError):  # cut off mid-line, or not a daemon's events
                return None
            if not isinstance(event, dict):
                return None
            if isinstance(text := event.get("stderr"), str):
                sys.stderr.write(text)
                sys.stderr.flush()
                self.mid_line = not text.endswith("\n")
            if isinstance(text := event.get("stdout"), str):
                sys.stdout.write(text)
                sys.stdout.flush()
            if isinstance(code := event.get("exit"), int):
                return code

    def clear_line(self) -> None:
        if self.mid_line and sys.stderr.isatty():
            sys.stderr.write(_CLEAR_LINE)


def _delegate(options: dict[str, Any], relay: _Relay) -> int | None:
    home = Path(os.path.expanduser(options["home"])).absolute()  # as DownloadConfig makes it
    try:
        request = _request({**options, "home": str(home)})
        sock = connect(control_socket(home), CONNECT_TIMEOUT)
    except OSError:
        return None
    with sock, sock.makefile("rb") as stream:  # both: the descriptor closes with the last of them
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            sock.sendall(request)
            if _status(stream) != 200:
                return None
        except (OSError, ValueError):
            return None
        sock.settimeout(None)  # a download without a terminal sends nothing until its end
        code = relay.events(stream)
    if code is None:
        relay.clear_line()
        print("dfget: the node's daemon (dfget server) went away before the download ended; "
              "downloading in this process instead", file=sys.stderr, flush=True)
    return code


def delegate(options: dict[str, Any]) -> int | None:
    """The exit code of the run the daemon did for us; None when the run is to happen in this process.

    ``options`` is what :func:`dfget.args.download_args` returns.
    """
    relay = _Relay()
    try:
        with _sigterm_interrupts():
            return _delegate(options, relay)
    except KeyboardInterrupt:
        relay.clear_line()
        print("dfget: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
