"""Fixtures that run the real ``python -m dfget`` as separate processes, one work home per node.

Every dfget run is a child process of the test; the uploader each first run starts is a detached
grandchild, found through the pid its home's meta file records, and later runs on the node hand
their downloads to it. Teardown stops both, so no process outlives its test; the short
``--alivetime`` default makes any uploader missed here exit on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 40.0
ALIVE_TIME = "15s"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Finished:
    """One dfget run that ended: exit code, output, and what it printed."""

    code: int
    stdout: str
    stderr: str
    output: Path
    home: Path
    pid: int  # of the dfget process: a run it handed to the node's daemon logs the daemon's pid instead

    def counts(self) -> dict[str, float]:
        """MiB by source, parsed from the summary line (``... 8.0 MiB from peers, ...``)."""
        found = re.findall(r"([0-9.]+) (B|KiB|MiB|GiB) from (peers|supernode|source)", self.stdout)
        scale = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
        return {where: float(value) * scale[unit] for value, unit, where in found}

    def seconds(self) -> float:
        """The duration the summary line reports (``... in 1.23s ...``)."""
        found = re.search(r" in ([0-9.]+)s \(", self.stdout)
        assert found, self.stdout
        return float(found.group(1))

    def describe(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


class Running:
    """A dfget run in progress; its stdout and stderr go to files, so nothing is lost if it must be killed."""

    def __init__(self, proc: asyncio.subprocess.Process, output: Path, home: Path, stdout: Path,
                 stderr: Path) -> None:
        self.proc = proc
        self.output = output
        self.home = home
        self.stdout = stdout
        self.stderr = stderr

    async def wait(self, within: float = RUN_TIMEOUT) -> Finished:
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            log = self.home / "logs" / "dfclient.log"
            pytest.fail(f"dfget did not finish within {within:g}s:\n{self.stderr.read_text()}\n--- log ---\n"
                        f"{log.read_text()[-4000:] if log.exists() else ''}")
        return Finished(code, self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace"),
                        self.output, self.home, self.proc.pid)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def uploader_pid(home: Path) -> int:
    """The pid of the uploader serving ``home``, if that process is alive and is one."""
    try:
        pid = int(json.loads((home / "meta" / "host.meta").read_text()).get("pid") or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and _is_uploader(pid, home) else 0


def _is_uploader(pid: int, home: Path) -> bool:
    """Alive (not a zombie) and running ``dfget server`` for this home: never signal anyone else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z" and b"server" in cmdline and str(home).encode() in cmdline


async def wait_gone(pid: int, home: Path, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _is_uploader(pid, home):
            return True
        await asyncio.sleep(0.05)
    return not _is_uploader(pid, home)


class DfgetNodes:
    """Starts ``python -m dfget`` runs; each ``ip`` is one node with its own work home under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: list[Running] = []
        self.homes: set[Path] = set()

    def home(self, ip: str) -> Path:
        return self.root / f"node-{ip}"

    async def start(self, url: str, *args: str, ip: str = "127.0.0.2", output: Path | None = None,
                    alive_time: str = ALIVE_TIME, cwd: Path | None = None, give_output: bool = True,
                    python_args: Sequence[str] = ()) -> Running:
        """``python [python_args] -m dfget -u url -o output ...`` in ``cwd`` (default: ``root``).

        A relative ``output`` is passed as it is (relative to ``cwd``); ``give_output=False`` leaves
        ``-o`` out, and ``output`` is then where the file is expected.
        """
        home = self.home(ip)
        self.homes.add(home)
        cwd = cwd or self.root
        output = output or self.root / "out" / f"{ip}.bin"
        argv = [sys.executable, *python_args, "-m", "dfget", "-u", url, *(["-o", str(output)] if give_output else []),
                "--ip", ip, "--home", str(home), "--alivetime", alive_time, *args]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        stdout, stderr = (self.root / f"run-{len(self.running)}-{ip}.{kind}" for kind in ("stdout", "stderr"))
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env,
                                                        stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err)
        running = Running(proc, cwd / output, home, stdout, stderr)
        self.running.append(running)
        return running

    async def run(self, url: str, *args: str, ip: str = "127.0.0.2", output: Path | None = None,
                  alive_time: str = ALIVE_TIME, cwd: Path | None = None, give_output: bool = True,
                  python_args: Sequence[str] = ()) -> Finished:
        started = await self.start(url, *args, ip=ip, output=output, alive_time=alive_time, cwd=cwd,
                                   give_output=give_output, python_args=python_args)
        return await started.wait()

    async def stop_uploader(self, home: Path, sig: int = signal.SIGTERM) -> None:
        pid = uploader_pid(home)
        if not pid:
            return
        os.kill(pid, sig)
        if not await wait_gone(pid, home, 5.0):
            os.kill(pid, signal.SIGKILL)
            await wait_gone(pid, home, 2.0)

    async def close(self) -> None:
        for running in self.running:
            running.kill()
            with contextlib.suppress(ProcessLookupError):
                await running.proc.wait()
        for home in self.homes:
            await self.stop_uploader(home)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[DfgetNodes]:
    runner = DfgetNodes(tmp_path / "dfget")
    runner.root.mkdir(parents=True)
    try:
        yield runner
    finally:
        await runner.close()


async def metric(api_url: str, name: str, **labels: str) -> float:
    """The value of one sample of the supernode's ``/metrics`` (0 when absent)."""
    async with aiohttp.ClientSession() as session, session.get(f"{api_url}/metrics") as resp:
        text = await resp.text()
    want = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        head, _, label_text = series.partition("{")
        if head == name and want <= set(label_text.rstrip("}").split(",")):
            total += float(value)
    return total
