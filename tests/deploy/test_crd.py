"""The Preheat CRD: the contract the operator is written against, strict Kubernetes validity, and the
example manifests (good ones accepted, bad ones rejected) against its openAPIV3Schema."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from .conftest import (
    CHART_CRD_FILE,
    CRD_FILE,
    EXAMPLES,
    KUBE_VERSIONS,
    cel_spec_rule,
    crd_schema,
    crd_validator,
    kube_validate,
    load_crd,
)


def _examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _preheats() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _examples() if doc["kind"] == "Preheat"]


def _errors(obj: dict[str, Any], strict: bool = True) -> list[str]:
    """Schema errors, plus the CEL rule's message when it would reject the spec."""
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in crd_validator(strict).iter_errors(obj)]
    if isinstance(obj.get("spec"), dict) and not cel_spec_rule(obj["spec"]):
        errors.append("/spec: platforms applies to image preheats only")
    return errors


# ------------------------------------------------------------------------------------------------ contract


def test_chart_crd_is_identical_to_the_repository_crd() -> None:
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), (
        "charts/dragonfly-supernode/crds/preheat.yaml must be a copy of crds/preheat.yaml: "
        "cp crds/preheat.yaml charts/dragonfly-supernode/crds/preheat.yaml")


def test_crd_names_and_scope_are_the_operator_contract() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "preheats.dragonfly.d7y.io"
    spec = crd["spec"]
    assert spec["group"] == "dragonfly.d7y.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("Preheat", "preheats", "preheat")
    assert names["shortNames"] == ["ph"]
    assert names["categories"] == ["dragonfly"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Type", "URL", "Phase", "Ready", "Age"]
    assert columns["Type"]["jsonPath"] == ".spec.type"
    assert columns["URL"]["jsonPath"] == ".spec.url" and columns["URL"].get("priority", 0) == 0
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_spec_and_status_fields_are_the_operator_contract() -> None:
    schema = crd_schema()
    assert schema["required"] == ["spec"]
    spec = schema["properties"]["spec"]
    assert set(spec["required"]) == {"type", "url"}
    props = spec["properties"]
    assert set(props) == {"type", "url", "filter", "identifier", "platforms", "headersSecretRef", "supernodes"}
    assert props["type"]["enum"] == ["image", "file"]
    assert props["url"]["minLength"] == 3
    assert props["platforms"]["items"]["pattern"] == "^[a-z0-9]+/[a-z0-9]+(/[a-z0-9.]+)?$"
    assert props["headersSecretRef"]["required"] == ["name"]
    assert set(props["headersSecretRef"]["properties"]) == {"name", "key"}  # key: the operator's SecretRef.key
    assert props["supernodes"]["items"]["type"] == "string"

    status = schema["properties"]["status"]["properties"]
    assert set(status) == {"phase", "conditions", "supernodes", "startTime", "finishTime", "observedGeneration"}
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert set(status["supernodes"]["items"]["properties"]) == {"url", "preheatID", "state", "errorMsg"}
    for field in ("startTime", "finishTime"):
        assert status[field] == {"type": "string", "format": "date-time"}
    assert status["observedGeneration"]["type"] == "integer"


def test_schema_is_structural_and_prunes_nothing_the_operator_writes() -> None:
    """Every node has a type (a structural schema), and nothing keeps unknown fields: the operator keeps its
    kopf bookkeeping in annotations, so status has only the declared fields."""
    def walk(node: dict[str, Any], path: str) -> None:
        assert "x-kubernetes-preserve-unknown-fields" not in node, f"{path}: preserve-unknown-fields"
        assert "type" in node, f"{path}: no type (not structural)"
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(crd_schema(), "")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crd_is_a_valid_kubernetes_object(version: str) -> None:
    pytest.importorskip("kubernetes_validate")
    assert kube_validate(load_crd(), version) is None


# ------------------------------------------------------------------------------------------------ examples


def test_examples_cover_an_image_with_platforms_and_secret_and_a_file() -> None:
    preheats = {doc["spec"]["type"]: doc for _, doc in _preheats()}
    assert set(preheats) == {"image", "file"}
    image = preheats["image"]["spec"]
    assert image["platforms"] and image["headersSecretRef"]["name"]
    secrets = {doc["metadata"]["name"] for _, doc in _examples() if doc["kind"] == "Secret"}
    assert image["headersSecretRef"]["name"] in secrets


@pytest.mark.parametrize(("name", "doc"), _preheats(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_preheats_are_valid(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "dragonfly.d7y.io/v1alpha1"
    assert _errors(doc) == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_example_builtin_objects_are_valid_kubernetes_objects(version: str) -> None:
    pytest.importorskip("kubernetes_validate")
    builtins = [doc for _, doc in _examples() if doc["kind"] != "Preheat"]
    assert builtins, "the image example carries its Secret"
    assert [e for doc in builtins if (e := kube_validate(doc, version))] == []


def _file() -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in _preheats() if doc["spec"]["type"] == "file"))


def _image() -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in _preheats() if doc["spec"]["type"] == "image"))


