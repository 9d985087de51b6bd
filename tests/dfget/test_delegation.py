"""A dfget run on a node whose daemon (``dfget server``) listens hands its download over, with real processes.

The first run on a node downloads in its own process and starts the daemon, as always; the runs
after it send their options to the daemon's control socket and print what it streams back. What
proves a hand-over from the outside: the dfget process never imports aiohttp or pydantic
(``python -X importtime`` lists every import on its stderr), and the run's records in dfclient.log
carry the daemon's pid. Everything a user sees must be what a run in its own process shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from dfget.args import download_args
from dfget.constants import ExitCode
from dfget.control import DownloadArgs
from dfget.unixsock import address, answers, control_socket
from tests.v1proto import OriginServer, SupernodeProcess, pattern_bytes

from .conftest import DfgetNodes, Finished, file_md5, md5_hex, uploader_pid, wait_gone

MIB = 1024 * 1024
IMPORTTIME = ("-X", "importtime")
WENT_AWAY = "went away before the download ended; downloading in this process instead"
_RUN_START = re.compile(r"^\S+ \S+ (\d+) INFO dfget\.report: dfget \S+: \S+ -> (.+)$", re.MULTILINE)


def run_pids(home: Path, log_name: str = "dfclient.log") -> dict[str, int]:
    """Output path -> pid of the process that ran the download, from the start records of a log."""
    path = home / "logs" / log_name
    text = path.read_text(errors="replace") if path.exists() else ""
    return {output: int(pid) for pid, output in _RUN_START.findall(text)}


def printed(result: Finished) -> str:
    """stderr without the ``-X importtime`` lines: what a user sees."""
    return "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith("import time:"))


def imported(result: Finished) -> set[str]:
    """Top-level packages the dfget process imported (needs ``-X importtime``)."""
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", result.stderr, re.MULTILINE)
    assert found, "run without -X importtime"
    return {name.partition(".")[0] for name in found}


def temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name.endswith(".tmp")] if directory.exists() else []


async def start_daemon(nodes: DfgetNodes, origin: OriginServer, node: str, ip: str = "127.0.0.2",
                       alive_time: str = "15s") -> int:
    """A first run on the node: it downloads in its own process and leaves the daemon running; its pid."""
    origin.files["/seed.bin"] = pattern_bytes(MIB)
    first = await nodes.run(origin.url("/seed.bin"), "--node", node, ip=ip, output=nodes.root / f"seed-{ip}.bin",
                            alive_time=alive_time, python_args=IMPORTTIME)
    assert first.code == 0, first.describe()
    assert "aiohttp" in imported(first), "a run in its own process imports the download stack"
    assert run_pids(first.home)[str(first.output)] == first.pid
    pid = uploader_pid(first.home)
    assert pid and answers(control_socket(first.home)), "the daemon listens on its control socket"
    return pid


async def wait_for(condition: str, check: Callable[[], object], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{condition}: not within {within:g}s"
        await asyncio.sleep(0.05)


def test_the_request_carries_every_download_flag() -> None:
    """The daemon's request model and the command line's grammar name the same values."""
    assert set(DownloadArgs.model_fields) == set(download_args(["-u", "http://o/f"]))


async def test_second_run_is_handed_to_the_daemon(origin: OriginServer, supernode: SupernodeProcess,
                                                  nodes: DfgetNodes) -> None:
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)
    origin.files["/f.bin"] = data = pattern_bytes(9 * MIB)

    result = await nodes.run(origin.url("/f.bin"), "--node", node, python_args=IMPORTTIME)

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)
    assert not {"aiohttp", "pydantic", "yarl", "supernode"} & imported(result), printed(result)
    assert printed(result) == ""
    assert re.fullmatch(rf"dfget: downloaded 9\.0 MiB in [0-9.]+s \([0-9.]+ [KMG]?i?B/s\) to {result.output}: "
                        rf"[0-9.]+ [KMG]?i?B from peers, [0-9.]+ [KMG]?i?B from supernode {node}, 0 B from source\n",
                        result.stdout), result.stdout
    assert run_pids(result.home)[str(result.output)] == daemon, "the run's records are in dfclient.log, as the daemon's"
    assert str(result.output) not in run_pids(result.home, "dfserver.log"), "the run's records are not the daemon's"
    assert uploader_pid(result.home) == daemon


async def test_same_lines_and_exit_codes_as_in_process(origin: OriginServer, supernode: SupernodeProcess,
                                                       nodes: DfgetNodes) -> None:
    """The same summary, validation messages and failures, handed over (here) or not (--verbose, a fresh node)."""
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)
    origin.files["/f.bin"] = pattern_bytes(MIB)
    handed = await nodes.run(origin.url("/f.bin"), "--node", node, "-p", "cdn", output=nodes.root / "a.bin",
                             python_args=IMPORTTIME)
    own = await nodes.run(origin.url("/f.bin"), "--node", node, "-p", "cdn", "--verbose", output=nodes.root / "b.bin")
    assert handed.code == own.code == 0, handed.describe() + own.describe()
    pids = run_pids(handed.home)
    assert (pids[str(handed.output)], pids[str(own.output)]) == (daemon, own.pid), "--verbose runs in its process"
    assert "pydantic" not in imported(handed)

    def masked(result: Finished) -> str:
        return re.sub(r" in [0-9.]+s \([^)]*\) to \S+:", " in Ts (R) to OUT:", result.stdout)

    assert masked(handed) == masked(own) == \
        f"dfget: downloaded 1.0 MiB in Ts (R) to OUT: 0 B from peers, 1.0 MiB from supernode {node}, 0 B from source\n"

    cases = [(("--md5", "xyz"), ExitCode.USAGE, "dfget: invalid --md5: 'xyz' is not 32 hexadecimal digits\n"),
             (("-s", "fast", "--timeout", "soon"), ExitCode.USAGE,
              "dfget: invalid --locallimit: invalid size 'fast': use a number with an optional K, M, G or T suffix\n"
              "dfget: invalid --timeout: invalid duration 'soon': use e.g. 30s, 3m, 2h or 500ms\n"),
             (("-p", "source"), ExitCode.SOURCE_FAILED, None)]
    for args, code, message in cases:
        here = await nodes.run(origin.url("/missing.bin"), "--node", node, *args, python_args=IMPORTTIME)
        fresh = await nodes.run(origin.url("/missing.bin"), "--node", node, *args, ip="127.0.0.9")
        assert here.code == fresh.code == code, here.describe() + fresh.describe()
        assert printed(here) == fresh.stderr, (args, here.stderr, fresh.stderr)
        assert message is None or fresh.stderr == message, fresh.stderr
        assert "pydantic" not in imported(here), "validated by the daemon"
        assert here.stdout == fresh.stdout == ""
    assert "answered HTTP 404" in fresh.stderr and "dfget: download failed: " in fresh.stderr, fresh.stderr
    usage = await nodes.run(origin.url("/f.bin"), "-p", "torrent", python_args=IMPORTTIME)
    assert usage.code == ExitCode.USAGE and "invalid choice: 'torrent'" in usage.stderr, usage.describe()


async def test_relative_paths_are_the_callers(origin: OriginServer, supernode: SupernodeProcess,
                                              nodes: DfgetNodes) -> None:
    """``-o sub/a.bin`` and the URL's own name land in the dfget process's cwd, not in the daemon's."""
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)  # its cwd is nodes.root
    work = nodes.root / "work"
    work.mkdir()
    origin.files["/named.bin"] = data = pattern_bytes(2 * MIB)

    relative = await nodes.run(origin.url("/named.bin"), "--node", node, output=Path("sub/a.bin"), cwd=work)
    named = await nodes.run(origin.url("/named.bin"), "--node", node, output=Path("named.bin"), cwd=work,
                            give_output=False)

    for result in (relative, named):
        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data)
        assert run_pids(result.home)[str(result.output)] == daemon
    assert (relative.output, named.output) == (work / "sub" / "a.bin", work / "named.bin")
    assert " to sub/a.bin: " in relative.stdout and " to named.bin: " in named.stdout, "shown as the user named it"
    assert not (nodes.root / "sub").exists() and not (nodes.root / "named.bin").exists()


