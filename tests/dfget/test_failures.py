"""dfget against failures, with real processes: no supernode, a lying peer, a dying peer, a dead supernode.

Every scenario must end in an MD5-correct output through whatever path is left (the CDN, another
supernode, the source), or in a clear message, a specific exit code and no output at all.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

from dfget.errors import ExitCode
from dfget.locator import Locator, Node
from dfwire import ids, pieces
from tests.v1proto import OriginServer, SupernodeProcess, free_port, pattern_bytes

from .conftest import DfgetNodes, file_md5, md5_hex, metric, uploader_pid
from .test_swarm import check_origin_sent_once

MIB = 1024 * 1024
PIECE_DATA = pieces.data_size(pieces.DEFAULT_PIECE_SIZE)


async def test_back_source_when_no_supernode_is_up(origin: OriginServer, nodes: DfgetNodes) -> None:
    origin.files["/f.bin"] = data = pattern_bytes(9 * MIB)
    result = await nodes.run(origin.url("/f.bin"), "--node", f"127.0.0.1:{free_port()}")
    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)
    assert "downloading from the source" in result.stderr and "back-source reason 1" in result.stderr, result.stderr
    assert "cannot connect" in result.stderr
    assert result.counts() == {"peers": 0, "supernode": 0, "source": 9.0}
    assert origin.full_transfers["/f.bin"] == 1


async def test_notbs_fails_clearly(origin: OriginServer, nodes: DfgetNodes) -> None:
    origin.files["/f.bin"] = pattern_bytes(MIB)
    result = await nodes.run(origin.url("/f.bin"), "--node", f"127.0.0.1:{free_port()}", "--notbs")
    assert result.code == ExitCode.SUPERNODE_FAILED, result.describe()
    assert "--notbs" in result.stderr and "no supernode accepted the download" in result.stderr, result.stderr
    assert result.stdout == ""
    assert not result.output.parent.exists() or list(result.output.parent.iterdir()) == []
    assert origin.requests["/f.bin"] == 0


async def test_wrong_md5_is_never_published(origin: OriginServer, supernode: SupernodeProcess,
                                            nodes: DfgetNodes) -> None:
    """The CDN refuses the task, the source copy does not match either: exit 5, no output."""
    origin.files["/f.bin"] = pattern_bytes(MIB)
    result = await nodes.run(origin.url("/f.bin"), "--node", f"127.0.0.1:{supernode.api_port}",
                             "--md5", "0" * 32)
    assert result.code == ExitCode.MD5_MISMATCH, result.describe()
    assert "MD5" in result.stderr
    assert list(result.output.parent.iterdir()) == []
    reported = await metric(supernode.api_url, "dragonfly_dfget_download_failed_total", reason="3")
    assert reported == 1, "the failure is reported with the reason the source was tried for (download error)"


async def test_corrupt_piece_from_a_peer_is_refetched(origin: OriginServer, supernode: SupernodeProcess,
                                                      nodes: DfgetNodes) -> None:
    """Peer A serves pieces with a flipped byte: B notices by MD5, reports each, and still gets the file.

    Every piece A serves is corrupt, so whichever of them the scheduler hands B from A (it weighs A against
    the CDN) is caught.
    """
    size = 16 * MIB
    origin.files["/f.bin"] = data = pattern_bytes(size)
    node = f"127.0.0.1:{supernode.api_port}"
    first = await nodes.run(origin.url("/f.bin"), "--node", node, ip="127.0.0.2")
    assert first.code == 0, first.describe()
    (service,) = (first.home / "data").glob("*.service")
    with service.open("r+b") as handle:  # what A's uploader serves: one byte flipped in every piece
        for offset in range(1000, size, PIECE_DATA):
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))

    second = await nodes.run(origin.url("/f.bin"), "--node", node, ip="127.0.0.3")
    assert second.code == 0, second.describe()
    assert file_md5(second.output) == md5_hex(data), "a corrupt piece reached the output"
    retried = re.search(r"(\d+) pieces? retried", second.stdout)
    assert retried, second.stdout
    errors = await metric(supernode.api_url, "dragonfly_supernode_http_requests_total", handler="/peer/piece/error")
    assert errors == int(retried[1]) >= 1, "each corrupt piece is reported with /peer/piece/error"


async def test_peer_killed_mid_download(origin: OriginServer, supernode: SupernodeProcess,
                                        nodes: DfgetNodes) -> None:
    """B downloads from A's uploader, which is killed while the pieces are on the wire.

    A's uploads are limited to 2 MiB/s (``--totallimit``) so that the kill cuts pieces in the middle,
    instead of after the kernel has already buffered them whole.
    """
    origin.files["/f.bin"] = data = pattern_bytes(16 * MIB)
    node = f"127.0.0.1:{supernode.api_port}"
    first = await nodes.run(origin.url("/f.bin"), "--node", node, "--totallimit", "2M", ip="127.0.0.2",
                            alive_time="60s")
    assert first.code == 0, first.describe()
    assert first.seconds() < 6, "--totallimit limits uploads: A's own download (16 MiB at -s 20M) must not slow down"
    pid = uploader_pid(first.home)
    assert pid

    second = await nodes.start(origin.url("/f.bin"), "--node", node, ip="127.0.0.3")
    log = second.home / "logs" / "dfclient.log"
    deadline = time.monotonic() + 15
    while "registered with" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "B never registered"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # B's first pieces come from A, the only peer holder, at 2 MiB/s: seconds each
    os.kill(pid, signal.SIGKILL)
    result = await second.wait()

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data)
    retried = re.search(r"\d+ pieces? retried", result.stdout)
    assert retried, f"the pieces cut by the kill were not retried: {result.stdout}"
    assert result.counts()["supernode"] >= 12, result.stdout


async def test_two_supernodes_one_stopped(origin: OriginServer, supernode: SupernodeProcess, nodes: DfgetNodes,
                                          tmp_path: Path) -> None:
    """The task's own supernode (by consistent hashing) is down: the next one on the ring serves it."""
    other = SupernodeProcess(tmp_path / "home2", tmp_path / "sn2", api_port=free_port(), cdn_port=free_port())
    await other.start()
    try:
        origin.files["/f.bin"] = data = pattern_bytes(9 * MIB)
        url = origin.url("/f.bin")
        both = [Node("127.0.0.1", supernode.api_port), Node("127.0.0.1", other.api_port)]
        owner, fallback = Locator(both).order(ids.task_id(url))
        stopped, alive = (supernode, other) if owner.port == supernode.api_port else (other, supernode)
        assert fallback.port == alive.api_port
        await stopped.stop()

        results = await asyncio.gather(*(
            nodes.run(url, "--node", f"{both[0]},{both[1]}", ip=ip) for ip in ("127.0.0.2", "127.0.0.3")))
        for result in results:
            assert result.code == 0, result.describe()
            assert file_md5(result.output) == md5_hex(data)
            assert f"from supernode {fallback}" in result.stdout, result.stdout
            assert result.counts()["source"] == 0
        check_origin_sent_once(origin, "/f.bin", len(data))
    finally:
        await other.stop()


