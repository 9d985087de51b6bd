"""The kopf side of the operator: which handler runs when, and the operator's own lifecycle.

:class:`PreheatOperator` registers its handlers into a kopf registry it is given (or a fresh one),
with the settings it is given, instead of decorating module-level functions at import time: the same
code then runs under ``kopf run`` (:mod:`dfoperator.registered` puts it into kopf's default registry)
and in tests, where each operator gets its own registry, settings, metrics and clients, and can be
stopped and started again on the same cluster state.

Handlers, all on ``preheats.dragonfly.d7y.io/v1alpha1``:
- ``reconcile`` on create, on a change of ``spec`` and on resume (operator start): submit;
- ``poll``, a timer while the phase is Pending or Running: follow the supernodes;
- ``cancel`` on delete (kopf adds our finalizer because of it): cancel unfinished preheats;
- ``preheat_refs``, an index of the preheat IDs in every status, so that deleting one Preheat never
  cancels a preheat that another Preheat with the same content still waits for;
- ``observe``, on every event: the ``dragonfly_operator_preheats{phase}`` gauge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf

from .config import OperatorConfig
from .kube import KubeClient, connection_info, load_configuration
from .metrics import MetricsServer, OperatorMetrics
from .reconciler import PreheatObject, PreheatRefs, Reconciler, object_memory
from .resource import ANNOTATION_PREFIX, FINALIZER, GROUP, PLURAL, VERSION
from .state import Phase
from .supernode import SupernodeClient

log = logging.getLogger(__name__)

RESOURCE = (GROUP, VERSION, PLURAL)


def _active(status: kopf.Status, **_: Any) -> bool:
    """Poll only while there is something to wait for; finished objects cost nothing."""
    return status.get("phase") in (Phase.PENDING.value, Phase.RUNNING.value)


def _generation(meta: kopf.Meta) -> int:
    return int(meta.get("generation") or 1)


class PreheatOperator:
    def __init__(self, config: OperatorConfig | None = None, *, registry: kopf.OperatorRegistry | None = None) -> None:
        self.config = config if config is not None else OperatorConfig()
        self.registry = registry if registry is not None else kopf.OperatorRegistry()
        self.metrics = OperatorMetrics()
        self.metrics_server: MetricsServer | None = None
        self._reconciler: Reconciler | None = None
        self._busy = 0
        """Handler calls in flight: the cleanup waits for them before it closes the clients they use."""
        self._idle = asyncio.Event()
        self._phases: dict[tuple[str, str], str] = {}
        self._register()

    @property
    def metrics_url(self) -> str:
        return self.metrics_server.url if self.metrics_server is not None else ""

    def _register(self) -> None:
        registry = self.registry
        kopf.on.startup(id="startup", registry=registry)(self.startup)
        kopf.on.cleanup(id="cleanup", registry=registry)(self.cleanup)
        kopf.on.login(id="login", registry=registry)(self.login)
        kopf.on.probe(id="preheats", registry=registry)(self.probe)
        kopf.index(*RESOURCE, id="preheat_refs", registry=registry)(self.index_preheat_refs)
        kopf.on.event(*RESOURCE, id="observe", registry=registry)(self.observe)
        kopf.on.resume(*RESOURCE, id="reconcile", registry=registry)(self.on_spec)
        kopf.on.create(*RESOURCE, id="reconcile", registry=registry)(self.on_spec)
        kopf.on.update(*RESOURCE, id="reconcile", field="spec", registry=registry)(self.on_spec)
        kopf.timer(*RESOURCE, id="poll", interval=self.config.poll_interval, when=_active,
                   registry=registry)(self.on_timer)
        kopf.on.delete(*RESOURCE, id="cancel", registry=registry)(self.on_delete)

    # ------------------------------------------------------------------ operator lifecycle

    async def startup(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        self._idle = asyncio.Event()  # of this run's loop (tests start operators in several loops)
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # Events: our milestones and kopf's failures, not every log line
        kube = await KubeClient.connect(request_timeout=self.config.request_timeout)
        supernodes = SupernodeClient(timeout=self.config.request_timeout, metrics=self.metrics)
        self._reconciler = Reconciler(self.config, supernodes=supernodes, kube=kube)
        if self.config.metrics_port >= 0:
            server = MetricsServer(self.metrics, host=self.config.metrics_host, port=self.config.metrics_port)
            await server.start()
            self.metrics_server = server

    async def cleanup(self, **_: Any) -> None:
        """Stop taking handler calls, let those in flight finish, then close the clients.

        kopf runs this on SIGTERM while timers and handlers may still be mid-request; closing the
        clients under them failed their status write ("Session is closed"), and a submission whose
        status was never written is POSTed again by the next operator.
        """
        reconciler, self._reconciler = self._reconciler, None
        if self._busy:
            try:  # each call ends within its own request timeouts
                await asyncio.wait_for(self._idle.wait(), 2 * self.config.request_timeout + 1)
            except TimeoutError:
                log.warning("stopping with %d handler call(s) still running", self._busy)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if reconciler is not None:
            await reconciler.supernodes.close()
            await reconciler.kube.close()

    async def login(self, **_: Any) -> kopf.ConnectionInfo:
        """kopf logs in exactly as our kubernetes client does (see :func:`dfoperator.kube.load_configuration`)."""
        return await connection_info(await load_configuration())

    def probe(self, **_: Any) -> dict[str, int]:
        """Liveness details: how many Preheats are in each phase."""
        return dict(collections.Counter(self._phases.values()))

    # ------------------------------------------------------------------ per-object handlers

    def index_preheat_refs(self, namespace: str | None, name: str, status: kopf.Status,
                           **_: Any) -> dict[tuple[str, str], str]:
        return {(str(e["url"]), str(e["preheatID"])): f"{namespace}/{name}"
                for e in status.get("supernodes") or () if e.get("url") and e.get("preheatID")}

    def observe(self, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        key = (namespace or "", name)
        if type == "DELETED":
            self._phases.pop(key, None)
        else:
            self._phases[key] = (body.get("status") or {}).get("phase") or Phase.PENDING.value
        self.metrics.set_phases(collections.Counter(self._phases.values()))

    def _object(self, body: kopf.Body, namespace: str | None, name: str, memo: Any) -> PreheatObject:
        if namespace is None:  # the CRD is namespaced: only a misconfigured CRD gets here
            raise kopf.PermanentError("Preheat must be a namespaced resource")
        return PreheatObject(namespace=namespace, name=name, body=body, memory=object_memory(memo))

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[Reconciler]:
        """The reconciler, counted as in use until the handler is done with it."""
        if self._reconciler is None:
            raise kopf.TemporaryError("the operator is starting or stopping", delay=1)
        self._busy += 1
        self._idle.clear()
        try:
            yield self._reconciler
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    # kopf passes indexes as keyword arguments named after them: ``preheat_refs`` comes in ``kwargs``.

    async def on_spec(self, *, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, namespace: str | None,
                      name: str, memo: Any, retry: int, **kwargs: Any) -> None:
        refs: PreheatRefs = kwargs["preheat_refs"]
        async with self._running() as reconciler:
            with self.metrics.track("reconcile"):
                await reconciler.reconcile(self._object(body, namespace, name, memo), spec=spec,
                                           generation=_generation(meta), retry=retry, refs=refs)

    async def on_timer(self, *, body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, namespace: str | None,
                       name: str, memo: Any, **_: Any) -> None:
        if self._reconciler is None:
            return  # kopf stops timers after the cleanup handler: nothing to poll with, and nothing lost
        async with self._running() as reconciler:
            with self.metrics.track("poll"):
                await reconciler.poll(self._object(body, namespace, name, memo), spec=spec,
                                      generation=_generation(meta))

    async def on_delete(self, *, body: kopf.Body, namespace: str | None, name: str, memo: Any, retry: int,
                        **kwargs: Any) -> None:
        refs: PreheatRefs = kwargs["preheat_refs"]
        async with self._running() as reconciler:
            with self.metrics.track("cancel"):
                await reconciler.cancel(self._object(body, namespace, name, memo), retry=retry, refs=refs)
