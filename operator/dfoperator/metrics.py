"""Every Prometheus metric of the operator, in one registry of its own, and the ``/metrics`` server.

A registry per operator instance (not the process-wide default) so that two operators in one process
(tests restart one in place) never share counters, and nothing else in the process leaks into ours.
Label values are small enums, except ``supernode``: the base URL of each supernode, which is as many
series as there are supernode pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from .state import Phase

log = logging.getLogger(__name__)

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.preheats = Gauge("dragonfly_operator_preheats", "Preheat resources by phase, as the operator sees them",
                              ["phase"], registry=self.registry)
        self.reconcile_total = Counter("dragonfly_operator_reconcile", "Handler runs by handler and result "
                                       "(success, retry, failure, error)", ["handler", "result"],
                                       registry=self.registry)
        self.reconcile_duration = Histogram("dragonfly_operator_reconcile_duration_seconds",
                                            "Duration of one handler run", ["handler"],
                                            buckets=_DURATION_BUCKETS, registry=self.registry)
        self.supernode_errors = Counter("dragonfly_operator_supernode_request_errors",
                                        "Failed requests to a supernode's preheat API",
                                        ["supernode", "operation"], registry=self.registry)
        for phase in Phase:
            self.preheats.labels(phase=phase.value).set(0)

    def set_phases(self, counts: Mapping[str, int]) -> None:
        for phase in Phase:
            self.preheats.labels(phase=phase.value).set(counts.get(phase.value, 0))

    def supernode_error(self, supernode: str, operation: str) -> None:
        self.supernode_errors.labels(supernode=supernode, operation=operation).inc()

    @contextlib.contextmanager
    def track(self, handler: str) -> Iterator[None]:
        """Count and time one handler run; the result comes from how kopf will read its outcome."""
        started = time.perf_counter()
        result: str | None = "error"
        try:
            yield
            result = "success"
        except kopf.TemporaryError:
            result = "retry"
            raise
        except kopf.PermanentError:
            result = "failure"
            raise
        except asyncio.CancelledError:
            result = None  # the operator is stopping: not an outcome of the handler
            raise
        finally:
            if result is not None:
                self.reconcile_total.labels(handler=handler, result=result).inc()
                self.reconcile_duration.labels(handler=handler).observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on its own port (kopf's liveness server cannot serve other paths)."""

    def __init__(self, metrics: OperatorMetrics, *, host: str, port: int) -> None:
        self._metrics = metrics
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/metrics"
        log.info("metrics served on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
