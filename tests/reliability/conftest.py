"""Shared pieces of the reliability and security tests: configurable supernode processes, TLS material,
an HTTPS origin, a small file system for the CDN, and a process's memory.

Everything binds to 127.0.0.0/8 and is stopped at teardown; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import Hit, Node, Origin
from tests.tlscerts import self_signed
from tests.v1proto import REPO_ROOT, SupernodeProcess, SupernodeStartError, free_port

MIB = 1024 * 1024

# ---------------------------------------------------------------------------------------------------
# TLS material


@dataclass(frozen=True)
class Certificate:
    """A self-signed CA certificate for 127.0.0.1 and localhost, usable as a server certificate and as
    its own trust anchor (what a user gets from ``openssl req -x509``)."""

    cert_path: Path
    key_path: Path
    pem: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.pem)


def make_certificate(directory: Path, name: str = "server") -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, f"reliability-test {name}")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Certificate(cert_path, key_path, pem.decode())


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return make_certificate(tmp_path / "tls")


# ---------------------------------------------------------------------------------------------------
# Origins


class TlsOrigin(Origin):
    """The scriptable origin of the integration tests on a chosen loopback IP, over HTTPS when given a
    certificate. ``redirects`` maps a path to the absolute URL it answers with a 302."""

    def __init__(self, certificate: Certificate | None = None, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.certificate = certificate
        self.host = host
        self.redirects: dict[str, str] = {}

    def url(self, path: str) -> str:
        return f"{'https' if self.certificate else 'http'}://{self.host}:{self.port}{path}"

    async def _route(self, request: web.Request) -> web.StreamResponse:
        target = self.redirects.get(request.path)
        if target is None:
            return await self._handle(request)
        self.hits.setdefault(request.path, []).append(
            Hit(request.method, request.path, dict(request.headers), status=302, completed=True))
        return web.Response(status=302, headers={"Location": target})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._route)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        context = None
        if self.certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.certificate.cert_path, self.certificate.key_path)
        await web.TCPSite(self._runner, self.host, 0, ssl_context=context).start()
        self.port = self._runner.addresses[0][1]


OriginFactory = Callable[..., Awaitable[TlsOrigin]]


@pytest.fixture
async def make_origin() -> AsyncIterator[OriginFactory]:
    """``await make_origin(certificate=None, host="127.0.0.1")``: a started origin, stopped at teardown."""
    started: list[TlsOrigin] = []

    async def make(certificate: Certificate | None = None, host: str = "127.0.0.1") -> TlsOrigin:
        origin = TlsOrigin(certificate, host)
        await origin.start()
        started.append(origin)
        return origin

    try:
        yield make
    finally:
        for origin in started:
            await origin.stop()


# ---------------------------------------------------------------------------------------------------
# The supernode as a configurable process

# Runs the supernode with a file-size limit, the fallback when no small file system can be mounted: writes
# past the limit fail with EFBIG (SIGXFSZ is ignored, or the kernel would kill the process instead).
_FSIZE_WRAPPER = (
    "import resource, runpy, signal, sys; "
    "limit = int(sys.argv[1]); "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "sys.argv = ['supernode', *sys.argv[2:]]; "
    "runpy.run_module('supernode', run_name='__main__', alter_sys=True)"
)


class NodeProcess(SupernodeProcess):
    """``python -m supernode`` with a YAML configuration, extra environment, optional TLS on the API port,
    an optional file-size limit, and SIGKILL.

    The configuration goes through ``--config`` and the environment, the ways a deployment sets it.
    """

    def __init__(self, home: Path, log_dir: Path, *, api_port: int, cdn_port: int,
                 config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 certificate: Certificate | None = None, fsize_limit: int | None = None) -> None:
        super().__init__(home, log_dir, api_port=api_port, cdn_port=cdn_port)
        self.config = {"listen_host": "127.0.0.1", **(config or {})}
        self.env = dict(env or {})
        self.certificate = certificate
        self.fsize_limit = fsize_limit
        self.config_path = log_dir / "supernode.yml"
        if certificate is not None:
            self.config.update(tls_cert=str(certificate.cert_path), tls_key=str(certificate.key_path))

    @property
    def api_url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the supernode is not running"
        return self.proc.pid

    def argv(self) -> list[str]:
        argv = [*super().argv(), "--config", str(self.config_path)]
        if self.fsize_limit is None:
            return argv
        return [sys.executable, "-c", _FSIZE_WRAPPER, str(self.fsize_limit), *argv[3:]]

    def client_ssl(self) -> ssl.SSLContext | bool:
        return self.certificate.client_context() if self.certificate else True

    async def start(self, ready_within: float = 20.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        self._logs = [self.stdout_path.open("ab"), self.stderr_path.open("ab")]
        self.proc = await asyncio.to_thread(
            subprocess.Popen, self.argv(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self._logs[0], stderr=self._logs[1])
        deadline = time.monotonic() + ready_within
        connector = aiohttp.TCPConnector(ssl=self.client_ssl())
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.api_url}/_ping", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        code = self.proc.poll()
        await self.stop()
        raise SupernodeStartError(f"supernode {'exited with ' + str(code) if code is not None else 'never answered'}"
                                  f": {' '.join(self.argv())}\n{self.stderr_text()}")

    async def kill(self) -> int:
        """SIGKILL, as the OOM killer or a node failure would: no shutdown code runs."""
        proc = self.proc
        assert proc is not None, "the supernode is not running"
        proc.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(proc.wait, 10)
        await self.stop()  # closes the log files; the process is already gone
        return code

    def memory(self) -> dict[str, int]:
        """``VmRSS`` (now) and ``VmHWM`` (peak) of the process, in bytes, from ``/proc/<pid>/status``."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values


