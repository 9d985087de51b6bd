"""What the handlers may reach on the supernode: the managers they call and a few node-wide answers.

Handlers get this protocol, not :class:`supernode.node.Supernode`, so that ``api/`` depends on the managers
below it and never on the composition root above it (which imports ``api/`` to build its routes). It also
keeps in view what a request can touch: the stores, the settings and the ports' lifecycle are not here.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from ..managers.preheat import PreheatManager
from ..managers.pull import PullLoop
from ..managers.repair import PieceRepair
from ..managers.task import TaskManager
from ..metrics import Metrics
from ..models import TaskMetricsRequest
from ..peers import PeerRegistry
from ..security import ApiToken, SourceAllowList


class Services(Protocol):
    tasks: TaskManager
    pulls: PullLoop
    peers: PeerRegistry
    preheats: PreheatManager
    repair: PieceRepair
    metrics: Metrics
    api_token: ApiToken
    openapi: dict[str, Any]

    @property
    def source_allow(self) -> SourceAllowList:
        """The origins the supernode may fetch from: a preheat outside it is refused at once (403)."""

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type, with scrape-time gauges refreshed."""

    def report_download(self, req: TaskMetricsRequest) -> None:
        """Count one dfget's end-of-download report."""


SERVICES: web.AppKey[Services] = web.AppKey("services")
