"""The unmodified Go Dragonfly v1.0.6 programs (and nginx) as child processes of a test.

Why this module: the interop tier's promise is that the real Go ``dfget`` works against our supernode
and our ``dfget`` against the real Go ``supernode``, so these are real processes on loopback, not
doubles. Each class owns what it starts and stops it at teardown, even when the test failed:

- :class:`GoDfgetNodes` runs Go ``dfget``; each run starts in a new session (process group), and the
  uploader daemon (``dfget server``) it spawns stays in that group for ``--alivetime``, so teardown
  kills the groups, after checking that they still hold our binary (a group ID is never reused while
  one member lives, but could be once all are gone).
- :class:`Nginx` is the Go supernode's download port, as upstream deploys it: a non-daemon nginx with
  its own config, pid, logs and temp paths under the test's directory, serving ``{home}/repo``.
- :class:`GoSupernode` is the Go supernode on loopback ports with its home under the test's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from tests.dfget.conftest import Finished, Running
from tests.v1proto import raw_request

GO_ALIVE_TIME = "10s"  # the uploader outlives its run by this at most, should a teardown be missed


def _group_of(pid: int) -> int | None:
    """The process group of a live (non-zombie) process, ``None`` when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def _members(pgid: int, binary: Path) -> list[int]:
    """Live processes of group ``pgid`` that run ``binary``: the only ones a teardown may signal."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0 == str(binary).encode() and _group_of(int(entry.name)) == pgid:
            found.append(int(entry.name))
    return found


async def kill_groups(groups: Sequence[int], binary: Path, grace: float = 0.5) -> None:
    """SIGTERM every group that still runs ``binary``, then SIGKILL what is left after ``grace`` s."""
    live = [pgid for pgid in groups if _members(pgid, binary)]
    for pgid in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        live = [pgid for pgid in live if _members(pgid, binary)]
    for pgid in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class GoDfgetNodes:
    """Starts Go ``dfget`` runs against ``node``; each ``ip`` is one node with its own ``--home``."""

    def __init__(self, binary: Path, root: Path, node: str) -> None:
        self.binary = binary
        self.root = root
        self.node = node
        self.running: list[Running] = []

    def home(self, ip: str) -> Path:
        return self.root / f"go-{ip}"

    async def start(self, url: str, *args: str, ip: str = "127.0.77.2", output: Path | None = None,
                    alive_time: str = GO_ALIVE_TIME, home: Path | None = None) -> Running:
        """``dfget -u url -o output --node N --ip ip --home H --alivetime T args...`` in a new session.

        ``home`` defaults to this runner's own one for ``ip``; another one (our dfget's) makes the two
        programs share a node's uploader.
        """
        home = home or self.home(ip)
        output = output or self.root / "out" / f"go-{ip}.bin"
        output.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(self.binary), "-u", url, "-o", str(output), "--node", self.node, "--ip", ip,
                "--home", str(home), "--alivetime", alive_time, *args]
        stdout, stderr = (self.root / f"go-run-{len(self.running)}-{ip}.{kind}" for kind in ("stdout", "stderr"))
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*argv, cwd=self.root, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=out, stderr=err, start_new_session=True)
        running = Running(proc, output, home, stdout, stderr)
        self.running.append(running)
        return running

    async def run(self, url: str, *args: str, ip: str = "127.0.77.2", output: Path | None = None,
                  alive_time: str = GO_ALIVE_TIME, home: Path | None = None) -> Finished:
        started = await self.start(url, *args, ip=ip, output=output, alive_time=alive_time, home=home)
        return await started.wait()

    async def close(self) -> None:
        """Stop every run and every uploader one of them spawned (they share the run's group)."""
        for running in self.running:
            running.kill()
            with contextlib.suppress(ProcessLookupError):
                await running.proc.wait()
        await kill_groups([running.proc.pid for running in self.running], self.binary)


def describe(result: Finished) -> str:
    """A failed Go run's output plus the tail of its log (``{home}/logs/dfclient.log``)."""
    log = result.home / "logs" / "dfclient.log"
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    return f"{result.describe()}\n--- {log} ---\n{tail}"


async def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], within: float, what: str) -> None:
    """Until ``host:port`` accepts a TCP connection; fails if ``proc`` exits or ``within`` s pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {within:g}s")


async def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> int | None:
    """SIGTERM the leader of its own session, SIGKILL the group after ``grace`` s; the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
    try:
        return await asyncio.to_thread(proc.wait, grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return await asyncio.to_thread(proc.wait)


class Nginx:
    """nginx in the foreground (``daemon off``) serving ``root`` on ``127.0.0.1:port`` with sendfile."""

    def __init__(self, binary: Path, workdir: Path, root: Path, port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.root = root
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        d = self.workdir
        # user: the workers run as whoever runs the test (a root master would drop them to "nobody",
        # who cannot enter pytest's private tmp directories); without root the line is ignored.
        return f"""daemon off;
worker_processes 1;
user {getpass.getuser()};
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ root {self.root}; }}
    }}
}}
"""

    def access_log(self) -> str:
        path = self.workdir / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        argv = [str(self.binary), "-c", str(conf), "-p", str(self.workdir), "-e", str(self.workdir / "error.log")]
        with (self.workdir / "nginx.stderr").open("wb") as err:
            self.proc = await asyncio.to_thread(subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=err,
                                                stderr=err, start_new_session=True)
        try:
            await wait_port("127.0.0.1", self.port, self.proc, 15.0, "nginx")
        except RuntimeError as exc:
            await self.stop()
            raise RuntimeError(f"{exc}: {(self.workdir / 'nginx.stderr').read_text(errors='replace')}") from None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc)


class GoSupernode:
    """The Go supernode: API on ``127.0.0.1:port``, pieces on ``download_port`` (served by :class:`Nginx`)."""

    def __init__(self, binary: Path, home: Path, port: int, download_port: int) -> None:
        self.binary = binary
        self.home = home
        self.port = port
        self.download_port = download_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = home.parent / "go-supernode.output"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, size: int = 4000) -> str:
        parts = []
        for path in (self.output, self.home / "logs" / "app.log"):
            if path.exists():
                parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-size:]}")
        return "\n".join(parts)

    async def start(self, within: float = 20.0) -> None:
        (self.home / "repo").mkdir(parents=True, exist_ok=True)
        config = self.home.parent / "go-supernode.yml"
        config.write_text("")  # all defaults and flags: never the machine's /etc/dragonfly/supernode.yml
        argv = [str(self.binary), "--home-dir", str(self.home), "--port", str(self.port),
                "--download-port", str(self.download_port), "--advertise-ip", "127.0.0.1", "--config", str(config)]
        with self.output.open("wb") as out:
            self.proc = await asyncio.to_thread(subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=out, start_new_session=True)
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if (await raw_request(session, "GET", f"{self.api_url}/_ping", time_limit=1.0)).status == 200:
                        return
                await asyncio.sleep(0.1)
        state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "gave no /_ping answer"
        await self.stop()
        raise RuntimeError(f"the Go supernode {state}: {' '.join(argv)}\n{self.log_tail()}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc)
