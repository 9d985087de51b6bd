"""Every Prometheus metric of the supernode, in one module and on one registry per supernode.

Why one module: the metric catalogue is part of the public interface (dashboards, alerts and the
Helm chart's rules depend on it), so it is kept in one place that can be read and reviewed against the
Dragonfly v1 catalogue (spec §8) rather than scattered over the managers. Names, types, label names
(in the same order) and buckets are the v1 ones, with the buckets of the releases after 1.0.6, so that
existing Dragonfly dashboards keep working.

Why one registry per :class:`Metrics` instance instead of prometheus-client's global default
registry: a metric can be registered only once per registry, so with the global registry a second
supernode in the same process (as the tests start several) would fail with "Duplicated timeseries",
and the supernodes would share counts. Each supernode builds its own ``Metrics`` and serves
``Metrics.render()`` on ``/metrics``.

Compatibility notes:

* ``dragonfly_supernode_schedule_duration_milliseconds`` keeps its v1 name and buckets although it
  breaks the Prometheus base-unit rule; dashboards written for v1 query it by that name.
* prometheus-client also emits a ``<name>_created`` gauge for each counter and histogram series. The
  Go supernode does not; set ``PROMETHEUS_DISABLE_CREATED_SERIES=True`` in the environment (a
  process-wide prometheus-client switch) to drop them.

Extensions beyond v1 (same ``dragonfly_supernode_`` namespace, documented on each attribute below):
``source_bytes_total``, ``pieces_served_total{source}``, ``pieces_served_bytes_total{source}``,
``cdn_served_bytes_total``, ``cdn_rate_limit_bytes``, ``cdn_capacity_bytes``, ``tasks_failed_total{reason}``,
``cdn_cache_verify_failed_total`` and the preheat metrics ``preheats{type,status}``,
``preheats_finished_total{type,status}``, ``preheat_duration_seconds{type,status}`` and
``preheat_bytes_total{type}``.
None of them uses a high-cardinality label: ``source`` and ``reason`` take values from the small
fixed sets :data:`PIECE_SOURCES` and :data:`TASK_FAILURE_REASONS`.
"""

from __future__ import annotations

import platform
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NAMESPACE: Final = "dragonfly"
SUPERNODE: Final = "supernode"
DFGET: Final = "dfget"

#: ``http_request_duration_seconds`` (post-1.0.6; v1.0.6 had .1 .2 .4 1 3 8 20 60 120).
HTTP_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.02, 0.04, 0.1, 0.2, 0.4, 1, 2, 4, 8, 20, 60, 120,
)
#: ``http_request_size_bytes`` and ``http_response_size_bytes``: Go's ``ExponentialBuckets(100, 10, 8)``.
HTTP_SIZE_BUCKETS: Final[tuple[float, ...]] = tuple(100.0 * 10**k for k in range(8))
#: ``schedule_duration_milliseconds``: Go's ``ExponentialBuckets(0.01, 2, 7)`` (post-1.0.6).
SCHEDULE_DURATION_BUCKETS: Final[tuple[float, ...]] = tuple(0.01 * 2**k for k in range(7))
#: ``dragonfly_dfget_download_duration_seconds`` (post-1.0.6; v1.0.6 had 10 30 60 120 300 600).
DFGET_DURATION_BUCKETS: Final[tuple[float, ...]] = (1, 2, 5, 10, 30, 60, 120, 300, 600)

#: ``preheat_duration_seconds``: from creation to SUCCESS or FAILED (the Go worker gave up at 30 min).
PREHEAT_DURATION_BUCKETS: Final[tuple[float, ...]] = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
#: Values of the ``type`` label of the preheat metrics, and of their ``status`` label.
PREHEAT_TYPES: Final[tuple[str, ...]] = ("file", "image")
PREHEAT_STATUSES: Final[tuple[str, ...]] = ("WAITING", "RUNNING", "SUCCESS", "FAILED")

