"""The daemon's control socket as a file: where it is, how a caller reaches it, how the daemon claims it.

``{home}/run/dfget.sock``, in a directory only its owner may enter (0700), itself 0600: only the
daemon's user and root can connect. Standard library only, since the thin command line uses it.

A socket address holds at most 107 bytes, and work homes (a test's temporary directory, a deep
``--home``) can be longer; a longer path is reached through ``/proc/self/fd`` and a descriptor of
its directory instead, which the kernel resolves like the path itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

_MAX_ADDRESS = 100  # bytes; sun_path holds 108 with its terminating NUL, the rest is margin


def control_socket(home: Path) -> Path:
    return home / "run" / "dfget.sock"


@contextlib.contextmanager
def address(path: Path) -> Iterator[str]:
    """A name of ``path`` short enough to bind or connect to, valid inside the ``with`` block."""
    if len(os.fsencode(path)) <= _MAX_ADDRESS:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the socket at ``path``; OSError (or TimeoutError) when nobody takes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with address(path) as name:
            sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return sock


def answers(path: Path, timeout: float = 1.0) -> bool:
    """Whether a live process listens at ``path``."""
    try:
        connect(path, timeout).close()
    except OSError:
        return False
    return True


class Listener:
    """A claimed control socket: the listening socket and the inode of its file.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, milliseconds the thin command
    line does not spend.
    """

    def __init__(self, path: Path, sock: socket.socket, inode: int) -> None:
        self.path = path
        self.sock = sock
        self.inode = inode

    def close(self) -> None:
        """Close the socket and remove its file, unless the file is no longer ours (another daemon took the name)."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(self.path).st_ino == self.inode:
                self.path.unlink()


def listen(path: Path, backlog: int = 64) -> Listener:
    """Claim ``path``: a listening socket for this user only. FileExistsError when a live daemon holds it.

    A socket file nobody answers on is what a killed daemon leaves behind: it is replaced. The mode
    is set before ``listen``, so there is no moment at which another user could connect.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if answers(path):
        raise FileExistsError(f"another daemon answers on {path}")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with address(path) as name:
            sock.bind(name)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        return Listener(path, sock, os.lstat(path).st_ino)
    except BaseException:
        sock.close()
        raise
