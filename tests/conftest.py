"""Fixtures that put the real supernode process between dfget-like clients and a local origin.

Everything is function-scoped and torn down at the end of its test, so no test can see another's
tasks, peers or cache; every server binds a 127.0.0.0/8 address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.v1proto import (
    ClientFactory,
    OriginServer,
    SupernodeProcess,
    UploaderFactory,
    V1Client,
    V1Uploader,
    free_port,
    running,
)


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[str], int]:
    """``free_port(host="127.0.0.1") -> int``: a port for servers that must be told theirs up front."""
    return free_port


@pytest.fixture
async def origin() -> AsyncIterator[OriginServer]:
    """An HTTP origin on 127.0.0.1: put ``origin.files["/x.bin"] = data``, fetch ``origin.url("/x.bin")``."""
    server = OriginServer("127.0.0.1")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def supernode(tmp_path: Path) -> AsyncIterator[SupernodeProcess]:
    """The real supernode (``python -m supernode``) on free ports, home under ``tmp_path/home``.

    Its stdout/stderr go to ``tmp_path/supernode.stdout|stderr``; the stderr tail is printed at teardown
    so that it shows up in the report of a failed test.
    """
    node = SupernodeProcess(
        tmp_path / "home", tmp_path, api_port=free_port("127.0.0.1"), cdn_port=free_port("127.0.0.1")
    )
    async with running(node):
        yield node


@pytest.fixture
async def make_uploader(tmp_path: Path) -> AsyncIterator[UploaderFactory]:
    """``await make_uploader(ip="127.0.0.2", **V1Uploader kwargs)``: a started uploader, stopped at teardown."""
    started: list[V1Uploader] = []

    async def make(ip: str = "127.0.0.2", **kwargs: Any) -> V1Uploader:
        uploader = V1Uploader(ip, tmp_path / f"uploader-{len(started)}-{ip}", **kwargs)
        await uploader.start()
        started.append(uploader)
        return uploader

    try:
        yield make
    finally:
        for uploader in started:
            await uploader.stop()


@pytest.fixture
async def make_client(
    supernode: SupernodeProcess, make_uploader: UploaderFactory, tmp_path: Path
) -> AsyncIterator[ClientFactory]:
    """``await make_client(ip="127.0.0.2", *, uploader=True, **V1Client kwargs)``: an open dfget double.

    ``uploader=True`` starts a fresh :class:`V1Uploader` on the same IP (a p2p peer), a
    :class:`V1Uploader` is used as given, ``None`` makes a cdn-pattern client (port 0).
    """
    opened: list[V1Client] = []

    async def make(ip: str = "127.0.0.2", *, uploader: V1Uploader | bool | None = True, **kwargs: Any) -> V1Client:
        peer_server = await make_uploader(ip) if uploader is True else uploader or None
        client = V1Client(
            supernode.api_url, tmp_path / f"client-{len(opened)}-{ip}", ip=ip, uploader=peer_server, **kwargs
        )
        await client.open()
        opened.append(client)
        return client

    try:
        yield make
    finally:
        for client in opened:
            await client.close()
