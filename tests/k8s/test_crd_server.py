"""The Preheat CRD on a real API server: installed with kubectl, Established, its printer columns, every
example accepted, and every bad Preheat the schema tests know (tests/deploy/test_crd.py ``BAD``) refused
by the server itself, with the message the user reads.

Objects that should be refused are sent with ``dryRun=All`` (kubectl ``--dry-run=server``): the server
validates and admits them in full but stores nothing, so a wrongly accepted one leaves no trace for the
operator tests that follow.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from dfoperator.resource import API_VERSION, PLURAL
from tests.deploy.conftest import EXAMPLES
from tests.deploy.test_crd import BAD, _file
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kube import Api, Kubectl, api_request

pytestmark = pytest.mark.k8s

_INCOMPLETE = "some validation rules were not checked"

#: case -> (what the server's message says, the field kubectl's message names whichever kubectl it is:
#: a 1.20 client validates some cases itself, in its own words, before the server is asked).
REFUSALS: dict[str, tuple[str, str]] = {
    "no spec": ("spec: Required value", "spec"),
    "no url": ("spec.url: Required value", "url"),
    "no type": ("spec.type: Required value", "type"),
    "type tarball": ('spec.type: Unsupported value: "tarball": supported values: "image", "file"', "tarball"),
    "url too short": ("spec.url in body should be at least 3 chars long", "spec.url"),
    "url not a string": ("spec.url in body must be of type string", "url"),
    "inline headers (credentials belong in a Secret)": ('strict decoding error: unknown field "spec.headers"',
                                                        "headers"),
    "unknown spec field": ('strict decoding error: unknown field "spec.md5"', "md5"),
    "platform without arch": ("spec.platforms[0] in body should match '^[a-z0-9]+/[a-z0-9]+(/[a-z0-9.]+)?$'",
                              "spec.platforms[0]"),
    "platform in capitals": ('spec.platforms[0]: Invalid value: "Linux/AMD64"', "spec.platforms[0]"),
    "platforms not a list": ("spec.platforms in body must be of type array", "platforms"),
    "platforms on a file": ("platforms applies to image preheats only", "platforms applies to image preheats only"),
    "secret ref without name": ("spec.headersSecretRef.name: Required value", "name"),
    "secret ref to another namespace": ('unknown field "spec.headersSecretRef.namespace"', "namespace"),
    "secret ref with an empty key": ("spec.headersSecretRef.key in body should be at least 1 chars long",
                                     "spec.headersSecretRef.key"),
    "supernode not a URL": ('spec.supernodes[0]: Invalid value: "10.0.0.1:8002"', "spec.supernodes[0]"),
    # Written through the status subresource, as only the operator does; the server names the field
    # relative to status.
    "status phase unknown": ('phase: Unsupported value: "Done"', ""),
    "condition status yes": ('conditions[0].status: Unsupported value: "yes"', ""),
    "condition without type": ("conditions[0].type: Required value", ""),
    "bad transition time": ('conditions[0].lastTransitionTime: Invalid value: "yesterday"', ""),
    "supernode status without url": ("supernodes[0].url: Required value", ""),
    "kopf bookkeeping in status": ('strict decoding error: unknown field "status.kopf"', ""),
    "observedGeneration a string": ("observedGeneration in body must be of type integer", ""),
}


def test_every_bad_case_has_an_expected_refusal() -> None:
    assert set(REFUSALS) == set(BAD)


def test_the_crd_is_established_under_its_names(crd: str, kubectl: Kubectl) -> None:
    assert "customresourcedefinition.apiextensions.k8s.io/preheats.dragonfly.d7y.io" in crd
    found = kubectl.run("get", "crd", "preheats.dragonfly.d7y.io", "-o", "json").ok()
    status = yaml.safe_load(found.stdout)["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True", conditions
    names = status["acceptedNames"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "Preheat", "preheats", ["ph"], ["dragonfly"])
    resources = kubectl.run("api-resources", "--api-group=dragonfly.d7y.io").ok().stdout
    assert "preheats" in resources and " ph " in resources and "Preheat" in resources, resources


async def test_kubectl_get_ph_shows_the_printer_columns(namespace: str, kubectl: Kubectl, api: Api,
                                                        control_plane: ControlPlane) -> None:
    doc = _file()
    doc["metadata"] = {"name": "columns", "namespace": namespace}
    (await kubectl.apply(doc)).ok()
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "Preheating",
                                                  "message": "0 of 2 supernodes finished",
                                                  "lastTransitionTime": "2026-01-02T03:04:05Z"}]}
    code, answer = await api_request(
        control_plane.server, control_plane.admin_token, control_plane.ssl_context(), "PATCH",
        f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/columns/status", {"status": status},
        content_type="application/merge-patch+json")
    assert code == 200, answer

    table = (await kubectl("get", "ph", "-n", namespace)).ok().stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "URL", "PHASE", "READY", "AGE"], table
    row = table[1].split()
    assert row[:5] == ["columns", "file", doc["spec"]["url"], "Running", "False"], table
    # The category: `kubectl get dragonfly` lists Preheats too.
    assert "columns" in (await kubectl("get", "dragonfly", "-n", namespace)).ok().stdout


async def test_a_status_in_an_applied_manifest_is_dropped(namespace: str, kubectl: Kubectl, api: Api) -> None:
    """With the status subresource, only ``/status`` writes status: what a user applies there is ignored."""
    doc = _file()
    doc["metadata"] = {"name": "self-declared", "namespace": namespace}
    doc["status"] = {"phase": "Succeeded"}
    (await kubectl.apply(doc)).ok()
    stored = await api.preheat("self-declared", namespace)
    assert stored is not None and "status" not in stored, stored


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
async def test_every_example_is_accepted(path: Any, crd: str, kubectl: Kubectl) -> None:
    kinds = [doc["kind"].lower() for doc in yaml.safe_load_all(path.read_text()) if doc]
    result = (await kubectl("apply", "--dry-run=server", "-f", str(path))).ok()
    assert result.stdout.count("created (server dry run)") == len(kinds), result.stdout
    assert "Warning" not in result.stderr, result.stderr  # nothing pruned or deprecated


def _bad(case: str) -> dict[str, Any]:
    make, change = BAD[case]
    doc = copy.deepcopy(make())
    change(doc)
    return doc


@pytest.mark.parametrize("case", [c for c in BAD if "status" not in _bad(c)])
async def test_a_bad_spec_is_refused_by_the_server(case: str, namespace: str, kubectl: Kubectl,
                                                   control_plane: ControlPlane) -> None:
    doc = _bad(case)
    doc["metadata"]["namespace"] = namespace
    expected, named = REFUSALS[case]
    # Straight to the server, with the field validation kubectl (1.25 and later) asks for by default.
    code, answer = await api_request(
        control_plane.server, control_plane.admin_token, control_plane.ssl_context(), "POST",
        f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}?fieldValidation=Strict&dryRun=All", doc)
    assert code in (400, 422), f"{case}: the server accepted {doc}"
    assert expected in answer["message"], answer["message"]

    result = await kubectl.apply(doc, "--dry-run=server")
    assert result.code != 0, f"{case}: kubectl apply accepted it: {result.stdout}"
    assert named in result.stderr, result.stderr


@pytest.mark.parametrize("case", [c for c in BAD if "status" in _bad(c)])
async def test_a_bad_status_is_refused_by_the_server(case: str, namespace: str, kubectl: Kubectl,
                                                     control_plane: ControlPlane) -> None:
    doc = _bad(case)
    status = doc.pop("status")
    name = doc["metadata"]["name"]
    doc["metadata"]["namespace"] = namespace
    (await kubectl.apply(doc)).ok()
    code, answer = await api_request(
        control_plane.server, control_plane.admin_token, control_plane.ssl_context(), "PATCH",
        f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status?fieldValidation=Strict&dryRun=All",
        {"status": status}, content_type="application/merge-patch+json")
    assert code in (400, 422), f"{case}: the server accepted status {status}"
    assert REFUSALS[case][0] in answer["message"], answer["message"]