ProcessFactory = Callable[..., Awaitable[NodeProcess]]


@pytest.fixture
async def make_process(tmp_path: Path) -> AsyncIterator[ProcessFactory]:
    """``await make_process(**NodeProcess kwargs)``: a started supernode process, stopped at teardown.

    ``home`` defaults to a fresh directory under ``tmp_path``; the stderr tail is printed at teardown so
    that it shows in the report of a failed test.
    """
    started: list[NodeProcess] = []

    async def make(home: Path | None = None, **kwargs: Any) -> NodeProcess:
        n = len(started)
        node = NodeProcess(home or tmp_path / f"home{n}", tmp_path / f"logs{n}", api_port=free_port("127.0.0.1"),
                           cdn_port=free_port("127.0.0.1"), **kwargs)
        try:
            await node.start()
        except SupernodeStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in started:
            code = await node.stop()
            print(f"supernode exited with {code}; stderr tail ({node.stderr_path}):\n{node.stderr_text(3000)}")


# ---------------------------------------------------------------------------------------------------
# A small disk


@dataclass(frozen=True)
class SmallDisk:
    """Where to put a supernode home so that the CDN runs out of space after ``size`` bytes.

    ``path`` is a tmpfs of ``size`` bytes when one could be mounted (as root); otherwise ``path`` is a
    plain directory and ``fsize_limit`` must be given to the process (RLIMIT_FSIZE: writes fail with
    EFBIG instead of ENOSPC, the same failure for the CDN's purposes).
    """

    path: Path
    size: int
    mounted: bool

    @property
    def fsize_limit(self) -> int | None:
        return None if self.mounted else self.size


def _mount_tmpfs(path: Path, size: int) -> bool:
    """Mount a tmpfs when root may; ``RELIABILITY_NO_TMPFS=1`` forces the RLIMIT_FSIZE fallback."""
    if os.geteuid() != 0 or os.environ.get("RELIABILITY_NO_TMPFS") == "1":
        return False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    path = tmp_path / "small-disk"
    path.mkdir()
    size = 8 * MIB
    mounted = _mount_tmpfs(path, size)
    try:
        yield SmallDisk(path, size, mounted)
    finally:
        if mounted:
            result = subprocess.run(["umount", str(path)], capture_output=True, timeout=10, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, check=False)


# ---------------------------------------------------------------------------------------------------
# Waiting


async def until(check: Callable[[], bool], what: str, within: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(step)


# ---------------------------------------------------------------------------------------------------
# In-process supernodes (for the checks that need no separate process)

NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await start_node(**settings)``: the integration tests' in-process supernode on loopback ports."""
    started: list[Node] = []

    async def start(**overrides: Any) -> Node:
        home = overrides.pop("home_dir", tmp_path / f"node{len(started)}")
        for attempt in range(3):  # a free port may be taken by another process before we bind it
            node = Node(home, **overrides)
            try:
                await node.start()
            except OSError:
                await node.node.stop()
                if attempt == 2:
                    raise
                continue
            started.append(node)
            return node
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for node in reversed(started):
            await node.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