def _drop(path: str) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    return change


def _set(path: str, value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return change


BAD = {
    "no spec": (_file, _drop("spec")),
    "no url": (_file, _drop("spec.url")),
    "no type": (_file, _drop("spec.type")),
    "type tarball": (_file, _set("spec.type", "tarball")),
    "url too short": (_file, _set("spec.url", "x")),
    "url not a string": (_file, _set("spec.url", 42)),
    "inline headers (credentials belong in a Secret)": (_file, _set("spec.headers", {"Authorization": "Basic x"})),
    "unknown spec field": (_file, _set("spec.md5", "0" * 32)),
    "platform without arch": (_image, _set("spec.platforms", ["linux"])),
    "platform in capitals": (_image, _set("spec.platforms", ["Linux/AMD64"])),
    "platforms not a list": (_image, _set("spec.platforms", "linux/amd64")),
    "platforms on a file": (_file, _set("spec.platforms", ["linux/amd64"])),
    "secret ref without name": (_image, _set("spec.headersSecretRef", {})),
    "secret ref to another namespace": (_image, _set("spec.headersSecretRef", {"name": "x", "namespace": "y"})),
    "secret ref with an empty key": (_image, _set("spec.headersSecretRef", {"name": "x", "key": ""})),
    "supernode not a URL": (_file, _set("spec.supernodes", ["10.0.0.1:8002"])),
    "status phase unknown": (_file, _set("status", {"phase": "Done"})),
    "condition status yes": (_file, _set("status", {"conditions": [{"type": "Ready", "status": "yes"}]})),
    "condition without type": (_file, _set("status", {"conditions": [{"status": "True"}]})),
    "bad transition time": (_file, _set("status", {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "yesterday"}]})),
    "supernode status without url": (_file, _set("status", {"supernodes": [{"preheatID": "abc"}]})),
    "kopf bookkeeping in status": (_file, _set("status", {"kopf": {"progress": {}}})),
    "observedGeneration a string": (_file, _set("status", {"observedGeneration": "1"})),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_preheats_are_rejected(case: str) -> None:
    make, change = BAD[case]
    doc = make()
    assert _errors(doc) == [], "the starting example must be valid"
    change(doc)
    assert _errors(doc), f"{case}: accepted {doc}"


def test_a_status_as_the_operator_writes_it_is_valid() -> None:
    doc = _image()
    doc["status"] = {
        "phase": "Running",
        "observedGeneration": 2,
        "startTime": "2025-01-02T03:04:05Z",
        "conditions": [{"type": "Ready", "status": "False", "reason": "LayersDownloading",
                        "message": "1 of 2 supernodes finished", "lastTransitionTime": "2025-01-02T03:04:05Z",
                        "observedGeneration": 2}],
        "supernodes": [
            {"url": "http://10.0.0.5:8002", "preheatID": "a" * 64, "state": "SUCCESS"},
            {"url": "http://10.0.0.6:8002", "preheatID": "b" * 64, "state": "RUNNING", "errorMsg": ""},
        ],
    }
    assert _errors(doc) == []
    doc["status"].update(phase="Succeeded", finishTime="2025-01-02T03:09:00.123Z")
    assert _errors(doc) == []


def test_crd_spec_matches_the_operators_model() -> None:
    """The fields the operator reads (its pydantic PreheatSpec and SecretRef) are exactly the CRD's: a field
    the CRD lacks would be pruned by the API server before the operator ever saw it."""
    import importlib
    import sys

    base = CRD_FILE.parents[1] / "operator"
    packages = [p.name for p in base.iterdir() if (p / "resource.py").is_file()] if base.is_dir() else []
    if not packages:
        pytest.skip("no operator package with a resource module yet")
    sys.path.insert(0, str(base))
    try:
        resource = importlib.import_module(f"{packages[0]}.resource")
    finally:
        sys.path.remove(str(base))

    def wire_names(model: Any) -> set[str]:
        return {field.alias or name for name, field in model.model_fields.items()}

    spec = crd_schema()["properties"]["spec"]["properties"]
    assert wire_names(resource.PreheatSpec) == set(spec)
    assert wire_names(resource.SecretRef) == set(spec["headersSecretRef"]["properties"])
    assert (resource.GROUP, resource.VERSION, resource.PLURAL, resource.KIND) == (
        "dragonfly.d7y.io", "v1alpha1", "preheats", "Preheat")
