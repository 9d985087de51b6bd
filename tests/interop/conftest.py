"""Fixtures of the interop tier: the real Go Dragonfly v1.0.6 programs beside ours, on loopback.

The Go binaries live outside the repository, in ``{shared}/dfv1/bin`` where ``{shared}`` is
``$DF_SHARED`` if set, else ``shared/`` beside the clone (as CI lays it out). Where they, or nginx for
the Go supernode's download port, are absent, the tests that need them skip naming what is missing.

Expensive servers (the origin, our supernode, the Go supernode with nginx) are module-scoped and
shared by the tests of a module, which therefore run on one module-scoped event loop and use their
own file paths (so tasks never collide) and metric deltas (never absolute counts). Every dfget run,
Go or ours, and every uploader it spawns, is stopped when its test ends.

The peers of this tier use 127.0.77.0/24: the other dfget tests and the benchmarks use 127.0.0.2-9,
and every dfget (Go or ours) picks its uploader port by the same clock formula, so on a shared
machine a peer here could otherwise meet another suite's uploader on its address.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.dfget.conftest import DfgetNodes
from tests.spec import shared_dir
from tests.v1proto import OriginServer, SupernodeProcess, free_port, running

from .goprocs import GoDfgetNodes, GoSupernode, Nginx

MIB = 1024 * 1024
#: Our supernode hands out at most one CDN piece per task at a time here (Go: 4, ours by default: 64),
#: so that every multi-peer case needs pieces to flow between peers, whatever the timing.
CDN_TASK_LIMIT = "1"


def _go_path(name: str) -> Path:
    return shared_dir() / "dfv1" / "bin" / name


def _nginx_path() -> Path | None:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    return Path(found) if found else None


def missing(*go_programs: str, nginx: bool = False) -> list[str]:
    """What of the Go programs (and nginx) a test needs is absent, each named with where it was looked for."""
    absent = [f"the Go Dragonfly v1.0.6 {name} ({_go_path(name)}: no such executable; set DF_SHARED to the "
              "directory holding dfv1/bin, or put shared/ beside the clone)"
              for name in go_programs if not os.access(_go_path(name), os.X_OK)]
    if nginx and _nginx_path() is None:
        absent.append("nginx, the Go supernode's download port (apt-get install nginx)")
    return absent


def requires(*go_programs: str, nginx: bool = False) -> pytest.MarkDecorator:
    """Skip, before any fixture starts a server, when something the test runs is absent."""
    absent = missing(*go_programs, nginx=nginx)
    return pytest.mark.skipif(bool(absent), reason=f"interop: missing {'; '.join(absent)}")


def go_binary(name: str) -> Path:
    if missing(name):
        pytest.skip(f"interop: missing {'; '.join(missing(name))}")
    return _go_path(name)


def nginx_binary() -> Path:
    found = _nginx_path()
    if found is None:
        pytest.skip(f"interop: missing {'; '.join(missing(nginx=True))}")
    return found


def assert_fetched_once(origin: OriginServer, path: str, size: int) -> None:
    """The origin sent the file once; the supernode's length probe may add a little before it closes."""
    assert origin.full_transfers[path] == 1, origin.log
    assert size <= origin.bytes_sent[path] <= size * 1.5 + MIB, origin.bytes_sent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def origin() -> AsyncIterator[OriginServer]:
    """A counting origin on 127.0.0.1, shared by the module: each test publishes its own paths."""
    server = OriginServer("127.0.0.1")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def our_supernode(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SupernodeProcess]:
    """Our supernode (``python -m supernode``) with ``--cdn-task-limit 1``, shared by the module."""
    root = tmp_path_factory.mktemp("our-supernode")
    node = SupernodeProcess(root / "home", root, api_port=free_port(), cdn_port=free_port(),
                            extra_args=("--cdn-task-limit", CDN_TASK_LIMIT))
    async with running(node):
        yield node


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def go_supernode(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GoSupernode]:
    """The Go supernode with nginx serving ``{home}/repo`` on its download port, shared by the module."""
    binary, nginx_path = go_binary("supernode"), nginx_binary()
    root = tmp_path_factory.mktemp("go-supernode")
    node = GoSupernode(binary, root / "home", free_port(), free_port())
    nginx = Nginx(nginx_path, root / "nginx", node.home / "repo", node.download_port)
    (node.home / "repo").mkdir(parents=True)
    try:
        await nginx.start()
        await node.start()
    except RuntimeError as exc:
        await nginx.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        await node.stop()
        await nginx.stop()
        print(f"Go supernode logs:\n{node.log_tail(3000)}\nnginx access log tail:\n{nginx.access_log()[-2000:]}")


@pytest_asyncio.fixture(loop_scope="module")
async def go_nodes(our_supernode: SupernodeProcess, tmp_path: Path) -> AsyncIterator[GoDfgetNodes]:
    """Go ``dfget`` runs against our supernode; every run and uploader is stopped at teardown."""
    runner = GoDfgetNodes(go_binary("dfget"), tmp_path, f"127.0.0.1:{our_supernode.api_port}")
    try:
        yield runner
    finally:
        await runner.close()


@pytest_asyncio.fixture(loop_scope="module")
async def nodes(tmp_path: Path) -> AsyncIterator[DfgetNodes]:
    """Our ``python -m dfget`` runs (the ``--node`` is given per run); stopped at teardown."""
    runner = DfgetNodes(tmp_path / "dfget")
    runner.root.mkdir(parents=True)
    try:
        yield runner
    finally:
        await runner.close()
