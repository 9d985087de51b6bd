"""An in-process supernode behind aiohttp's test client, with a real origin on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from supernode.config import Settings
from supernode.node import Supernode


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Supernode]:
    supernode = Supernode(Settings(home_dir=tmp_path / "home", advertise_ip="127.0.0.1", download_port=18001,
                                   source_probe_timeout=2.0))
    try:
        yield supernode
    finally:
        await supernode.stop()


@pytest.fixture
async def api(node: Supernode, aiohttp_client: pytest.FixtureRequest) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = await aiohttp_client(node.api_app())  # type: ignore[operator]
    return client
