"""Shared helpers of the deployment tests: the chart, its renders, the CRD and strict manifest validation.

Nothing here needs a cluster, a helm binary or Docker: the chart is linted and rendered with the Helm SDK
wheel (``helm-python-sdk``), built-in kinds are validated against the Kubernetes OpenAPI schemas bundled
in ``kubernetes-validate`` (strict: unknown fields are errors), and custom resources against their
CRD's ``openAPIV3Schema`` with ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dragonfly-supernode"
CRD_FILE = ROOT / "crds" / "preheat.yaml"
CHART_CRD_FILE = CHART / "crds" / "preheat.yaml"
EXAMPLES = ROOT / "crds" / "examples"
DASHBOARD = CHART / "dashboards" / "dragonfly.json"

RELEASE = "df"
NAMESPACE = "dragonfly"
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ("1.25", "1.37")

#: The value combinations every chart test renders: name -> values.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                               "metricRelabelings": [{"action": "labeldrop", "regex": "peer"}]},
            "prometheusRule": {"enabled": True, "alertLabels": {"team": "infra"},
                               "additionalRules": [{"record": "dragonfly:origin_bytes:rate5m",
                                                    "expr": "sum(rate(dragonfly_supernode_source_bytes_total[5m]))"}]},
        },
        "grafanaDashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Dragonfly"}},
    },
    "daemonset": {"dfget": {"enabled": True, "totalLimit": "50M", "tolerations": [{"operator": "Exists"}]}},
    "daemonset-podnet": {"dfget": {"enabled": True, "hostNetwork": False, "fixPermissions": False}},
    "mirror": {"dfget": {"enabled": True, "mirror": {
        "enabled": True, "authSecret": "node-pull-secret", "registries": [
            {"name": "docker.io", "url": "https://registry-1.docker.io"},
            {"name": "registry.internal:5000",
             "ca": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}]}},
        "metrics": {"serviceMonitor": {"enabled": True}}},
    "operator-off": {"operator": {"enabled": False},
                     "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}},
    "operator-namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"],
                                         "rbac": {"secretNames": ["registry-auth"], "watchCRDs": False}}},
    "operator-static": {"operator": {"supernodes": ["http://sn-0.example:8002", "http://sn-1.example:8002"],
                                     "rbac": {"readSecrets": False}}},
    "custom": {
        "fullnameOverride": "p2p",
        "commonLabels": {"team": "infra"},
        "image": {"registry": "registry.example.com/dragonfly", "repository": "supernode-py",
                  "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "supernode": {
            "replicas": 3,
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
            "persistence": {"storageClass": "fast-ssd", "size": "500Gi"},
            "config": {"max_bandwidth": "1G", "cdn_task_limit": 8},
            "cdnRateLimit": "400M",
            "pieceSize": "2M",
            "extraEnv": [{"name": "SUPERNODE_DEBUG", "value": "true"}],
            "podDisruptionBudget": {"enabled": True},
            "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "supernode"}}}],
        },
        "operator": {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
    },
    "ephemeral-cache": {"supernode": {"persistence": {"enabled": False}, "emptyDirSizeLimit": "10Gi"}},
}


@dataclass
class Rendered:
    """One render of the chart: the manifests (by template file) and NOTES.txt."""

    files: dict[str, str]

    @property
    def notes(self) -> str:
        return next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")

    def docs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, text in sorted(self.files.items()):
            if name.endswith(".txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__template__", name)
                    out.append(doc)
        return out

    def manifests(self) -> list[dict[str, Any]]:
        """The documents without the bookkeeping key added by :meth:`docs`."""
        return [{k: v for k, v in d.items() if k != "__template__"} for d in self.docs()]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.manifests() if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        return found[0]


@pytest.fixture(scope="session")
def helm() -> Any:
    return pytest.importorskip("helm_python", reason="the Helm SDK wheel (helm-python-sdk) is not installed")


@pytest.fixture(scope="session")
def render(helm: Any) -> Iterator[Any]:
    """``render(values) -> Rendered``, with one loaded chart for the whole session."""
    chart = helm.Chart.load(str(CHART))

    def _render(values: dict[str, Any] | None = None, **kwargs: Any) -> Rendered:
        kwargs.setdefault("name", RELEASE)
        kwargs.setdefault("namespace", NAMESPACE)
        return Rendered(chart.render(copy.deepcopy(values or {}), **kwargs))

    try:
        yield _render
    finally:
        chart.close()


@pytest.fixture(scope="session")
def renders(render: Any) -> dict[str, Rendered]:
    return {name: render(values) for name, values in COMBINATIONS.items()}


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    assert isinstance(crd, dict)
    return crd


def crd_schema(crd: dict[str, Any] | None = None, version: str = "v1alpha1") -> dict[str, Any]:
    crd = crd or load_crd()
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(ver["schema"]["openAPIV3Schema"])


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it with field validation Strict (kubectl's default since 1.27):
    an unknown field is an error instead of being pruned. ``metadata`` stays open (ObjectMeta)."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        if (node.get("type") == "object" and path != ("metadata",) and "properties" in node
                and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for key, child in node.get("properties", {}).items():
            walk(child, (*path, key))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))

    walk(out, ())
    return out


def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time as the API server checks it (a time zone is required)."""
    if not isinstance(value, str):
        return True
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return False
    return "T" in value.upper() and moment.tzinfo is not None


def crd_validator(strict: bool = True) -> Any:
    """A jsonschema validator for Preheat objects; ``format: date-time`` checked without extra packages."""
    import jsonschema

    schema = crd_schema()
    schema = strict_schema(schema) if strict else schema
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date-time")(_is_date_time)
    return jsonschema.Draft7Validator(schema, format_checker=formats)


def cel_spec_rule(spec: dict[str, Any]) -> bool:
    """The CRD's one CEL rule on spec, ``self.type == 'image' || !has(self.platforms)``, in Python."""
    return spec.get("type") == "image" or "platforms" not in spec


def kube_validate(doc: dict[str, Any], version: str) -> str | None:
    """Validate a built-in kind strictly; an error message, or None when valid. Raises SchemaNotFoundError."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{doc['kind']} {doc['metadata'].get('name')}: at /{where}: {exc.message[:300]}"
    return None


def json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)[:2000]
