"""Fixtures of the operator tests: kmock as the cluster, the real operator in the test's loop, and a
counting proxy in front of the real supernode (the ``supernode`` and ``origin`` fixtures of
``tests/conftest.py``).

Everything binds 127.0.0.1 and is stopped at teardown; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from dfoperator.config import OperatorConfig
from dfoperator.handlers import PreheatOperator
from tests.operator.helpers import CountingProxy, SlowOrigin, StampingEmulator, declare_resources, write_kubeconfig
from tests.v1proto import SupernodeProcess

START_WITHIN = 15.0
STOP_WITHIN = 15.0


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StampingEmulator]:
    """kmock on 127.0.0.1 with our resource declared, and ``$KUBECONFIG`` pointing at it."""
    async with StampingEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1"):
        declare_resources(emulator)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(emulator.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the CI pod's own cluster
        yield emulator


@pytest.fixture
async def proxy(supernode: SupernodeProcess) -> AsyncIterator[CountingProxy]:
    """The supernode's API behind a proxy that logs every request the operator makes."""
    counting = CountingProxy(supernode.api_url)
    await counting.start()
    try:
        yield counting
    finally:
        await counting.stop()


@pytest.fixture
async def slow_origin() -> AsyncIterator[SlowOrigin]:
    origin = SlowOrigin(b"slow" * 256 * 1024)
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


def operator_config(**overrides: Any) -> OperatorConfig:
    """Settings for tests: fast polls and retries, metrics on a free loopback port."""
    values: dict[str, Any] = {
        "supernodes": [], "poll_interval": 0.2, "retry_attempts": 3, "retry_backoff": 0.2,
        "retry_backoff_max": 2.0, "request_timeout": 3.0, "metrics_host": "127.0.0.1", "metrics_port": 0,
        "supernode_namespace": "dragonfly",
    }
    values.update(overrides)
    return OperatorConfig(**values)


class Operators:
    """Runs the real operator (``kopf.operator``) in a thread with its own event loop; stops what it started.

    Not in the test's loop: when kopf stops, it waits 5 s for, then cancels, every task created in its
    loop since it started (kopf's ``run_tasks``), which there would include the connections that kmock,
    the origins and the proxy are serving. In its own thread it stops in well under a second and leaves
    the test's servers alone, as a separate operator process would.
    """

    def __init__(self) -> None:
        self._running: dict[int, tuple[threading.Event, threading.Thread]] = {}

    async def start(self, config: OperatorConfig) -> PreheatOperator:
        operator = PreheatOperator(config)
        stop, ready = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(kopf.operator(registry=operator.registry, clusterwide=True, standalone=True,
                                          stop_flag=stop, ready_flag=ready, memo=kopf.Memo()))
            except BaseException as exc:  # reported by start() or stop()
                errors.append(exc)

        thread = threading.Thread(target=run, name=f"operator-{len(self._running)}", daemon=True)
        thread.start()
        self._running[id(operator)] = (stop, thread)
        if not await asyncio.to_thread(ready.wait, START_WITHIN):
            await self.stop(operator)
            raise AssertionError(f"the operator did not start within {START_WITHIN:g}s: {errors}")
        return operator

    async def stop(self, operator: PreheatOperator) -> None:
        stop, thread = self._running.pop(id(operator))
        stop.set()
        await asyncio.to_thread(thread.join, STOP_WITHIN)
        if thread.is_alive():
            raise AssertionError(f"the operator did not stop within {STOP_WITHIN:g}s")

    async def stop_all(self) -> None:
        for stop, _ in self._running.values():
            stop.set()
        for _, thread in self._running.values():
            await asyncio.to_thread(thread.join, STOP_WITHIN)
        self._running.clear()


@pytest.fixture
async def operators(cluster: StampingEmulator) -> AsyncIterator[Operators]:
    running = Operators()
    try:
        yield running
    finally:
        await running.stop_all()


