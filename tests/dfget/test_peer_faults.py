"""The real dfget against a bad peer the supernode still lists as a source: one that stalls, one that is gone.

Peer A is a dfget-v1 double (:class:`~tests.v1proto.V1Client` with its :class:`~tests.v1proto.V1Uploader`
on 127.0.0.2) that downloads the file first, so the supernode holds it as a source of every piece, and
prefers it to the CDN. Then A's uploader is replaced by a TCP server that accepts and never answers, or
simply stopped. The real ``python -m dfget`` on 127.0.0.3 is handed A's pieces, must give up on them
(by its per-piece timeout, or at once on a refused connection) and finish MD5-correct from the CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.v1proto import ClientFactory, OriginServer, SupernodeProcess, V1Client, pattern_bytes

from .conftest import DfgetNodes, file_md5, md5_hex, metric

MIB = 1024 * 1024
SIZE = 16 * MIB  # five pieces of 4 MiB (less the 5 framing bytes each)
#: dfget's per-piece timeout is pieceSize / --minrate + 10 s (as Go's CalculateTimeout): about 10.2 s at 20M.
MIN_RATE = "20M"
#: The default whole-run timeout is fileLength / --minrate + 10 s, 10.8 s here: it would expire right after the
#: piece timeout and send the run to the source. An explicit --timeout leaves room to fetch the pieces elsewhere.
RUN_TIMEOUT = "20s"


class SilentServer:
    """Accepts TCP connections on ``ip:port`` and never sends a byte; counts what it accepted."""

    def __init__(self, ip: str, port: int) -> None:
        assert ip.startswith("127.")
        self.ip = ip
        self.port = port
        self.accepted = 0
        self.received = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):  # take the request, answer nothing
                self.received += len(chunk)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.ip, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


async def _seed_peer(origin: OriginServer, make_client: ClientFactory) -> tuple[bytes, str, V1Client]:
    """Peer A downloads the file through the supernode: afterwards it holds (and is listed for) every piece."""
    origin.files["/f.bin"] = data = pattern_bytes(SIZE)
    url = origin.url("/f.bin")
    peer = await make_client("127.0.0.2")
    seeded = await peer.download(url)
    assert seeded.output.read_bytes() == data
    assert len(seeded.pieces) == 5 and not seeded.failures
    return data, url, peer


def _log(home: Path) -> str:
    path = home / "logs" / "dfclient.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def test_stalled_peer_pieces_are_fetched_elsewhere(origin: OriginServer, supernode: SupernodeProcess,
                                                         make_client: ClientFactory, nodes: DfgetNodes) -> None:
    data, url, peer = await _seed_peer(origin, make_client)
    uploader = peer.uploader
    assert uploader is not None
    ip, port = uploader.ip, uploader.port
    await uploader.stop()
    silent = SilentServer(ip, port)
    await silent.start()
    try:
        started = time.monotonic()
        result = await (await nodes.start(url, "--node", f"127.0.0.1:{supernode.api_port}", "-m", MIN_RATE,
                                          "--timeout", RUN_TIMEOUT, ip="127.0.0.3")).wait(within=22.0)
        elapsed = time.monotonic() - started
    finally:
        await silent.stop()

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data), "the output is not the file"
    assert silent.accepted > 0 and silent.received > 0, "the stalled peer was never asked for a piece"
    assert "retried" in result.stdout, f"no piece failed, so the stall went unnoticed: {result.stdout}"
    assert result.counts() == {"peers": 0, "supernode": 16.0, "source": 0}, result.stdout
    assert f"{ip}:{port}" in _log(result.home) and "TimeoutError" in _log(result.home)
    # The stall costs one per-piece timeout (the stalled pieces run side by side), no more.
    assert 10.0 <= elapsed < 18.0, f"dfget took {elapsed:.1f}s"


async def test_vanished_peer_pieces_are_fetched_elsewhere(origin: OriginServer, supernode: SupernodeProcess,
                                                          make_client: ClientFactory, nodes: DfgetNodes) -> None:
    data, url, peer = await _seed_peer(origin, make_client)
    uploader = peer.uploader
    assert uploader is not None
    await uploader.stop()  # still registered: the supernode was never told (no /peer/service/down)

    started = time.monotonic()
    result = await (await nodes.start(url, "--node", f"127.0.0.1:{supernode.api_port}", ip="127.0.0.3")).wait(
        within=20.0)
    elapsed = time.monotonic() - started

    assert result.code == 0, result.describe()
    assert file_md5(result.output) == md5_hex(data), "the output is not the file"
    assert "retried" in result.stdout, f"the vanished peer was never tried: {result.stdout}"
    assert result.counts() == {"peers": 0, "supernode": 16.0, "source": 0}, result.stdout
    log = _log(result.home)
    assert f"{uploader.ip}:{uploader.port}" in log and "failed" in log, log[-3000:]
    assert await metric(supernode.api_url, "dragonfly_supernode_pieces_served_total", source="peer") == 0
    assert elapsed < 10.0, f"a refused connection must fail fast, dfget took {elapsed:.1f}s"