#: Values of the ``source`` label of ``pieces_served_total`` / ``pieces_served_bytes_total``.
PIECE_SOURCES: Final[tuple[str, ...]] = ("cdn", "peer")
#: Values of the ``reason`` label of ``tasks_failed_total``.
TASK_FAILURE_REASONS: Final[tuple[str, ...]] = (
    "source_not_found",
    "source_auth",
    "source_error",
    "md5_mismatch",
    "length_mismatch",
    "disk",
    "other",
)

_GO_ARCH: Final[dict[str, str]] = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def _go_os() -> str:
    """The OS as Go's ``runtime.GOOS`` spells it (``linux``, ``darwin``, ``windows``)."""
    return platform.system().lower() or "unknown"


def _go_arch() -> str:
    """The architecture as Go's ``runtime.GOARCH`` spells it (``amd64``, ``arm64``), else as Python does."""
    machine = platform.machine()
    return _GO_ARCH.get(machine.lower(), machine.lower() or "unknown")


class Metrics:
    """All metrics of one supernode, registered on :attr:`registry` (never on the global registry).

    Attribute names are the metric names without the ``dragonfly_supernode_`` prefix (or with the
    ``dfget_`` subsystem for dfget's reports). Labels are listed in the order the exposition uses.
    """

    registry: CollectorRegistry

    def __init__(self, version: str, revision: str = "unknown") -> None:
        self.registry = reg = CollectorRegistry()
        ns, sub = NAMESPACE, SUPERNODE
        self._http_children: dict[str, tuple[Histogram, Histogram, Histogram]] = {}
        self._http_counts: dict[tuple[str, int], Counter] = {}

        # --- v1: build and HTTP server -----------------------------------------------------------
        #: ``dragonfly_supernode_build_info{version,revision,os,arch,goversion}`` = 1.
        #: ``goversion`` carries the Python version (``python3.11.7``).
        self.build_info = Gauge(
            "build_info", "A metric with a constant '1' value labeled by version, revision, os, arch "
            "and goversion (the Python version) from which the supernode was built.",
            ["version", "revision", "os", "arch", "goversion"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_http_requests_total{code,handler}``; handler = unprefixed route template.
        self.http_requests_total = Counter(
            "http_requests_total", "Counter of HTTP requests.",
            ["code", "handler"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_http_request_duration_seconds{handler}``.
        self.http_request_duration_seconds = Histogram(
            "http_request_duration_seconds", "Histogram of latencies for HTTP requests.",
            ["handler"], namespace=ns, subsystem=sub, registry=reg, buckets=HTTP_DURATION_BUCKETS,
        )
        #: ``dragonfly_supernode_http_request_size_bytes{handler}`` (approximate, headers included).
        self.http_request_size_bytes = Histogram(
            "http_request_size_bytes", "Histogram of request size for HTTP requests.",
            ["handler"], namespace=ns, subsystem=sub, registry=reg, buckets=HTTP_SIZE_BUCKETS,
        )
        #: ``dragonfly_supernode_http_response_size_bytes{handler}``.
        self.http_response_size_bytes = Histogram(
            "http_response_size_bytes", "Histogram of response size for HTTP requests.",
            ["handler"], namespace=ns, subsystem=sub, registry=reg, buckets=HTTP_SIZE_BUCKETS,
        )

        # --- v1: peers, tasks, dfget tasks, scheduler --------------------------------------------
        #: ``dragonfly_supernode_peers{peer}`` (peer = IP): +1 on register, -1 on deregister.
        self.peers = Gauge(
            "peers", "Current status of peers.", ["peer"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_tasks{cdnstatus}``: moved between CDN statuses.
        self.tasks = Gauge(
            "tasks", "Current status of Supernode tasks.", ["cdnstatus"],
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_tasks_registered_total``.
        self.tasks_registered_total = Counter(
            "tasks_registered_total", "Total times of registering tasks.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_dfgettasks{callsystem,status}`` (not for the supernode's own CDN tasks).
        self.dfgettasks = Gauge(
            "dfgettasks", "Current status of dfgettasks.", ["callsystem", "status"],
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_dfgettasks_registered_total{callsystem}``.
        self.dfgettasks_registered_total = Counter(
            "dfgettasks_registered_total", "Total times of registering dfgettasks.", ["callsystem"],
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_dfgettasks_failed_total{callsystem}``.
        self.dfgettasks_failed_total = Counter(
            "dfgettasks_failed_total", "Total failure times of dfgettasks.", ["callsystem"],
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_schedule_duration_milliseconds{peer}`` (v1 name and unit kept).
        self.schedule_duration_milliseconds = Histogram(
            "schedule_duration_milliseconds", "Duration for task scheduling.", ["peer"],
            namespace=ns, subsystem=sub, registry=reg, buckets=SCHEDULE_DURATION_BUCKETS,
        )

        # --- v1: CDN and pieces --------------------------------------------------------------------
        #: ``dragonfly_supernode_cdn_trigger_total``.
        self.cdn_trigger_total = Counter(
            "cdn_trigger_total", "Total times of triggering cdn.", namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_cdn_trigger_failed_total``.
        self.cdn_trigger_failed_total = Counter(
            "cdn_trigger_failed_total", "Total failure times of triggering cdn.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_cdn_cache_hit_total``.
        self.cdn_cache_hit_total = Counter(
            "cdn_cache_hit_total", "Total times of hitting cdn cache.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_cdn_download_total``.
        self.cdn_download_total = Counter(
            "cdn_download_total", "Total times of cdn download.", namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_cdn_download_failed_total``.
        self.cdn_download_failed_total = Counter(
            "cdn_download_failed_total", "Total failure times of cdn download.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_cdn_download_size_bytes_total`` (post-1.0.6).
        self.cdn_download_size_bytes_total = Counter(
            "cdn_download_size_bytes_total", "total file size of cdn downloaded from source in bytes.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_pieces_downloaded_size_bytes_total``: bytes of the pieces the supernode
        #: served, counted from ``/peer/piece/suc`` reports.
        self.pieces_downloaded_size_bytes_total = Counter(
            "pieces_downloaded_size_bytes_total",
            "total file size of pieces downloaded from supernode in bytes.",
            namespace=ns, subsystem=sub, registry=reg,
        )

        # --- v1: GC --------------------------------------------------------------------------------
        #: ``dragonfly_supernode_gc_peers_total``.
        self.gc_peers_total = Counter(
            "gc_peers_total", "Total number of peers that have been garbage collected.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_gc_tasks_total``.
        self.gc_tasks_total = Counter(
            "gc_tasks_total", "Total number of tasks that have been garbage collected.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_gc_disks_total``: task caches removed from disk by the disk GC.
        self.gc_disks_total = Counter(
            "gc_disks_total", "Total number of garbage collecting the task data in disks.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: ``dragonfly_supernode_last_gc_disks_timestamp_seconds``: Unix time of the last disk GC run.
        self.last_gc_disks_timestamp_seconds = Gauge(
            "last_gc_disks_timestamp_seconds", "Timestamp of the last disk gc.",
            namespace=ns, subsystem=sub, registry=reg,
        )

        # --- v1: dfget's reports (POST /task/metrics), subsystem "dfget" ---------------------------
        #: ``dragonfly_dfget_download_duration_seconds{callsystem,peer}``; only successful downloads.
        self.dfget_download_duration_seconds = Histogram(
            "download_duration_seconds", "Duration for dfget task.", ["callsystem", "peer"],
            namespace=ns, subsystem=DFGET, registry=reg, buckets=DFGET_DURATION_BUCKETS,
        )
        #: ``dragonfly_dfget_download_size_bytes_total{callsystem,peer}``; only successful downloads.
        self.dfget_download_size_bytes_total = Counter(
            "download_size_bytes_total", "Total file size of dfget downloaded in bytes.",
            ["callsystem", "peer"], namespace=ns, subsystem=DFGET, registry=reg,
        )
        #: ``dragonfly_dfget_download_total{callsystem,peer}``; every report.
        self.dfget_download_total = Counter(
            "download_total", "Total times of dfget downloading.", ["callsystem", "peer"],
            namespace=ns, subsystem=DFGET, registry=reg,
        )
        #: ``dragonfly_dfget_download_failed_total{callsystem,peer,reason}``; reason = backsourceReason.
        self.dfget_download_failed_total = Counter(
            "download_failed_total", "Total failure times of dfget downloading.",
            ["callsystem", "peer", "reason"], namespace=ns, subsystem=DFGET, registry=reg,
        )

        # --- Extensions beyond v1 ----------------------------------------------------------------
        #: EXTENSION ``dragonfly_supernode_source_bytes_total``: bytes read from origin servers by the
        #: CDN (what the P2P network did not save).
        self.source_bytes_total = Counter(
            "source_bytes_total", "Bytes read from origin (source) servers by the CDN. Extension beyond v1.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_pieces_served_total{source}``, source in :data:`PIECE_SOURCES`:
        #: pieces successfully downloaded by clients, from successful piece reports, by who served them.
        self.pieces_served_total = Counter(
            "pieces_served_total",
            "Pieces successfully downloaded by clients, by source (cdn = the supernode, peer = another "
            "dfget). Extension beyond v1.",
            ["source"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_pieces_served_bytes_total{source}``: bytes of the same pieces.
        #: ``peer / (cdn + peer)`` is the share of traffic the P2P network took off the supernode.
        self.pieces_served_bytes_total = Counter(
            "pieces_served_bytes_total",
            "Bytes of pieces successfully downloaded by clients, by source (cdn or peer). "
            "Extension beyond v1.",
            ["source"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_cdn_served_bytes_total``: bytes the download port sent.
        self.cdn_served_bytes_total = Counter(
            "cdn_served_bytes_total", "Bytes sent by the CDN download port. Extension beyond v1.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_cdn_rate_limit_bytes``: the configured total egress rate of
        #: the download port (``cdn_rate_limit``) in bytes per second, 0 when unlimited; set once at
        #: start, so ``rate(cdn_served_bytes_total) / cdn_rate_limit_bytes`` is the port's utilisation.
        self.cdn_rate_limit_bytes = Gauge(
            "cdn_rate_limit_bytes", "Configured egress rate limit of the CDN download port in bytes per second "
            "(0: unlimited). Extension beyond v1.", namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_cdn_capacity_bytes``: the download port's capacity C that the
        #: scheduler works with, in bytes per second: ``cdn_rate_limit`` when set, else the one measured from
        #: the pieces the port sent once it saturated; 0 while unknown (probed, or taken for unlimited).
        self.cdn_capacity_bytes = Gauge(
            "cdn_capacity_bytes", "Capacity of the CDN download port the scheduler works with, in bytes per "
            "second: the configured rate limit, or the one measured (0: unknown). Extension beyond v1.",
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_tasks_failed_total{reason}``, reason in
        #: :data:`TASK_FAILURE_REASONS` (use :meth:`task_failed` to map anything else to ``other``).
        self.tasks_failed_total = Counter(
            "tasks_failed_total", "Supernode (CDN) tasks that failed, by reason. Extension beyond v1.",
            ["reason"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_cdn_cache_verify_failed_total``: cached files found corrupt
        #: or inconsistent (bad ``.md5`` file, wrong length or digest) and discarded.
        self.cdn_cache_verify_failed_total = Counter(
            "cdn_cache_verify_failed_total",
            "Cached CDN files that failed verification and were discarded. Extension beyond v1.",
            namespace=ns, subsystem=sub, registry=reg,
        )

        # --- Extensions: preheat (POST /preheats) -------------------------------------------------
        #: EXTENSION ``dragonfly_supernode_preheats{type,status}``: preheats requested through the API
        #: (an image's layer preheats are not counted apart), by status; refreshed at scrape time.
        self.preheats = Gauge(
            "preheats", "Current preheats by type and status. Extension beyond v1.", ["type", "status"],
            namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_preheats_finished_total{type,status}``, status SUCCESS or FAILED.
        self.preheats_finished_total = Counter(
            "preheats_finished_total", "Preheats that finished, by type and final status. Extension beyond v1.",
            ["type", "status"], namespace=ns, subsystem=sub, registry=reg,
        )
        #: EXTENSION ``dragonfly_supernode_preheat_duration_seconds{type,status}``: creation to finish.
        self.preheat_duration_seconds = Histogram(
            "preheat_duration_seconds", "Duration of finished preheats. Extension beyond v1.", ["type", "status"],
            namespace=ns, subsystem=sub, registry=reg, buckets=PREHEAT_DURATION_BUCKETS,
        )
        #: EXTENSION ``dragonfly_supernode_preheat_bytes_total{type}``: bytes of content that preheats put
        #: (or found) in the CDN cache, counted once per file or layer when it is verified.
        self.preheat_bytes_total = Counter(
            "preheat_bytes_total", "Bytes of files and image layers preheated into the CDN. Extension beyond v1.",
            ["type"], namespace=ns, subsystem=sub, registry=reg,
        )

        # Fixed label sets: export every series from the start, at 0, so rate() and ratios work.
        for preheat_type in PREHEAT_TYPES:
            self.preheat_bytes_total.labels(type=preheat_type)
            for status in PREHEAT_STATUSES:
                self.preheats.labels(type=preheat_type, status=status)
            for status in ("SUCCESS", "FAILED"):
                self.preheats_finished_total.labels(type=preheat_type, status=status)
        for source in PIECE_SOURCES:
            self.pieces_served_total.labels(source=source)
            self.pieces_served_bytes_total.labels(source=source)
        for reason in TASK_FAILURE_REASONS:
            self.tasks_failed_total.labels(reason=reason)

        self.build_info.labels(
            version=version,
            revision=revision,
            os=_go_os(),
            arch=_go_arch(),
            goversion=f"python{platform.python_version()}",
        ).set(1)

    def http_request(self, handler: str, code: int, seconds: float, request_bytes: int,
                     response_bytes: int) -> None:
        """Record one API request. Runs on every request, so the labelled children are looked up once
        per handler and code: ``labels()`` builds a key and takes a lock each time."""
        children = self._http_children.get(handler)
        if children is None:
            children = self._http_children[handler] = (
                self.http_request_duration_seconds.labels(handler=handler),
                self.http_request_size_bytes.labels(handler=handler),
                self.http_response_size_bytes.labels(handler=handler))
        counter = self._http_counts.get((handler, code))
        if counter is None:
            counter = self._http_counts[handler, code] = self.http_requests_total.labels(code=str(code),
                                                                                       handler=handler)
        counter.inc()
        duration, request_size, response_size = children
        duration.observe(seconds)
        request_size.observe(request_bytes)
        response_size.observe(response_bytes)

    def piece_served(self, source: str, size: int) -> None:
        """Count one successfully downloaded piece of ``size`` bytes served by ``source`` (cdn or peer)."""
        if source not in PIECE_SOURCES:
            raise ValueError(f"piece source must be one of {PIECE_SOURCES}, not {source!r}")
        self.pieces_served_total.labels(source=source).inc()
        if size > 0:
            self.pieces_served_bytes_total.labels(source=source).inc(size)

    def task_failed(self, reason: str) -> None:
        """Count one failed supernode task; a reason outside :data:`TASK_FAILURE_REASONS` counts as other."""
        self.tasks_failed_total.labels(reason=reason if reason in TASK_FAILURE_REASONS else "other").inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its ``Content-Type`` header value."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
