"""The metric catalogue against spec §8: names, types, label names in order, buckets; registries apart."""

from __future__ import annotations

import platform

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from supernode.metrics import PIECE_SOURCES, TASK_FAILURE_REASONS, Metrics

# (family name as the parser reports it, type, label names in order); from spec §8.
# The parser drops a counter's ``_total`` suffix from the family name (samples keep it).
V1_CATALOGUE: list[tuple[str, str, list[str]]] = [
    ("dragonfly_supernode_build_info", "gauge", ["version", "revision", "os", "arch", "goversion"]),
    ("dragonfly_supernode_http_requests", "counter", ["code", "handler"]),
    ("dragonfly_supernode_http_request_duration_seconds", "histogram", ["handler"]),
    ("dragonfly_supernode_http_request_size_bytes", "histogram", ["handler"]),
    ("dragonfly_supernode_http_response_size_bytes", "histogram", ["handler"]),
    ("dragonfly_supernode_peers", "gauge", ["peer"]),
    ("dragonfly_supernode_tasks", "gauge", ["cdnstatus"]),
    ("dragonfly_supernode_tasks_registered", "counter", []),
    ("dragonfly_supernode_dfgettasks", "gauge", ["callsystem", "status"]),
    ("dragonfly_supernode_dfgettasks_registered", "counter", ["callsystem"]),
    ("dragonfly_supernode_dfgettasks_failed", "counter", ["callsystem"]),
    ("dragonfly_supernode_schedule_duration_milliseconds", "histogram", ["peer"]),
    ("dragonfly_supernode_cdn_trigger", "counter", []),
    ("dragonfly_supernode_cdn_trigger_failed", "counter", []),
    ("dragonfly_supernode_cdn_cache_hit", "counter", []),
    ("dragonfly_supernode_cdn_download", "counter", []),
    ("dragonfly_supernode_cdn_download_failed", "counter", []),
    ("dragonfly_supernode_cdn_download_size_bytes", "counter", []),
    ("dragonfly_supernode_pieces_downloaded_size_bytes", "counter", []),
    ("dragonfly_supernode_gc_peers", "counter", []),
    ("dragonfly_supernode_gc_tasks", "counter", []),
    ("dragonfly_supernode_gc_disks", "counter", []),
    ("dragonfly_supernode_last_gc_disks_timestamp_seconds", "gauge", []),
    ("dragonfly_dfget_download_duration_seconds", "histogram", ["callsystem", "peer"]),
    ("dragonfly_dfget_download_size_bytes", "counter", ["callsystem", "peer"]),
    ("dragonfly_dfget_download", "counter", ["callsystem", "peer"]),
    ("dragonfly_dfget_download_failed", "counter", ["callsystem", "peer", "reason"]),
]

EXTENSIONS: list[tuple[str, str, list[str]]] = [
    ("dragonfly_supernode_source_bytes", "counter", []),
    ("dragonfly_supernode_pieces_served", "counter", ["source"]),
    ("dragonfly_supernode_pieces_served_bytes", "counter", ["source"]),
    ("dragonfly_supernode_cdn_served_bytes", "counter", []),
    ("dragonfly_supernode_cdn_rate_limit_bytes", "gauge", []),
    ("dragonfly_supernode_cdn_capacity_bytes", "gauge", []),
    ("dragonfly_supernode_tasks_failed", "counter", ["reason"]),
    ("dragonfly_supernode_cdn_cache_verify_failed", "counter", []),
    ("dragonfly_supernode_preheats", "gauge", ["type", "status"]),
    ("dragonfly_supernode_preheats_finished", "counter", ["type", "status"]),
    ("dragonfly_supernode_preheat_duration_seconds", "histogram", ["type", "status"]),
    ("dragonfly_supernode_preheat_bytes", "counter", ["type"]),
]


