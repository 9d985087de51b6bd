"""The per-node processes of the mirror tests: containerd (as root, one per node) and ``dfget proxy``.

Each node has its own loopback IP, directory, containerd (own root, state and sockets, its CRI
registry ``config_path`` pointing at the node's ``certs.d``), and mirror. Every process is started
in its own session and stopped by pid at teardown, SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.dfget.conftest import uploader_pid, wait_gone
from tests.mirror.cri import CriClient

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"


class ProcessError(RuntimeError):
    pass


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Containerd:
    """``containerd --config`` with everything under ``workdir``; the CRI plugin reads ``certs.d`` there."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.certs = workdir / "certs.d"
        self.socket = str(workdir / "containerd.sock")
        self.log_path = workdir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        w = self.workdir
        return "\n".join([
            "version = 2", f'root = "{w / "root"}"', f'state = "{w / "state"}"',
            "[grpc]", f'  address = "{self.socket}"', "[ttrpc]", f'  address = "{self.socket}.ttrpc"',
            '[plugins."io.containerd.grpc.v1.cri"]', '  disable_tcp_service = true',
            '[plugins."io.containerd.grpc.v1.cri".containerd]', '  snapshotter = "native"',
            '[plugins."io.containerd.grpc.v1.cri".registry]', f'  config_path = "{self.certs}"', ""])

    async def start(self, ready_within: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs.mkdir(exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.to_thread(subprocess.Popen, [CONTAINERD, "--config", str(config)],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                start_new_session=True)
        client = CriClient(self.socket)
        deadline = time.monotonic() + ready_within
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    await asyncio.to_thread(client.version, 1.0)
                    return
                except Exception:  # grpc.RpcError while the socket is not there yet
                    await asyncio.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise ProcessError(f"containerd did not answer CRI Version within {ready_within:g}s:\n"
                           f"{self.log_path.read_text(errors='replace')[-3000:]}")

    async def pull(self, image: str, within: float = 180.0) -> str:
        client = CriClient(self.socket)
        try:
            return await asyncio.to_thread(client.pull, image, within)
        finally:
            client.close()

    def stop(self) -> None:
        _stop(self.proc, 10.0)
        self.proc = None


class Mirror:
    """``python -m dfget proxy`` for one node; its dfget home also holds the uploader it starts."""

    def __init__(self, workdir: Path, ip: str, port: int, *, registries: list[str], nodes: list[str],
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.ip = ip
        self.port = port
        self.home = workdir / "dfget-home"
        self.registries = registries
        self.nodes = nodes
        self.extra = extra or []
        self.log_path = workdir / "mirror.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "dfget", "proxy", "--listen", f"{self.ip}:{self.port}", "--ip", self.ip,
                "--home", str(self.home), "--alivetime", "60s", *self.extra]
        for registry in self.registries:
            argv += ["--registry", registry]
        for node in self.nodes:
            argv += ["--node", node]
        return argv

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    async def write_hosts(self, certs_dir: Path) -> None:
        """``dfget proxy ... --write-hosts-toml``, as the DaemonSet's init container runs it."""
        proc = await asyncio.create_subprocess_exec(*self.argv(), "--write-hosts-toml", str(certs_dir), cwd=REPO_ROOT,
                                                    env=self._env(), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise ProcessError(f"--write-hosts-toml failed ({proc.returncode}): {out.decode(errors='replace')}")

    async def start(self, ready_within: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.to_thread(subprocess.Popen, self.argv(), cwd=REPO_ROOT, env=env,
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                start_new_session=True)
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/v2/", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        self.stop()
        raise ProcessError(f"the mirror did not answer /v2/ within {ready_within:g}s:\n{self.log_text()}")

    def log_text(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    async def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value of the mirror's ``/metrics``."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                values[series] = float(value)
        return values

    def stop(self) -> None:
        _stop(self.proc, 10.0)
        self.proc = None

    async def stop_uploader(self) -> None:
        """The uploader the mirror's dfget runs started (detached, so it outlives the mirror)."""
        pid = uploader_pid(self.home)
        if not pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await wait_gone(pid, self.home, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await wait_gone(pid, self.home, 2.0)
