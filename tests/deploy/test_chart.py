"""The Helm chart: lint with warnings as errors, render the main value combinations, validate every
manifest strictly (built-in kinds against the Kubernetes schemas, ServiceMonitor and PrometheusRule
against the fields the Prometheus Operator defines), and check what each combination must produce."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest
import yaml

from . import metrics_catalog
from .conftest import (
    CHART,
    COMBINATIONS,
    KUBE_VERSIONS,
    NAMESPACE,
    ROOT,
    Rendered,
    kube_validate,
)

FULL = "df-dragonfly-supernode"
HEADLESS = f"{FULL}-headless"
OPERATOR = f"{FULL}-operator"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}

# -------------------------------------------------------------------------------- Prometheus Operator kinds
# kubernetes-validate has no schemas for monitoring.coreos.com: these are the fields of ServiceMonitor and
# PrometheusRule (monitoring.coreos.com/v1) that the chart may use, with unknown fields rejected.

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name", "namespace"],
         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
                        "namespace": {"type": "string"}, "labels": _STRMAP, "annotations": _STRMAP},
         "additionalProperties": False}
_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "action": {"type": "string", "enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                          "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                          "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal",
                                          "KeepEqual", "dropequal", "DropEqual"]},
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type": "string"},
    "targetLabel": {"type": "string"}, "regex": {"type": "string"}, "modulus": {"type": "integer"},
    "replacement": {"type": "string"}}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STRMAP, "matchExpressions": {"type": "array"}}}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "jobLabel": {"type": "string"}, "targetLabels": {"type": "array"}, "podTargetLabels": {"type": "array"},
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}, "interval": _DURATION,
                    "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                    "honorTimestamps": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": _RELABEL},
                    "metricRelabelings": {"type": "array", "items": _RELABEL}}}}}}}}
_RULE = {"type": "object", "required": ["expr"], "additionalProperties": False,
         "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
         "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                        "expr": {"type": ["string", "integer"]}, "for": _DURATION, "keep_firing_for": _DURATION,
                        "labels": _STRMAP, "annotations": _STRMAP}}
PROMETHEUS_RULE = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": _DURATION, "limit": {"type": "integer"},
                    "labels": _STRMAP, "rules": {"type": "array", "items": _RULE}}}}}}}}
MONITORING_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def _validate_monitoring(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(MONITORING_SCHEMAS[doc["kind"]])
    return [f"{doc['kind']} {doc['metadata'].get('name')}: /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def _workloads(out: Rendered) -> list[dict[str, Any]]:
    return [d for d in out.manifests() if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet")]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _rules_for_operator(out: Rendered) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(role kind, namespace, rule) of every rule bound to the operator's ServiceAccount."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in out.manifests() if d["kind"] in ("Role", "ClusterRole")}
    rules = []
    for binding in out.manifests():
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == OPERATOR for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], namespace, ref["name"])]
        scope = binding["metadata"].get("namespace")  # a RoleBinding limits even a ClusterRole to its namespace
        rules += [(binding["kind"], scope, rule) for rule in role["rules"]]
    return rules


# -------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_lint_has_no_warnings(helm: Any, combination: str) -> None:
    """Like `helm lint --strict`: a warning (severity 2) fails as an error (3) does; INFO (1) is allowed."""
    result = helm.lint(str(CHART), COMBINATIONS[combination], strict=True, namespace=NAMESPACE)
    bad = [m for m in result["messages"] if m["severity"] >= 2] + list(result.get("errors") or [])
    assert not bad, bad


def test_lint_rejects_a_broken_chart(helm: Any, tmp_path: Any) -> None:
    """The lint check above can fail: a template with an unknown function is reported."""
    import shutil

    broken = tmp_path / "chart"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ nosuchfunction . }}\n")
    result = helm.lint(str(broken), strict=True)
    assert [m for m in result["messages"] if m["severity"] >= 2] or result.get("errors")


def test_values_yaml_and_crds_pass_yamllint() -> None:
    linter = pytest.importorskip("yamllint.linter")
    config = pytest.importorskip("yamllint.config").YamlLintConfig(
        "extends: default\nrules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false},"
        " comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}}")
    files = [CHART / "values.yaml", CHART / "Chart.yaml", ROOT / "crds" / "preheat.yaml",
             *sorted((ROOT / "crds" / "examples").glob("*.yaml"))]
    problems = [f"{f.relative_to(ROOT)}:{p.line}: {p.message}" for f in files
                for p in linter.run(f.read_text(), config) if p.level == "error"]
    assert not problems, problems


# -------------------------------------------------------------------------------- strict validation


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_rendered_manifests_are_valid(renders: dict[str, Rendered], combination: str, version: str) -> None:
    pytest.importorskip("kubernetes_validate")
    import kubernetes_validate

    errors = []
    for doc in renders[combination].manifests():
        if doc["kind"] in MONITORING_SCHEMAS:
            errors += _validate_monitoring(doc)
            continue
        try:
            if (error := kube_validate(doc, version)) is not None:
                errors.append(error)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['apiVersion']} {doc['kind']}: no schema to validate it against")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_resources_are_unique_namespaced_and_labelled(renders: dict[str, Rendered], combination: str) -> None:
    seen = set()
    for doc in renders[combination].docs():
        meta = doc["metadata"]
        key = (doc["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, key
        else:
            assert meta.get("namespace"), f"{key} from {doc['__template__']}: no namespace"
        labels = meta.get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                      "helm.sh/chart", "app.kubernetes.io/component"):
            assert label in labels, f"{key}: no {label}"
        assert len(meta["name"]) <= 63 or doc["kind"] in CLUSTER_SCOPED | {"Role", "RoleBinding"}, key


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_every_workload_is_locked_down(renders: dict[str, Rendered], combination: str) -> None:
    for workload in _workloads(renders[combination]):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["enableServiceLinks"] is False, f"{name}: SUPERNODE_PORT=tcp://... would break the settings"
        assert "privileged" not in str(pod), name
        for container in _containers(pod):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert "ALL" in security["capabilities"]["drop"], (name, container["name"])
            added = set(security["capabilities"].get("add", []))
            if container["name"] == "home-permissions":  # the one root init container: chown only
                assert security["runAsUser"] == 0 and added == {"CHOWN"}
            elif container["name"] == "containerd-hosts":  # root as the owner of certs.d, no capability
                assert security["runAsUser"] == 0 and not added
                assert container in pod["initContainers"], "only the init container that writes hosts.toml"
            else:
                assert not added and security.get("runAsUser", 1) != 0, (name, container["name"])
                assert container.get("resources", {}).get("requests"), (name, container["name"])
                assert container.get("livenessProbe"), (name, container["name"])


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_services_select_pods_and_name_their_ports(renders: dict[str, Rendered], combination: str) -> None:
    out = renders[combination]
    pods = [(w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"]) for w in _workloads(out)]
    for service in out.of_kind("Service"):
        selector = service["spec"]["selector"]
        matching = [spec for labels, spec in pods if selector.items() <= labels.items()]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        port_names = {p["name"] for spec in matching for c in spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
    for workload in _workloads(out):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


# -------------------------------------------------------------------------------- values.schema.json


BAD_VALUES = {
    "replicas as text": {"supernode": {"replicas": "3"}},
    "unknown key": {"supernode": {"replica": 3}},
    "typo at the top": {"operater": {"enabled": False}},
    "uploader port below 15000": {"dfget": {"port": 8080}},
    "malformed digest": {"image": {"digest": "sha256:xyz"}},
    "pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "static supernode not a URL": {"operator": {"supernodes": ["10.0.0.1:8002"]}},
    "scrape interval": {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
    "failure ratio above 1": {"metrics": {"prometheusRule": {"taskFailureRatio": 5}}},
    "api port 0": {"supernode": {"ports": {"api": 0}}},
    "relative home": {"supernode": {"homeDir": "cache"}},
    "env without name": {"supernode": {"extraEnv": [{"value": "x"}]}},
    "cache size": {"supernode": {"persistence": {"size": "lots"}}},
    "cdn rate limit not a size": {"supernode": {"cdnRateLimit": "fast"}},
    "cdn rate limit in bits": {"supernode": {"cdnRateLimit": "100Mbit"}},
    "cdn rate limit as a number": {"supernode": {"cdnRateLimit": 100}},  # a size is a string, as totalLimit
    "piece size not whole MiB": {"supernode": {"pieceSize": "1536K"}},
    "piece size above 15M": {"supernode": {"pieceSize": "16M"}},
    "piece size as a number": {"supernode": {"pieceSize": 2}},
    "piece size in bytes": {"supernode": {"pieceSize": "2"}},
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_bad_values(helm: Any, render: Any, case: str) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(BAD_VALUES[case])


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    return [path]


def test_schema_covers_every_value() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def covered(path: tuple[str, ...]) -> bool:
        node = schema
        for key in path:
            props = node.get("properties")
            if props is None:
                return bool(node.get("type") == "object")  # a Kubernetes object passed through as is
            if key not in props:
                return False
            node = props[key]
        return True

    missing = [".".join(p) for p in _leaves(values) if not covered(p)]
    assert not missing, f"values without a schema: {missing}"


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for leaf in _leaves(values):
        prefixes = {".".join(leaf[:i]) for i in range(1, len(leaf) + 1)}
        if not prefixes & documented:
            missing.append(".".join(leaf))
    assert not missing, f"values not in the README's table: {missing}"
    stale = [key for key in documented if not _lookup(values, key.split("."))]
    assert not stale, f"README documents values that do not exist: {stale}"


def _lookup(values: dict[str, Any], path: list[str]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


# -------------------------------------------------------------------------------- the supernodes


def test_supernode_statefulset(renders: dict[str, Rendered]) -> None:
    out = renders["defaults"]
    sts = out.one("StatefulSet", FULL)
    assert sts["spec"]["serviceName"] == HEADLESS
    assert out.one("Service", HEADLESS)["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["supernode"]
    assert container["args"] == ["--home-dir=/var/lib/dragonfly/supernode", "--port=8002", "--download-port=8001"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"api": 8002, "cdn": 8001}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/_ping", "port": "api"}
    assert _env(container)["SUPERNODE_ADVERTISE_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "cache"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in claim["spec"], "default: the cluster's default StorageClass"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == "/var/lib/dragonfly/supernode"
    assert pod["securityContext"]["fsGroup"] == 10001, "the cache volume must be writable by the image's user"
    assert pod["automountServiceAccountToken"] is False
    client = out.one("Service", FULL)
    assert {p["name"]: p["port"] for p in client["spec"]["ports"]} == {"api": 8002, "cdn": 8001}
    assert client["spec"].get("clusterIP") != "None"
    assert not out.of_kind("ConfigMap")[1:], "only the dashboard ConfigMap by default"
    assert not out.of_kind("PodDisruptionBudget")


def test_supernode_settings_parse_the_rendered_flags_and_env(renders: dict[str, Rendered], tmp_path: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The supernode's own parser accepts exactly what the StatefulSet passes it."""
    from supernode.cli import _parser
    from supernode.config import load_settings

    sts = renders["custom"].one("StatefulSet", "p2p")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    flags = vars(_parser().parse_args(container["args"]))
    config = renders["custom"].one("ConfigMap", "p2p")["data"]["supernode.yml"]
    path = tmp_path / "supernode.yml"
    path.write_text(config)
    monkeypatch.setenv("SUPERNODE_ADVERTISE_IP", "10.1.2.3")  # the downward API's status.podIP
    for entry in container["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    flags.pop("config")
    settings = load_settings(path, **flags)
    assert settings.port == 8002 and settings.download_port == 8001
    assert str(settings.home_dir) == "/var/lib/dragonfly/supernode"
    assert settings.advertise_ip == "10.1.2.3"
    assert settings.max_bandwidth == 1024**3 and settings.cdn_task_limit == 8
    assert settings.cdn_egress_rate == 400 * 1024**2
    assert settings.piece_size == 2 * 1024**2
    assert settings.debug is True


def test_cdn_rate_limit_and_piece_size_flags_only_when_set(renders: dict[str, Rendered], render: Any) -> None:
    """Unset, no flag: a ``cdn_rate_limit`` or ``piece_size`` in ``config`` or ``extraEnv`` stays in force;
    "0" is passed as given and means unlimited (the spec's piece sizes)."""
    from supernode.cli import _parser
    from supernode.config import load_settings

    def args(out: Rendered, name: str = FULL) -> list[str]:
        (container,) = out.one("StatefulSet", name)["spec"]["template"]["spec"]["containers"]
        return list(container["args"])

    assert not [a for a in args(renders["defaults"]) if a.startswith(("--cdn-rate-limit", "--piece-size"))]
    assert "--cdn-rate-limit=400M" in args(renders["custom"], "p2p")
    assert "--piece-size=2M" in args(renders["custom"], "p2p")
    flags = vars(_parser().parse_args(args(render({"supernode": {"cdnRateLimit": "0"}}))))
    assert flags["cdn_rate_limit"] == "0"
    flags.pop("config", None)
    assert load_settings(None, advertise_ip="10.1.2.3", **flags).cdn_egress_rate is None


def test_custom_image_resources_and_storage(renders: dict[str, Rendered]) -> None:
    out = renders["custom"]
    image = "registry.example.com/dragonfly/supernode-py@sha256:" + "ab" * 32
    for workload in _workloads(out):
        pod = workload["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        for container in _containers(pod):
            assert container["image"] == image and container["imagePullPolicy"] == "Always"
    for doc in out.manifests():
        assert doc["metadata"]["labels"]["team"] == "infra", doc["kind"]
        assert doc["metadata"]["name"].startswith("p2p") or doc["kind"] in ("ClusterRole", "ClusterRoleBinding")
    sts = out.one("StatefulSet", "p2p")
    assert sts["spec"]["replicas"] == 3
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == COMBINATIONS["custom"]["supernode"]["resources"]
    assert "--config=/etc/dragonfly/supernode.yml" in container["args"]
    assert "checksum/config" in sts["spec"]["template"]["metadata"]["annotations"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert yaml.safe_load(out.one("ConfigMap", "p2p")["data"]["supernode.yml"]) == {
        "max_bandwidth": "1G", "cdn_task_limit": 8}
    assert out.one("PodDisruptionBudget", "p2p")["spec"]["maxUnavailable"] == 1
    client = out.one("Service", "p2p")
    assert client["spec"]["type"] == "LoadBalancer"
    assert client["metadata"]["annotations"] == {"example.com/lb": "internal"}
    deployment = out.one("Deployment", "p2p-operator")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"] == {  # Helm merges maps
        "requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    nodes = re.search(r"--node (\S+)", out.notes)
    assert nodes and nodes.group(1).split(",") == [
        f"p2p-{i}.p2p-headless.{NAMESPACE}.svc:8002" for i in range(3)]


def test_storage_class_dash_means_no_class(render: Any) -> None:
    sts = render({"supernode": {"persistence": {"storageClass": "-"}}}).one("StatefulSet")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""


def test_ephemeral_cache(renders: dict[str, Rendered]) -> None:
    sts = renders["ephemeral-cache"].one("StatefulSet", FULL)
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}}


# -------------------------------------------------------------------------------- the operator


def test_operator_deployment_discovers_the_headless_service(renders: dict[str, Rendered]) -> None:
    out = renders["defaults"]
    deployment = out.one("Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR
    (container,) = pod["containers"]
    assert container["command"] == ["dragonfly-operator"]
    assert "--all-namespaces" in container["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    env = _env(container)
    assert env["DFOPERATOR_SUPERNODE_SERVICE"] == HEADLESS
    assert env["DFOPERATOR_SUPERNODE_NAMESPACE"] == NAMESPACE
    service_ports = {p["name"] for p in out.one("Service", HEADLESS)["spec"]["ports"]}
    assert env["DFOPERATOR_SUPERNODE_PORT"] in service_ports
    assert env["DFOPERATOR_METRICS_PORT"] == "9090"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    metrics = out.one("Service", f"{OPERATOR}-metrics")
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics"


def _operator_config_class() -> Any:
    """The operator's settings class, when its package is in the tree (it reads DFOPERATOR_* variables)."""
    base = ROOT / "operator"
    packages = [p for p in base.iterdir() if (p / "config.py").is_file()] if base.is_dir() else []
    if not packages:
        pytest.skip("no operator package with a config module yet")
    sys.path.insert(0, str(base))
    try:
        module = __import__(f"{packages[0].name}.config", fromlist=["OperatorConfig"])
    finally:
        sys.path.remove(str(base))
    return module.OperatorConfig


@pytest.mark.parametrize("combination", ["defaults", "operator-static", "operator-namespaced"])
def test_operator_reads_the_rendered_environment(renders: dict[str, Rendered], combination: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DFOPERATOR_* variable the chart sets is a setting of the operator, with the intended value."""
    config_class = _operator_config_class()
    deployment = next(d for d in renders[combination].of_kind("Deployment"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name in list(os.environ):
        if name.startswith("DFOPERATOR_") or name == "SUPERNODES":
            monkeypatch.delenv(name)
    fields = {f"DFOPERATOR_{name.upper()}" for name in config_class.model_fields}
    unknown = [name for name in env if name.startswith("DFOPERATOR_") and name not in fields]
    assert not unknown, f"the operator has no such settings: {unknown}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = config_class()
    assert config.metrics_port == 9090
    if combination == "operator-static":
        assert config.supernodes == ["http://sn-0.example:8002", "http://sn-1.example:8002"]
    else:
        assert config.supernodes == []
        assert (config.supernode_service, config.supernode_namespace, config.supernode_port) == (
            HEADLESS, NAMESPACE, "api")


def test_operator_rbac_cluster_wide(renders: dict[str, Rendered]) -> None:
    rules = _rules_for_operator(renders["defaults"])
    by_resource: dict[str, set[str]] = {}
    for _, _, rule in rules:
        for resource in rule["resources"]:
            by_resource.setdefault(resource, set()).update(rule["verbs"])
    assert by_resource == {
        "preheats": {"get", "list", "watch", "patch"},
        "preheats/status": {"get", "patch"},
        "events": {"create", "patch"},
        "secrets": {"get"},
        "endpointslices": {"list", "watch"},
        "customresourcedefinitions": {"list", "watch"},
    }
    for kind, scope, rule in rules:
        if "endpointslices" in rule["resources"]:
            assert kind == "RoleBinding" and scope == NAMESPACE, "discovery only in the supernodes' namespace"


def test_operator_rbac_namespaced_with_secret_names(renders: dict[str, Rendered]) -> None:
    out = renders["operator-namespaced"]
    rules = _rules_for_operator(out)
    cluster_rules = [rule for kind, _, rule in rules if kind == "ClusterRoleBinding"]
    assert cluster_rules == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}], \
        "namespaced mode without CRD watching needs nothing cluster-wide but kopf's namespace list"
    scopes = {scope for _, scope, rule in rules if "preheats" in rule["resources"]}
    assert scopes == {"team-a", "team-b"}
    secret_rules = [rule for _, _, rule in rules if "secrets" in rule["resources"]]
    assert len(secret_rules) == 2
    assert all(r["verbs"] == ["get"] and r["resourceNames"] == ["registry-auth"] for r in secret_rules)
    deployment = out.one("Deployment", OPERATOR)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_operator_rbac_static_supernodes_without_secrets(renders: dict[str, Rendered]) -> None:
    out = renders["operator-static"]
    resources = {r for _, _, rule in _rules_for_operator(out) for r in rule["resources"]}
    assert "secrets" not in resources and "endpointslices" not in resources
    env = _env(out.one("Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0])
    assert env["DFOPERATOR_SUPERNODES"] == "http://sn-0.example:8002,http://sn-1.example:8002"
    assert "DFOPERATOR_SUPERNODE_SERVICE" not in env


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_no_rbac_wildcards_or_writes_beyond_need(renders: dict[str, Rendered], combination: str) -> None:
    for doc in renders[combination].manifests():
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], doc["metadata"]["name"]
            assert not {"create", "update", "delete", "deletecollection"} & set(rule["verbs"]) or \
                rule["resources"] == ["events"], (doc["metadata"]["name"], rule)
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"], "never list or watch Secrets"


def test_operator_off(renders: dict[str, Rendered]) -> None:
    out = renders["operator-off"]
    kinds = {d["kind"] for d in out.manifests()}
    assert not kinds & {"Deployment", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert [sa["metadata"]["name"] for sa in out.of_kind("ServiceAccount")] == [FULL]
    (monitor,) = out.of_kind("ServiceMonitor")
    assert monitor["metadata"]["name"] == f"{FULL}-supernode"
    rule = out.one("PrometheusRule")
    alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert not {a for a in alerts if a and "Operator" in a}
    assert "operator is disabled" in out.notes


# -------------------------------------------------------------------------------- the dfget DaemonSet


def test_dfget_daemonset_with_host_network(renders: dict[str, Rendered]) -> None:
    assert not renders["defaults"].of_kind("DaemonSet"), "the uploader is optional and off by default"
    ds = renders["daemonset"].one("DaemonSet", f"{FULL}-dfget")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (container,) = pod["containers"]
    assert container["command"] == ["dfget", "server"]
    assert container["args"][:3] == ["--ip=$(DFGET_IP)", "--port=15001", "--home=/home/dfget"]
    assert "--totallimit=50M" in container["args"]
    assert _env(container)["DFGET_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    (port,) = container["ports"]
    assert port["containerPort"] == port["hostPort"] == 15001
    assert container["livenessProbe"]["httpGet"] == {"path": "/server/ping", "port": "upload"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["home"]["hostPath"] == {"path": "/var/lib/dragonfly/dfget", "type": "DirectoryOrCreate"}
    (init,) = pod["initContainers"]
    assert init["command"] == ["chown", "10001:10001", "/home/dfget"]


def test_dfget_daemonset_on_the_pod_network(renders: dict[str, Rendered]) -> None:
    pod = renders["daemonset-podnet"].one("DaemonSet")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod and "initContainers" not in pod
    (container,) = pod["containers"]
    assert _env(container)["DFGET_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert "hostPort" not in container["ports"][0]


def test_dfget_accepts_the_rendered_flags(renders: dict[str, Rendered]) -> None:
    from dfget.cli import parse_server

    (container,) = renders["daemonset"].one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(DFGET_IP)", "10.0.0.7") for a in container["args"]]
    config = parse_server(args)
    assert config.port == 15001 and str(config.home) == "/home/dfget" and config.ip == "10.0.0.7"
    assert config.alive_time >= 365 * 24 * 3600, "the DaemonSet's uploader must not idle out"
    assert config.total_limit == 50 * 1024**2


def test_mirror_in_the_daemonset(renders: dict[str, Rendered]) -> None:
    from dfget.mirror.cli import config_values
    from dfget.mirror.config import MirrorConfig

    assert "--registry" not in str(renders["daemonset"].one("DaemonSet")), "the mirror is off by default"
    out = renders["mirror"]
    pod = out.one("DaemonSet")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    mirror = containers["mirror"]
    assert mirror["command"] == ["dfget", "proxy"]
    hosts = {c["name"]: c for c in pod["initContainers"]}["containerd-hosts"]
    assert hosts["args"][-1] == "--write-hosts-toml=/etc/containerd/certs.d"
    assert hosts["args"][:-1] == mirror["args"], "hosts.toml names the registries the mirror serves"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["containerd-certs"]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert volumes["mirror-auth"]["secret"]["secretName"] == "node-pull-secret"
    ca = out.one("ConfigMap", f"{FULL}-dfget-mirror-ca")
    assert ca["data"]["1.crt"].startswith("-----BEGIN CERTIFICATE-----")
    assert out.one("ServiceMonitor", f"{FULL}-mirror")["spec"]["endpoints"][0]["port"] == "mirror-metrics"
    # The rendered flags are ones `dfget proxy` accepts (files mounted from the ConfigMap and Secret stand in).
    args = [a.replace("$(DFGET_IP)", "10.0.0.7") for a in mirror["args"]
            if not a.startswith(("--registry-ca", "--auth-file"))]
    values, certs = config_values(args)
    config = MirrorConfig.model_validate(values)
    assert certs is None and (config.listen, config.port) == ("127.0.0.1", 65001)
    assert (config.metrics_listen, config.metrics_port) == ("10.0.0.7", 65002)
    assert [r.name for r in config.registries] == ["docker.io", "registry.internal:5000"]
    assert config.registries[1].url == "https://registry.internal:5000"
    assert config.cache_size == 20 * 1024**3
    assert [str(n) for n in config.nodes] == [f"{FULL}-0.{HEADLESS}.dragonfly.svc:8002"]


def test_mirror_needs_the_host_network(helm: Any, render: Any) -> None:
    with pytest.raises(helm.HelmError, match="hostNetwork"):
        render({"dfget": {"enabled": True, "hostNetwork": False, "mirror": {"enabled": True}}})


# -------------------------------------------------------------------------------- monitoring


def test_service_monitors_scrape_each_component_once(renders: dict[str, Rendered]) -> None:
    out = renders["monitoring"]
    monitors = {m["metadata"]["name"]: m for m in out.of_kind("ServiceMonitor")}
    assert set(monitors) == {f"{FULL}-supernode", f"{FULL}-operator"}
    services = out.of_kind("Service")
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [s for s in services
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1, f"{monitor['metadata']['name']} must select one Service, not {len(selected)}"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert endpoint["metricRelabelings"] == [{"action": "labeldrop", "regex": "peer"}]
    supernode_service = next(s for s in services
                             if monitors[f"{FULL}-supernode"]["spec"]["selector"]["matchLabels"].items()
                             <= s["metadata"]["labels"].items())
    assert supernode_service["spec"]["clusterIP"] == "None", "scrape every supernode pod, via the headless Service"


def _rules(out: Rendered) -> list[dict[str, Any]]:
    return [r for g in out.one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_alert_rules_parse_and_query_exported_metrics(renders: dict[str, Rendered]) -> None:
    pytest.importorskip("promql_parser")
    exported = metrics_catalog.exported_sample_names()
    rules = _rules(renders["monitoring"])
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 8
    for rule in rules:
        names = metrics_catalog.metric_names(str(rule["expr"]))
        unknown = {n for n in names if n.startswith("dragonfly_") and n not in exported}
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"
        assert names <= exported | {"up"}, names
    for alert in alerts:
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}
        assert alert["labels"]["team"] == "infra"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert f'namespace="{NAMESPACE}"' in alert["expr"], alert["alert"]
    assert rules[-1] == COMBINATIONS["monitoring"]["metrics"]["prometheusRule"]["additionalRules"][0]


def test_monitoring_is_opt_in(renders: dict[str, Rendered]) -> None:
    kinds = {d["kind"] for d in renders["defaults"].manifests()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


# -------------------------------------------------------------------------------- NOTES


def test_notes_tell_how_to_preheat_and_find_the_dashboard(renders: dict[str, Rendered]) -> None:
    notes = renders["defaults"].notes
    assert "kubectl get ph" in notes
    assert "apiVersion: dragonfly.d7y.io/v1alpha1" in notes and "kind: Preheat" in notes
    assert f"--node {FULL}-0.{HEADLESS}.{NAMESPACE}.svc:8002" in notes
    assert f"{FULL}-dashboard" in notes and 'grafana_dashboard="1"' in notes
    assert "metrics.serviceMonitor.enabled=true" in notes
    assert "The dfget uploader runs on every node" in renders["daemonset"].notes
    assert "team-a, team-b" in renders["operator-namespaced"].notes
    preheat = yaml.safe_load("\n".join(line[2:] for line in notes.split("kubectl apply -f -\n")[1]
                                       .split("  YAML")[0].splitlines()))
    from .conftest import crd_validator

    assert not list(crd_validator().iter_errors(preheat)), "the Preheat in NOTES must be valid"


def test_long_release_names_give_valid_resource_names(render: Any) -> None:
    out = render({"dfget": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}},
                 name="a-very-long-release-name-for-a-team-with-a-long-name-x")
    dns_label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for doc in out.manifests():
        name = doc["metadata"]["name"]
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            continue  # RBAC names are path segments, up to 253 characters
        assert len(name) <= 63 and dns_label.match(name), f"{doc['kind']} {name}"
        if doc["kind"] in ("StatefulSet", "DaemonSet"):
            assert len(name) + 11 <= 63, "controller-revision-hash = <name>-<10 characters>"