def touch_every_labelled_metric(m: Metrics) -> None:
    """Labelled metrics export no sample until a child exists; create one of each."""
    m.http_requests_total.labels(code="200", handler="/_ping").inc()
    m.preheat_duration_seconds.labels(type="image", status="SUCCESS").observe(12)
    m.http_request_duration_seconds.labels(handler="/_ping").observe(0.003)
    m.http_request_size_bytes.labels(handler="/_ping").observe(120)
    m.http_response_size_bytes.labels(handler="/_ping").observe(2)
    m.peers.labels(peer="10.0.0.1").inc()
    m.tasks.labels(cdnstatus="WAITING").inc()
    m.dfgettasks.labels(callsystem="ci", status="RUNNING").inc()
    m.dfgettasks_registered_total.labels(callsystem="ci").inc()
    m.dfgettasks_failed_total.labels(callsystem="ci").inc()
    m.schedule_duration_milliseconds.labels(peer="10.0.0.1").observe(0.05)
    m.dfget_download_duration_seconds.labels(callsystem="ci", peer="10.0.0.1").observe(3)
    m.dfget_download_size_bytes_total.labels(callsystem="ci", peer="10.0.0.1").inc(1024)
    m.dfget_download_total.labels(callsystem="ci", peer="10.0.0.1").inc()
    m.dfget_download_failed_total.labels(callsystem="ci", peer="10.0.0.1", reason="1").inc()


def families(m: Metrics) -> dict[str, Metric]:
    body, _ = m.render()
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample_value(m: Metrics, sample_name: str, labels: dict[str, str] | None = None) -> float:
    for family in families(m).values():
        for s in family.samples:
            if s.name == sample_name and s.labels == (labels or {}):
                return float(s.value)
    raise AssertionError(f"no sample {sample_name}{labels or ''}")


def label_names_of(family: Metric) -> list[list[str]]:
    """Label names of every sample, in exposition order, without the histogram's ``le``."""
    return [[k for k in s.labels if k != "le"] for s in family.samples]


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics("1.2.3", revision="abc123")
    touch_every_labelled_metric(m)
    return m


@pytest.mark.parametrize(("name", "mtype", "labels"), V1_CATALOGUE + EXTENSIONS,
                         ids=[c[0] for c in V1_CATALOGUE + EXTENSIONS])
def test_metric_in_exposition_with_type_and_label_names(
    metrics: Metrics, name: str, mtype: str, labels: list[str]
) -> None:
    # The text exposition sorts label pairs by name (prometheus-client, like Go's client_golang), so
    # it shows the label *set*; the declared order is checked on the collector below.
    fams = families(metrics)
    assert name in fams, f"{name} missing from the exposition"
    family = fams[name]
    assert family.type == mtype
    assert family.samples, f"{name} has no samples"
    for names in label_names_of(family):
        assert names == sorted(labels)


@pytest.mark.parametrize(("name", "mtype", "labels"), V1_CATALOGUE + EXTENSIONS,
                         ids=[c[0] for c in V1_CATALOGUE + EXTENSIONS])
def test_metric_labels_declared_in_v1_order(
    metrics: Metrics, name: str, mtype: str, labels: list[str]
) -> None:
    # Positional ``.labels(a, b)`` calls depend on the declared order; the registry's own collection
    # keeps it (label dicts are built from the declared label names, ``le`` appended for buckets).
    collected = {f.name: f for f in metrics.registry.collect()}
    family = collected[name]
    assert family.type == mtype
    assert family.samples
    for names in label_names_of(family):
        assert names == labels


def test_counter_samples_carry_total_suffix(metrics: Metrics) -> None:
    body, _ = metrics.render()
    text = body.decode()
    for name, mtype, _labels in V1_CATALOGUE + EXTENSIONS:
        if mtype == "counter":
            assert f"# TYPE {name}_total counter" in text


def test_histogram_buckets_have_le(metrics: Metrics) -> None:
    for family in metrics.registry.collect():
        if family.type == "histogram":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    assert list(s.labels)[-1] == "le"


def test_no_unexpected_families(metrics: Metrics) -> None:
    expected = {name for name, _, _ in V1_CATALOGUE + EXTENSIONS}
    extra = {n for n in families(metrics) if n not in expected and not n.endswith("_created")}
    assert extra == set()


def bucket_bounds(m: Metrics, family_name: str) -> list[float]:
    family = families(m)[family_name]
    first = family.samples[0].labels
    key = {k: v for k, v in first.items() if k != "le"}
    return [
        float(s.labels["le"]) for s in family.samples
        if s.name.endswith("_bucket") and {k: v for k, v in s.labels.items() if k != "le"} == key
    ]


@pytest.mark.parametrize(("family_name", "bounds"), [
    ("dragonfly_supernode_http_request_duration_seconds",
     [0.01, 0.02, 0.04, 0.1, 0.2, 0.4, 1, 2, 4, 8, 20, 60, 120]),
    ("dragonfly_supernode_http_request_size_bytes", [100 * 10**k for k in range(8)]),
    ("dragonfly_supernode_http_response_size_bytes", [100 * 10**k for k in range(8)]),
    ("dragonfly_supernode_schedule_duration_milliseconds", [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]),
    ("dragonfly_dfget_download_duration_seconds", [1, 2, 5, 10, 30, 60, 120, 300, 600]),
])
def test_buckets_are_the_post_106_ones(metrics: Metrics, family_name: str, bounds: list[float]) -> None:
    assert bucket_bounds(metrics, family_name) == pytest.approx([*bounds, float("inf")])