async def test_supernode_stopped_mid_download_migrates(origin: OriginServer, supernode: SupernodeProcess,
                                                       nodes: DfgetNodes, tmp_path: Path) -> None:
    """The task's supernode goes away while pieces flow: the run moves to the next node and finishes there."""
    other = SupernodeProcess(tmp_path / "home2", tmp_path / "sn2", api_port=free_port(), cdn_port=free_port())
    await other.start()
    try:
        origin.files["/f.bin"] = data = pattern_bytes(16 * MIB)
        url = origin.url("/f.bin")
        both = [Node("127.0.0.1", supernode.api_port), Node("127.0.0.1", other.api_port)]
        owner, fallback = Locator(both).order(ids.task_id(url))
        stopped, alive = (supernode, other) if owner.port == supernode.api_port else (other, supernode)

        running = await nodes.start(url, "--node", f"{both[0]},{both[1]}", "-s", "4M")
        log = running.home / "logs" / "dfclient.log"
        deadline = time.monotonic() + 15
        while "registered with" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "never registered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        await stopped.stop()
        result = await running.wait()

        assert result.code == 0, result.describe()
        assert file_md5(result.output) == md5_hex(data)
        assert "1 migration" in result.stdout and f"from supernode {fallback}" in result.stdout, result.stdout
        assert f"migrated from supernode {owner} to {fallback}" in result.stderr, result.stderr
        assert await metric(alive.api_url, "dragonfly_dfget_download_total") == 1, "reported where it finished"
    finally:
        await other.stop()


async def test_missing_source_fails_with_the_source_exit_code(origin: OriginServer, supernode: SupernodeProcess,
                                                             nodes: DfgetNodes) -> None:
    """The supernode answers 607 (URL not reachable): dfget tries the source itself, which answers 404."""
    result = await nodes.run(origin.url("/missing.bin"), "--node", f"127.0.0.1:{supernode.api_port}")
    assert result.code == ExitCode.SOURCE_FAILED, result.describe()
    assert "not reachable" in result.stderr and "answered HTTP 404" in result.stderr, result.stderr
    assert list(result.output.parent.iterdir()) == []


async def test_patterns_cdn_and_source(origin: OriginServer, supernode: SupernodeProcess,
                                       nodes: DfgetNodes) -> None:
    origin.files["/f.bin"] = data = pattern_bytes(5 * MIB)
    node = f"127.0.0.1:{supernode.api_port}"
    cdn = await nodes.run(origin.url("/f.bin"), "--node", node, "-p", "cdn", ip="127.0.0.2")
    assert cdn.code == 0, cdn.describe()
    assert cdn.output.read_bytes() == data and cdn.counts()["supernode"] == 5.0
    assert not (cdn.home / "meta" / "host.meta").exists(), "-p cdn shares nothing: no uploader"
    source = await nodes.run(origin.url("/f.bin"), "--node", node, "-p", "source", ip="127.0.0.3")
    assert source.code == 0, source.describe()
    assert source.output.read_bytes() == data and "(--pattern source; back-source reason 100)" in source.stderr
    assert origin.full_transfers["/f.bin"] == 2, "once for the CDN, once for -p source"
    assert await metric(supernode.api_url, "dragonfly_dfget_download_total") == 1, "-p source reports nothing"
