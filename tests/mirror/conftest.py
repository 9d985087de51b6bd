"""Fixtures of the mirror tests: nodes (loopback IP, containerd, ``dfget proxy``) around one supernode.

The registry fixtures (a real docker-registry behind a counting proxy, the token server, TLS) and
the supernode process are the preheat and dfget suites' own; what is added here is a node as
kubelet's containerd sees it: ``certs.d/<registry>/hosts.toml`` sending pulls to the node's mirror
first and to the registry (through the counting proxy) after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mirror.processes import CONTAINERD, Containerd, Mirror
from tests.preheat.conftest import Registry, http, make_registry  # noqa: F401 - shared registry fixtures
from tests.v1proto import free_port


def _missing() -> str:
    if os.geteuid() != 0:
        return "the mirror tests run containerd, which needs root"
    if shutil.which(CONTAINERD) is None:
        return "containerd is missing: apt-get install containerd (scripts/test.sh does as root)"
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "grpcio is missing (the test extra): pip install -r requirements-test.lock"
    return ""


@dataclass
class Node:
    """One simulated Kubernetes node."""

    ip: str
    containerd: Containerd
    mirror: Mirror

    async def pull(self, registry: Registry, image: str, within: float = 180.0) -> str:
        return await self.containerd.pull(f"{registry.proxy.host}/{image}", within)


MirrorFactory = Callable[..., Awaitable[Mirror]]
NodesFactory = Callable[..., Awaitable[list[Node]]]


def _mirror(registry: Registry, workdir: Path, ip: str, supernodes: list[str], args: list[str] | None) -> Mirror:
    return Mirror(workdir, ip, free_port(ip), registries=[f"{registry.proxy.host}={registry.proxy.url}"],
                  nodes=supernodes, extra=args)


async def _stop_mirror(mirror: Mirror) -> None:
    mirror.stop()
    await mirror.stop_uploader()
    print(f"--- mirror {mirror.ip} log tail ---\n{mirror.log_text(2500)}")


@pytest.fixture
async def make_mirror(tmp_path: Path) -> AsyncIterator[MirrorFactory]:
    """``await make_mirror(registry, supernodes=[...], mirror_args=[...])``: a started mirror on 127.0.0.21+."""
    started: list[Mirror] = []

    async def make(registry: Registry, *, supernodes: list[str], mirror_args: list[str] | None = None) -> Mirror:
        ip = f"127.0.0.{21 + len(started)}"
        mirror = _mirror(registry, tmp_path / f"mirror-{len(started)}", ip, supernodes, mirror_args)
        started.append(mirror)
        await mirror.start()
        return mirror

    try:
        yield make
    finally:
        for mirror in started:
            await _stop_mirror(mirror)


@pytest.fixture
async def make_nodes(tmp_path: Path) -> AsyncIterator[NodesFactory]:
    """``await make_nodes(registry, count, supernodes=[...], mirror_args=[...])``: started nodes, stopped at teardown.

    Node ``i`` is 127.0.0.(11+i). The mirror mirrors ``registry`` (by the counting proxy's address, which
    is the registry containerd knows); ``supernodes`` empty makes a registry-only mirror.
    """
    missing = _missing()
    if missing:
        pytest.skip(missing)
    started: list[Node] = []

    async def make(registry: Registry, count: int, *, supernodes: list[str],
                   mirror_args: list[str] | None = None) -> list[Node]:
        nodes = []
        for _ in range(count):
            index = len(started)
            ip = f"127.0.0.{11 + index}"
            workdir = tmp_path / f"node-{index}"
            mirror = _mirror(registry, workdir, ip, supernodes, mirror_args)
            containerd = Containerd(workdir / "containerd")
            node = Node(ip, containerd, mirror)
            started.append(node)
            nodes.append(node)
            await mirror.write_hosts(containerd.certs)
        await asyncio.gather(*(n.mirror.start() for n in nodes), *(n.containerd.start() for n in nodes))
        return nodes

    try:
        yield make
    finally:
        for node in started:
            node.containerd.stop()
            await _stop_mirror(node.mirror)