def test_build_info(metrics: Metrics) -> None:
    family = families(metrics)["dragonfly_supernode_build_info"]
    assert len(family.samples) == 1
    s = family.samples[0]
    assert s.value == 1
    assert s.labels["version"] == "1.2.3"
    assert s.labels["revision"] == "abc123"
    assert s.labels["os"] == platform.system().lower()
    assert s.labels["arch"]
    assert platform.python_version() in s.labels["goversion"]


def test_unlabelled_v1_series_exist_at_zero_before_use() -> None:
    m = Metrics("0")
    assert sample_value(m, "dragonfly_supernode_cdn_trigger_total") == 0
    assert sample_value(m, "dragonfly_supernode_gc_disks_total") == 0
    assert sample_value(m, "dragonfly_supernode_last_gc_disks_timestamp_seconds") == 0


def test_fixed_label_sets_are_exported_at_zero() -> None:
    m = Metrics("0")
    for source in PIECE_SOURCES:
        assert sample_value(m, "dragonfly_supernode_pieces_served_total", {"source": source}) == 0
        assert sample_value(m, "dragonfly_supernode_pieces_served_bytes_total", {"source": source}) == 0
    for reason in TASK_FAILURE_REASONS:
        assert sample_value(m, "dragonfly_supernode_tasks_failed_total", {"reason": reason}) == 0
    assert set(TASK_FAILURE_REASONS) == {
        "source_not_found", "source_auth", "source_error", "md5_mismatch", "length_mismatch", "disk", "other"
    }
    assert set(PIECE_SOURCES) == {"cdn", "peer"}


def test_piece_served_and_task_failed_helpers() -> None:
    m = Metrics("0")
    m.piece_served("peer", 4 * 1024 * 1024)
    m.piece_served("peer", 100)
    m.piece_served("cdn", 10)
    assert sample_value(m, "dragonfly_supernode_pieces_served_total", {"source": "peer"}) == 2
    peer_bytes = sample_value(m, "dragonfly_supernode_pieces_served_bytes_total", {"source": "peer"})
    assert peer_bytes == 4 * 1024**2 + 100
    assert sample_value(m, "dragonfly_supernode_pieces_served_total", {"source": "cdn"}) == 1
    with pytest.raises(ValueError):
        m.piece_served("origin", 1)
    m.task_failed("md5_mismatch")
    m.task_failed("no such reason")
    assert sample_value(m, "dragonfly_supernode_tasks_failed_total", {"reason": "md5_mismatch"}) == 1
    assert sample_value(m, "dragonfly_supernode_tasks_failed_total", {"reason": "other"}) == 1
    fams = families(m)
    reasons = {s.labels["reason"] for s in fams["dragonfly_supernode_tasks_failed"].samples}
    assert reasons == set(TASK_FAILURE_REASONS)


def test_render_content_type_and_bytes() -> None:
    body, content_type = Metrics("0").render()
    assert isinstance(body, bytes)
    assert content_type.startswith("text/plain")
    assert "charset=utf-8" in content_type


def test_two_instances_are_independent() -> None:
    a, b = Metrics("a"), Metrics("b")  # a second instance must not raise "Duplicated timeseries"
    assert a.registry is not b.registry
    a.cdn_trigger_total.inc(3)
    a.peers.labels(peer="10.0.0.9").inc()
    b.cdn_trigger_total.inc()
    assert sample_value(a, "dragonfly_supernode_cdn_trigger_total") == 3
    assert sample_value(b, "dragonfly_supernode_cdn_trigger_total") == 1
    assert sample_value(a, "dragonfly_supernode_peers", {"peer": "10.0.0.9"}) == 1
    assert not families(b)["dragonfly_supernode_peers"].samples
    assert families(a)["dragonfly_supernode_build_info"].samples[0].labels["version"] == "a"
    assert families(b)["dragonfly_supernode_build_info"].samples[0].labels["version"] == "b"


def test_nothing_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    Metrics("0")
    names = {f.name for f in REGISTRY.collect()}
    assert not any(n.startswith("dragonfly_") for n in names)
