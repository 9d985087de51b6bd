"""Every metric of the registry mirror, on its own registry (``GET /metrics`` on the mirror's port).

Blobs and bytes are counted by where they came from, which is what tells whether the swarm works:
``peer`` (other nodes), ``cdn`` (the supernode), ``registry`` (the mirror's own fetch: a fallback, or
no supernode), ``local`` (this node's cache). A fallback is counted with a reason from a small fixed
set, so that no label takes unbounded values.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from .blobs import Outcome, Via

BYTE_SOURCES = ("peer", "cdn", "registry", "local")
BLOB_SOURCES = ("swarm", "registry", "local")
FALLBACK_REASONS = ("swarm_failed", "stalled", "no_supernode", "short", "bad_swarm_copy")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def fallback_reason(text: str) -> str:
    if text.startswith("no supernode"):
        return "no_supernode"
    if "sent nothing" in text:
        return "stalled"
    if "delivered" in text:
        return "short"
    if "did not match" in text:
        return "bad_swarm_copy"
    return "swarm_failed"


class MirrorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.blobs = Counter("dragonfly_mirror_blobs_total", "Blobs served to container runtimes, by where they "
                             "came from", ["source"], registry=self.registry)
        self.bytes = Counter("dragonfly_mirror_blob_bytes_total", "Blob bytes fetched for container runtimes, by "
                             "source", ["source"], registry=self.registry)
        self.fallbacks = Counter("dragonfly_mirror_fallbacks_total", "Blobs (partly) fetched from the registry "
                                 "because the swarm could not deliver them", ["reason"], registry=self.registry)
        self.failures = Counter("dragonfly_mirror_blob_failures_total", "Blobs that could not be delivered (the "
                                "registry failed too, or the digest did not match)", registry=self.registry)
        self.requests = Counter("dragonfly_mirror_requests_total", "Registry API requests answered, by kind and "
                                "HTTP status", ["kind", "code"], registry=self.registry)
        for source in BYTE_SOURCES:
            self.bytes.labels(source=source)
        for source in BLOB_SOURCES:
            self.blobs.labels(source=source)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)

    def record(self, outcome: Outcome, *, complete: bool, size: int) -> None:
        """One download's end: bytes by source, and the blob by the source that finished it."""
        self.bytes.labels(source="peer").inc(outcome.peer_bytes)
        self.bytes.labels(source="cdn").inc(outcome.cdn_bytes)
        self.bytes.labels(source="registry").inc(outcome.registry_bytes)
        if outcome.fallback:
            self.fallbacks.labels(reason=fallback_reason(outcome.fallback)).inc()
        if not complete:
            self.failures.inc()
            return
        self.blobs.labels(source=outcome.via.value if outcome.via == Via.REGISTRY else "swarm").inc()

    def local(self, size: int) -> None:
        self.blobs.labels(source="local").inc()
        self.bytes.labels(source="local").inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
