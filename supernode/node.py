"""The composition root: one supernode process, its managers, and its two HTTP ports.

``Supernode`` wires settings -> stores -> managers -> aiohttp apps, starts the API and download ports,
and tears everything down in reverse order. Tests start one in-process or as a real process through
``supernode.cli``; both paths go through here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Any

from aiohttp import web

from . import __version__
from .api.middleware import bearer_auth, errors, http_metrics
from .api.openapi import build_openapi
from .api.routes import add_routes
from .api.services import SERVICES
from .cdn.server import build_download_app
from .cdn.source import SourceClient
from .cdn.store import CacheStore
from .changes import TaskChanges
from .config import Settings
from .managers.cdn import CdnManager
from .managers.gc import GarbageCollector
from .managers.preheat import PreheatManager
from .managers.pull import PullLoop
from .managers.repair import PieceRepair
from .managers.task import TaskManager
from .metrics import PREHEAT_STATUSES, PREHEAT_TYPES, Metrics
from .models import CdnStatus, TaskMetricsRequest
from .peers import PeerRegistry
from .progress import Limits, ProgressState
from .security import ApiToken, SourceAllowList, server_ssl_context

log = logging.getLogger(__name__)


class Supernode:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(__version__)
        #: The download port's total egress rate C in bytes per second, None when unlimited: the piece
        #: server paces to it, and the scheduler takes it as the CDN's capacity (Limits.cdn_upload_rate).
        self.cdn_egress_rate: int | None = settings.cdn_egress_rate
        self.metrics.cdn_rate_limit_bytes.set(self.cdn_egress_rate or 0)
        self.store = CacheStore(settings.repo_dir)
        self.peers = PeerRegistry()
        self.progress = ProgressState(Limits(
            peer_up_limit=settings.up_limit, peer_down_limit=settings.down_limit,
            elimination_limit=settings.elimination_limit, failure_count_limit=settings.failure_count_limit,
            cdn_task_limit=settings.cdn_task_limit, cdn_upload_rate=float(self.cdn_egress_rate or 0),
            cdn_measure=settings.cdn_measure))
        self.metrics.cdn_capacity_bytes.set_function(lambda: self.progress.rates.cdn.rate)
        self.source = SourceClient(header_timeout=settings.source_probe_timeout,
                                   read_timeout=settings.source_read_timeout, allow=settings.allow_list)
        # Raises TokenError for an unreadable or empty token file: better not to start than to run open.
        self.api_token = ApiToken(token=settings.api_token.get_secret_value() if settings.api_token else None,
                                  path=settings.api_token_file)
        self.changes = TaskChanges()
        self.cdn = CdnManager(store=self.store, source=self.source, progress=self.progress, metrics=self.metrics,
                              rate=settings.cdn_rate, changes=self.changes,
                              piece_size=settings.piece_size_for)
        self.super_peer = self.peers.register(ip=settings.advertise_ip, host_name=socket.gethostname(),
                                              port=settings.download_port, version=__version__)
        self.progress.add_peer(self.super_peer.id, serves=False)
        self.tasks = TaskManager(settings=settings, peers=self.peers, progress=self.progress, cdn=self.cdn,
                                 metrics=self.metrics, super_peer=self.super_peer)
        self.pulls = PullLoop(settings=settings, tasks=self.tasks, peers=self.peers, progress=self.progress,
                              metrics=self.metrics, super_peer=self.super_peer, changes=self.changes)
        self.repair = PieceRepair(self.tasks)
        self.gc = GarbageCollector(settings=settings, tasks=self.tasks, store=self.store, metrics=self.metrics)
        self.preheats = PreheatManager(settings=settings, tasks=self.tasks, metrics=self.metrics)
        self.openapi: dict[str, Any] = build_openapi(auth=self.api_token.enabled)
        self._runners: list[web.AppRunner] = []

    def api_app(self) -> web.Application:
        app = web.Application(middlewares=[http_metrics, errors, bearer_auth], client_max_size=1024 * 1024)
        app[SERVICES] = self
        add_routes(app)
        return app

    @property
    def source_allow(self) -> SourceAllowList:
        return self.source.allow

    def render_metrics(self) -> tuple[bytes, str]:
        """Gauges that mirror live state are refreshed at scrape time rather than on every change."""
        counts = Counter(task.cdn_status for task in self.tasks.tasks.values())
        for status in CdnStatus:
            self.metrics.tasks.labels(cdnstatus=status.value).set(counts.get(status, 0))
        preheats = self.preheats.counts()
        for preheat_type in PREHEAT_TYPES:
            for preheat_status in PREHEAT_STATUSES:
                self.metrics.preheats.labels(type=preheat_type, status=preheat_status).set(
                    preheats.get((preheat_type, preheat_status), 0))
        return self.metrics.render()

    def report_download(self, req: TaskMetricsRequest) -> None:
        """dfget's end-of-download report (sent twice by dfget 1.0.x; both are counted, as upstream)."""
        labels = {"callsystem": req.call_system, "peer": req.ip}
        self.metrics.dfget_download_total.labels(**labels).inc()
        if req.success:
            self.metrics.dfget_download_duration_seconds.labels(**labels).observe(req.duration)
            self.metrics.dfget_download_size_bytes_total.labels(**labels).inc(max(req.file_length, 0))
        else:
            self.metrics.dfget_download_failed_total.labels(**labels, reason=req.backsource_reason).inc()

    async def start(self) -> None:
        """Bind both ports; on return the node serves requests."""
        await asyncio.to_thread(self.store.root.mkdir, parents=True, exist_ok=True)
        s = self.settings
        # The download port stays plain HTTP: dfget 1.0.x fetches pieces with http:// URLs only.
        tls = server_ssl_context(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
        for app, port, ssl_context in ((self.api_app(), s.port, tls),
                                       (build_download_app(self.store, self.metrics, self.cdn_egress_rate),
                                        s.download_port, None)):
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, s.listen_host, port, reuse_address=True, ssl_context=ssl_context).start()
        self.gc.start()
        self.preheats.start()
        log.info("supernode %s serving API on %s://%s:%d and CDN on %s:%d (advertised as %s), home %s", __version__,
                 "https" if tls else "http", s.listen_host, s.port, s.listen_host, s.download_port, s.advertise_ip,
                 s.home_dir)
        if self.api_token.enabled:
            log.info("the write API needs a bearer token; the dfget v1 endpoints stay open")
        if self.source.allow.enabled:
            log.info("fetching only from hosts in source_allow: %s", ", ".join(s.source_allow))

    async def stop(self) -> None:
        # The API closes first: nobody may read state this shutdown tears down. A preheat cancelled by
        # the shutdown is not a failed one, and an operator that polled it in between took it for one
        # and gave up instead of submitting it again to the restarted node.
        api_runner, others = self._runners[:1], self._runners[1:]
        for runner in api_runner:
            await runner.cleanup()
        await self.preheats.stop()
        await self.gc.stop()
        for runner in reversed(others):
            await runner.cleanup()
        self._runners.clear()
        await self.repair.close()
        await self.cdn.close()
        await self.source.close()
