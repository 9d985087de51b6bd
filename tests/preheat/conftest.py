"""Fixtures of the preheat tests: a started in-process supernode, and real registries on loopback.

The supernode runs in this process (``Supernode.start()`` binds its API and CDN ports on 127.0.0.1)
so that tests can read its cache and records directly; a test of the real ``python -m supernode``
process uses the ``supernode`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supernode.config import Settings
from supernode.node import Supernode
from tests.preheat.registry import (
    REGISTRY_BIN,
    CountingProxy,
    KeyPair,
    Pusher,
    RegistryProcess,
    TokenServer,
    basic,
    client_ssl,
    make_key_pair,
)
from tests.v1proto import free_port

USER, PASSWORD = "alice", "s3cret-pass"


@dataclass
class Registry:
    """One registry as a test sees it: URLs through the counting proxy, pushing straight to the registry."""

    process: RegistryProcess
    proxy: CountingProxy
    pusher: Pusher
    token: TokenServer | None = None
    tls: KeyPair | None = None

    def manifest_url(self, name: str, reference: str) -> str:
        return f"{self.proxy.url}/v2/{name}/manifests/{reference}"

    def blob_url(self, name: str, digest: str) -> str:
        return f"{self.proxy.url}/v2/{name}/blobs/{digest}"

    @property
    def ca_pem(self) -> str:
        assert self.tls is not None
        return self.tls.cert_pem


RegistryFactory = Callable[..., Awaitable[Registry]]


@pytest.fixture
async def make_registry(tmp_path: Path) -> AsyncIterator[RegistryFactory]:
    """``await make_registry(auth="none"|"basic"|"token", tls=False, anonymous_pull=True)``.

    Basic auth uses an htpasswd file with ``alice``; token auth a :class:`TokenServer` that knows
    ``alice`` and grants anonymous pulls when ``anonymous_pull``. Everything is stopped at teardown.
    """
    if shutil.which(REGISTRY_BIN) is None:
        pytest.skip(f"{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/test.sh does as root)")
    started: list[Registry] = []
    session = aiohttp.ClientSession()

    async def make(*, auth: str = "none", tls: bool = False, anonymous_pull: bool = True) -> Registry:
        workdir = tmp_path / f"registry-{len(started)}"
        keys = make_key_pair(workdir, "tls") if tls else None
        token: TokenServer | None = None
        authorization: Callable[[str], str] | None = None
        if auth == "token":
            token = TokenServer(make_key_pair(workdir, "token-signer"), users={USER: PASSWORD},
                                anonymous_pull=anonymous_pull)
            await token.start()
            issuer = token

            def authorization(name: str) -> str:
                return "Bearer " + issuer.issue([f"repository:{name}:pull,push"], subject=USER)
        elif auth == "basic":
            def authorization(name: str) -> str:
                return basic(USER, PASSWORD)
        process = RegistryProcess(workdir, htpasswd={USER: PASSWORD} if auth == "basic" else None, token=token,
                                  tls=keys)
        proxy = CountingProxy(process.url, tls=keys)
        registry = Registry(process, proxy, Pusher(session, process.url, ssl_ctx=client_ssl(keys.cert_pem)
                                                   if keys else None, authorization=authorization), token, keys)
        started.append(registry)
        await process.start()
        await proxy.start()
        return registry

    try:
        yield make
    finally:
        for registry in started:
            await registry.proxy.stop()
            registry.process.stop()
            if registry.token is not None:
                await registry.token.stop()
        await session.close()


NodeFactory = Callable[..., Awaitable[Supernode]]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await make_node(**settings)``: a started in-process supernode on free loopback ports."""
    nodes: list[Supernode] = []

    async def make(**overrides: Any) -> Supernode:
        values: dict[str, Any] = {
            "home_dir": tmp_path / f"home-{len(nodes)}", "listen_host": "127.0.0.1", "advertise_ip": "127.0.0.1",
            "port": free_port("127.0.0.1"), "download_port": free_port("127.0.0.1"), "source_probe_timeout": 3.0,
            "source_read_timeout": 10.0, **overrides}
        node = Supernode(Settings(**values))
        nodes.append(node)
        await node.start()
        return node

    try:
        yield make
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def node(make_node: NodeFactory) -> Supernode:
    return await make_node()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
