"""The Grafana dashboard: it loads, its queries parse, and every metric it queries is one our components
export (supernode and dfget from ``supernode.metrics.Metrics``; the operator from its metrics module, or
the agreed contract until that module exists)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from . import metrics_catalog
from .conftest import DASHBOARD, ROOT, Rendered


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels of collapsed rows
    return out


def _targets() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in _panels(_dashboard())
            for target in panel.get("targets", []) if target.get("expr")]


def test_dashboard_is_grafana_json_with_unique_ids() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "dragonfly-supernode"
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"type", "title", "gridPos"} <= set(panel), panel.get("title")
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"
            assert panel["description"], f"{panel['title']}: say what the panel shows"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_queries_use_the_datasource_variable() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_parses_and_filters_by_namespace() -> None:
    pytest.importorskip("promql_parser")
    for title, expr in _targets():
        names = metrics_catalog.metric_names(expr)  # raises on a PromQL syntax error
        assert names, f"{title}: {expr}"
        assert 'namespace=~"$namespace"' in expr, f"{title}: not filtered by the namespace variable"


def test_every_queried_metric_is_exported() -> None:
    pytest.importorskip("promql_parser")
    exported = metrics_catalog.exported_sample_names()
    _, source = metrics_catalog.operator_families()
    missing: dict[str, list[str]] = {}
    for title, expr in _targets():
        for name in metrics_catalog.metric_names(expr):
            if name.startswith("dragonfly_") and name not in exported:
                missing.setdefault(name, []).append(title)
    assert not missing, f"metrics not exported by any component (operator metrics from {source}): {missing}"


def test_template_variables_query_exported_metrics() -> None:
    pytest.importorskip("promql_parser")
    exported = metrics_catalog.exported_sample_names()
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        for name in metrics_catalog.template_query_metric_names(query):
            assert name in exported, f"variable {variable['name']}: {name}"


def test_dashboard_shows_what_an_operator_looks_at() -> None:
    """Origin vs CDN vs peer bytes (the saving), tasks and peers, latencies, cache, GC, preheats, errors."""
    pytest.importorskip("promql_parser")
    used = set().union(*(metrics_catalog.metric_names(expr) for _, expr in _targets()))
    required = {
        "dragonfly_supernode_source_bytes_total",  # origin bytes
        "dragonfly_supernode_pieces_served_bytes_total",  # served by source="cdn" | "peer"
        "dragonfly_supernode_cdn_served_bytes_total",
        "dragonfly_supernode_pieces_served_total",
        "dragonfly_supernode_tasks",  # active tasks
        "dragonfly_supernode_peers",  # active peers
        "dragonfly_supernode_schedule_duration_milliseconds_bucket",  # piece latency
        "dragonfly_dfget_download_duration_seconds_bucket",  # download latency
        "dragonfly_supernode_cdn_cache_hit_total",
        "dragonfly_supernode_gc_tasks_total",
        "dragonfly_supernode_gc_peers_total",
        "dragonfly_supernode_gc_disks_total",
        "dragonfly_operator_preheats",  # preheats by phase
        "dragonfly_supernode_preheats",
        "dragonfly_supernode_tasks_failed_total",  # errors
        "dragonfly_dfget_download_failed_total",
        "dragonfly_operator_supernode_request_errors_total",
        "dragonfly_operator_reconcile_total",
    }
    assert required <= used, f"not on the dashboard: {sorted(required - used)}"
    exprs = " ".join(expr for _, expr in _targets())
    assert 'source="peer"' in exprs and 'source="cdn"' in exprs


def test_dashboard_shows_the_registry_mirror() -> None:
    """Blob bytes by source (peers / CDN / registry / node cache), blobs by source, fallbacks and failures."""
    pytest.importorskip("promql_parser")
    used = set().union(*(metrics_catalog.metric_names(expr) for _, expr in _targets()))
    assert {"dragonfly_mirror_blob_bytes_total", "dragonfly_mirror_blobs_total", "dragonfly_mirror_fallbacks_total",
            "dragonfly_mirror_blob_failures_total"} <= used


def test_metric_source_parser_reads_the_supernode_catalogue_exactly() -> None:
    """The operator's metrics are read from its source with the same parser: check it on ours first."""
    parsed = metrics_catalog.families_from_source((ROOT / "supernode" / "metrics.py").read_text())
    assert parsed == metrics_catalog.supernode_families()


def test_operator_metrics_match_the_contract() -> None:
    families, source = metrics_catalog.operator_families()
    if source == "contract":
        pytest.skip("no operator metrics module yet: the dashboard is checked against the contract")
    contract = metrics_catalog.OPERATOR_CONTRACT
    missing = {name: kind for name, kind in contract.items() if families.get(name) != kind}
    assert not missing, f"{source} does not define (with this type): {missing}; it defines {families}"


def test_configmap_carries_the_dashboard_unchanged(renders: dict[str, Rendered]) -> None:
    default = renders["defaults"].one("ConfigMap", "df-dragonfly-supernode-dashboard")
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(default["data"]["dragonfly.json"]) == _dashboard()
    monitoring = renders["monitoring"].one("ConfigMap", "df-dragonfly-supernode-dashboard")
    assert monitoring["metadata"]["namespace"] == "monitoring"
    assert monitoring["metadata"]["annotations"] == {"grafana_folder": "Dragonfly"}


def test_dashboard_label_is_configurable(render: Any) -> None:
    out = render({"grafanaDashboard": {"sidecarLabel": "example.com/dashboard", "sidecarLabelValue": "yes"}})
    labels = out.one("ConfigMap", "df-dragonfly-supernode-dashboard")["metadata"]["labels"]
    assert labels["example.com/dashboard"] == "yes" and "grafana_dashboard" not in labels
    assert not render({"grafanaDashboard": {"enabled": False}}).of_kind("ConfigMap")