async def test_concurrent_runs_have_their_own_cids(origin: OriginServer, supernode: SupernodeProcess,
                                                   nodes: DfgetNodes) -> None:
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)
    origin.files["/f.bin"] = data = pattern_bytes(16 * MIB)
    url = origin.url("/f.bin")

    results = await asyncio.gather(*(nodes.run(url, "--node", node, "-s", "8M", output=nodes.root / name)
                                     for name in ("x.bin", "y.bin")))

    server_log = (results[0].home / "logs" / "dfserver.log").read_text()
    cids = dict(re.findall(r"task [xy]\.bin-\S+ finished \(task \w+, cid (127\.0\.0\.2-(\d+)-\S+),", server_log))
    assert len(cids) == 2, server_log
    assert {int(pid) for pid in cids.values()} == {result.pid for result in results}, \
        "each run signs (its cid, its task file) with its own dfget process's pid"
    for result in results:
        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data)
        assert run_pids(result.home)[str(result.output)] == daemon


@contextmanager
def _children_take_sigint() -> Iterator[None]:
    """Processes started meanwhile get SIGINT's default disposition, whatever this process has.

    A suite run as a background job of a shell without job control (``nohup bash script &``) ignores
    SIGINT, and so do the processes it starts: their Python keeps it ignored, as a user's background
    dfget should. A handled signal is reset to the default on exec, so handling it here for the moment
    of the spawn gives the dfget under test the Ctrl-C a user's terminal would send it.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
async def test_stopped_caller_cancels_its_run(origin: OriginServer, supernode: SupernodeProcess, nodes: DfgetNodes,
                                              sig: signal.Signals) -> None:
    """The dfget process is killed or interrupted: the daemon cancels its run, removes its files, keeps serving."""
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)
    origin.files["/f.bin"] = data = pattern_bytes(16 * MIB)
    out = nodes.root / "out"
    with _children_take_sigint():
        running = await nodes.start(origin.url("/f.bin"), "--node", node, "-s", "1M")
    await wait_for("the download started", lambda: temp_files(out))
    service = list((running.home / "data").glob(f"*-{running.proc.pid}-*.service"))
    assert service, "the run's pieces are served while it downloads"

    running.proc.send_signal(sig)
    stopped = await running.wait()
    log = running.home / "logs" / "dfclient.log"
    await wait_for("the run cancelled", lambda: "download cancelled: its dfget process hung up" in log.read_text(),
                   within=5.0)
    assert not temp_files(out) and not any(path.exists() for path in service), "the run's files are removed"
    if sig != signal.SIGKILL:
        assert stopped.code == ExitCode.INTERRUPTED and stopped.stderr == "dfget: interrupted\n", stopped.describe()
    assert not running.output.exists()

    again = await nodes.run(origin.url("/f.bin"), "--node", node)
    assert again.code == 0, again.describe()
    assert file_md5(again.output) == md5_hex(data)
    assert uploader_pid(again.home) == daemon and run_pids(again.home)[str(again.output)] == daemon


async def test_daemon_killed_mid_run_falls_back(origin: OriginServer, supernode: SupernodeProcess,
                                                nodes: DfgetNodes) -> None:
    """The daemon dies mid-run: dfget says so and downloads in its own process, which starts a new daemon."""
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node)
    origin.files["/f.bin"] = data = pattern_bytes(16 * MIB)
    running = await nodes.start(origin.url("/f.bin"), "--node", node, "-s", "4M")
    await wait_for("the download started", lambda: temp_files(nodes.root / "out"))

    os.kill(daemon, signal.SIGKILL)
    result = await running.wait()

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)
    assert WENT_AWAY in result.stderr, result.stderr
    assert run_pids(result.home)[str(result.output)] == result.pid, "the second attempt ran in the dfget process"
    replacement = uploader_pid(result.home)
    assert replacement not in (0, daemon)
    assert answers(control_socket(result.home)), "the new daemon took over the dead one's socket file"


async def test_daemon_stays_while_a_run_is_active(origin: OriginServer, supernode: SupernodeProcess,
                                                  nodes: DfgetNodes) -> None:
    """A handed-over run that does not touch the uploader (-p cdn) outlasts --alivetime: the daemon waits for it."""
    node = f"127.0.0.1:{supernode.api_port}"
    daemon = await start_daemon(nodes, origin, node, alive_time="2s")
    origin.files["/f.bin"] = data = pattern_bytes(4 * MIB)

    result = await nodes.run(origin.url("/f.bin"), "--node", node, "-p", "cdn", "-s", "1M")

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)
    assert result.seconds() > 3, "the run must outlast the daemon's --alivetime"
    assert WENT_AWAY not in result.stderr and run_pids(result.home)[str(result.output)] == daemon
    assert uploader_pid(result.home) == daemon, "the daemon exited right after the run"
    assert await wait_gone(daemon, result.home, 10.0), "idle once the run is over: --alivetime applies again"
    assert not control_socket(result.home).exists(), "the daemon removes its socket when it exits"


async def test_control_socket_is_private_and_not_on_tcp(origin: OriginServer, supernode: SupernodeProcess,
                                                        nodes: DfgetNodes) -> None:
    node = f"127.0.0.1:{supernode.api_port}"
    await start_daemon(nodes, origin, node)
    home = nodes.home("127.0.0.2")
    path = control_socket(home)
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    port = json.loads((home / "meta" / "host.meta").read_text())["servicePort"]
    async with aiohttp.ClientSession() as http, http.post(f"http://127.0.0.2:{port}/dfget", json={}) as resp:
        assert resp.status == 404, "the uploader's TCP port, open to every peer, must not take downloads"


async def test_bad_requests_get_400_json(origin: OriginServer, supernode: SupernodeProcess,
                                         nodes: DfgetNodes) -> None:
    node = f"127.0.0.1:{supernode.api_port}"
    await start_daemon(nodes, origin, node)
    home = nodes.home("127.0.0.2")
    options = download_args(["-u", origin.url("/seed.bin"), "--home", str(home)])
    root = nodes.root.stat()
    good = {"options": options, "cwd": str(nodes.root), "pid": os.getpid(), "stderr_tty": False, "columns": 80,
            "seen": {str(nodes.root): [root.st_dev, root.st_ino]}}
    bodies = {
        "not JSON": b"{options",
        "not an object": b"[]",
        "missing cwd": json.dumps({key: value for key, value in good.items() if key != "cwd"}).encode(),
        "relative cwd": json.dumps({**good, "cwd": "work"}).encode(),
        "unknown option": json.dumps({**good, "options": {**options, "rm": "-rf"}}).encode(),
        "pid as text": json.dumps({**good, "pid": "1"}).encode(),
    }
    with address(control_socket(home)) as socket_path:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path)) as http:
            for what, body in bodies.items():
                async with http.post("http://dfget/dfget", data=body) as resp:
                    answer = await resp.json()
                    assert resp.status == 400 and answer["code"] == 400 and answer["message"], (what, answer)
            async with http.get("http://dfget/dfget") as resp:
                assert resp.status == 405
            # A daemon that sees other directories than its caller (a container sharing only the home)
            # must leave the run to the caller: 409, which makes dfget download in its own process.
            for what, seen in {"another directory": {str(nodes.root): [root.st_dev, root.st_ino + 1]},
                               "cwd not named": {"/": [os.stat("/").st_dev, os.stat("/").st_ino]},
                               "a path the daemon cannot see": {str(nodes.root): [root.st_dev, root.st_ino],
                                                                str(nodes.root / "gone"): [1, 2]}}.items():
                async with http.post("http://dfget/dfget", json={**good, "seen": seen}) as resp:
                    answer = await resp.json()
                    assert resp.status == 409 and answer["code"] == 409 and answer["message"], (what, answer)
