"""A network namespace made by the test: the "cluster network" the image's containers run in.

The chart's containers listen on fixed ports (8002, 8001, 8080, 15001) on every address; inside a namespace of
their own they can, without touching the machine's network or colliding with anything else on it. The
namespace has only a loopback interface, with the addresses the test gives it (pod and node IPs), so all
traffic stays inside it. The test process reaches in with sockets created in the namespace (``setns(2)`` on
the creating thread only, then back): a socket keeps the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_setns_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNamespace:
    """A network namespace held open by a ``sleep`` process (``unshare --net``); gone when it is stopped."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self._holder: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        """The namespace's ``/proc/PID/ns/net``, for the OCI runtime spec."""
        assert self._holder is not None, "not started"
        return f"/proc/{self._holder.pid}/ns/net"

    def start(self) -> None:
        script = "ip link set lo up" + "".join(f" && ip addr add {a}/32 dev lo" for a in self.addresses)
        # The holder brings loopback up, adds the addresses, then only waits: it is the namespace's lifetime.
        self._holder = subprocess.Popen(["unshare", "--net", "sh", "-c", f"{script} && echo ready && exec sleep 3600"],
                                        stdout=subprocess.PIPE, start_new_session=True)
        assert self._holder.stdout is not None
        line = self._holder.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"could not set up the network namespace ({script!r})")

    def stop(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            os.killpg(self._holder.pid, signal.SIGKILL)
            self._holder.wait(10)
        self._holder = None

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """Switch the calling thread into the namespace and back (only sockets are created meanwhile)."""
        with _setns_lock, open("/proc/thread-self/ns/net") as home, open(self.path) as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def new_socket(self) -> socket.socket:
        """A TCP socket that lives in the namespace, wherever it is used from."""
        with self._inside():
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def listen(self, host: str, port: int = 0) -> socket.socket:
        sock = self.new_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def http_get(self, host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        """``GET http://host:port/path`` from inside the namespace, as the kubelet's httpGet probe would."""
        connection = _NamespacedConnection(self, host, port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def probe(self, host: str, port: int, path: str, within: float,
              alive: Callable[[], bool] = lambda: True) -> tuple[int, bytes]:
        """Poll an httpGet probe until it answers 2xx/3xx (as the kubelet counts success), while ``alive()``."""
        deadline = time.monotonic() + within
        last: tuple[int, bytes] | str = "no answer"
        while time.monotonic() < deadline and alive():
            try:
                last = self.http_get(host, port, path)
                if 200 <= last[0] < 400:
                    return last
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.3)
        why = f"within {within:g}s" if alive() else "before the container exited"
        raise AssertionError(f"GET http://{host}:{port}{path} did not succeed {why}: {last!r}")


class _NamespacedConnection(http.client.HTTPConnection):
    def __init__(self, ns: NetNamespace, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        sock = self._ns.new_socket()
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock

