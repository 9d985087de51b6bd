"""The operator as it runs in a cluster: the ``dragonfly-operator`` process, logged in with a token of the
chart's ServiceAccount and allowed exactly what the chart's RBAC grants, against a real API server, with
supernodes on 127.0.0.2 and 127.0.0.3 found through the EndpointSlice of the chart's headless Service.

What the tests read is what a user reads: ``kubectl get ph`` / ``-o json``, ``kubectl get events``, and
a watch for the phases; the supernodes' side through their own API and metrics.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dfoperator.resource import FINALIZER
from tests.k8s.conftest import (
    ClusterSupernode,
    OperatorProcess,
    endpoint_slice_of,
    headless_service,
    install_operator,
)
from tests.k8s.controlplane import ControlPlane
from tests.k8s.kube import Api, Kubectl
from tests.operator.helpers import SlowOrigin, get_json, get_text, wait_for
from tests.v1proto import OriginServer, pattern_bytes

pytestmark = pytest.mark.k8s

WITHIN = 60.0  # a loaded 2-core machine: the operator process, two supernodes and the API server share it


def preheat_doc(name: str, namespace: str, url: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "dragonfly.d7y.io/v1alpha1", "kind": "Preheat",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "file", "url": url, **spec}}


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or () if c.get("type") == "Ready")


def phase_in(api: Api, name: str, namespace: str, *phases: str) -> Callable[[], Any]:
    async def check() -> dict[str, Any] | None:
        status = await api.status(name, namespace)
        return status if status.get("phase") in phases else None
    return check


async def preheat_posts(node: ClusterSupernode) -> float:
    """``POST /preheats`` the supernode answered, from its own ``http_requests_total`` (the operator is
    the only client that creates preheats; nobody lists them in these tests)."""
    total = 0.0
    for family in text_string_to_metric_families(await get_text(f"{node.api_url}/metrics")):
        for sample in family.samples:
            if sample.name == "dragonfly_supernode_http_requests_total" and sample.labels.get("handler") == "/preheats":
                total += sample.value
    return total


async def test_preheat_goes_pending_running_succeeded(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, origin: OriginServer,
        kubectl: Kubectl, api: Api, record_phases: Any) -> None:
    """Discovery, a Secret's headers, status through the subresource, Events, kubectl's view."""
    origin.files["/weights.bin"] = pattern_bytes(2 * 1024 * 1024 + 5)
    token = base64.b64encode(b"s3cret").decode()
    (await kubectl.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": "origin-headers", "namespace": namespace},
                          "data": {"X-Origin-Token": token}})).ok()
    await operators()
    phases = await record_phases("weights", namespace)

    (await kubectl.apply(preheat_doc("weights", namespace, origin.url("/weights.bin"),
                                     headersSecretRef={"name": "origin-headers"}))).ok()
    status = await wait_for("Succeeded", phase_in(api, "weights", namespace, "Succeeded", "Failed"), within=WITHIN)

    assert status["phase"] == "Succeeded", status
    await wait_for("the watch to see Succeeded", lambda: phases.phases[-1:] == ["Succeeded"])
    assert phases.phases == ["Pending", "Running", "Succeeded"], phases.phases
    assert sorted(e["url"] for e in status["supernodes"]) == sorted(n.api_url for n in supernodes)
    assert {e["state"] for e in status["supernodes"]} == {"SUCCESS"}
    assert ready(status)["status"] == "True" and ready(status)["reason"] == "Succeeded"
    assert status["observedGeneration"] == 1
    for entry, node in zip(sorted(status["supernodes"], key=lambda e: e["url"]),
                           sorted(supernodes, key=lambda n: n.api_url), strict=True):
        code, info = await get_json(f"{node.api_url}/preheats/{entry['preheatID']}")
        assert code == 200 and info["status"] == "SUCCESS", info
    assert {r.headers.get("X-Origin-Token") for r in origin.log} == {"s3cret"}

    obj = await api.preheat("weights", namespace)
    assert obj is not None and FINALIZER in obj["metadata"]["finalizers"]
    # The status was written through the status subresource, by the operator's own identity.
    status_writers = {(m.get("manager"), m.get("subresource")) for m in obj["metadata"]["managedFields"]
                      if "f:status" in (m.get("fieldsV1") or {})}
    assert status_writers and {sub for _, sub in status_writers} == {"status"}, obj["metadata"]["managedFields"]

    table = (await kubectl("get", "ph", "-n", namespace)).ok().stdout
    assert "weights" in table.splitlines()[1] and "Succeeded" in table and "True" in table, table
    shown = (await kubectl("get", "events", "-n", namespace)).ok().stdout
    assert "Submitted" in shown and "preheat/weights" in shown.lower(), shown
    posted = await api.events("weights", namespace)
    submitted = sorted(e["message"] for e in posted if e["reason"] == "Submitted")  # one per supernode
    assert submitted == sorted(f"preheat {e['preheatID']} submitted to {e['url']}" for e in status["supernodes"])
    assert [e["reason"] for e in posted].count("Succeeded") == 1, posted


async def test_a_spec_change_and_a_delete(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, slow_origin: SlowOrigin,
        kubectl: Kubectl, api: Api) -> None:
    """A new identifier is new content: new preheats, the old ones cancelled; deleting cancels the rest
    and lets the object go (the finalizer is removed)."""
    await operators()
    (await kubectl.apply(preheat_doc("moving", namespace, slow_origin.url()))).ok()
    running = await wait_for("Running", phase_in(api, "moving", namespace, "Running"), within=WITHIN)
    old = {e["url"]: e["preheatID"] for e in running["supernodes"]}

    (await kubectl("patch", "ph", "moving", "-n", namespace, "--type=merge",
                   "-p", '{"spec":{"identifier":"v2"}}')).ok()

    async def resubmitted() -> dict[str, Any] | None:
        status = await api.status("moving", namespace)
        ids = {e["url"]: e.get("preheatID") for e in status.get("supernodes") or ()}
        fresh = status.get("observedGeneration") == 2 and len(ids) == 2 and all(ids.values())
        return status if fresh and not set(ids.values()) & set(old.values()) else None

    moved = await wait_for("the new spec's preheats", resubmitted, within=WITHIN)
    new = {e["url"]: e["preheatID"] for e in moved["supernodes"]}
    for url, pid in old.items():
        await wait_for(f"the old preheat cancelled on {url}",
                       lambda url=url, pid=pid: _gone(url, pid), within=WITHIN)

    (await kubectl("delete", "ph", "moving", "-n", namespace, "--wait=false")).ok()
    await wait_for("the object to be gone", lambda: _absent(api, "moving", namespace), within=WITHIN)
    for url, pid in new.items():
        assert await _gone(url, pid), f"{url} still has preheat {pid}"
    reasons = [e["reason"] for e in await api.events("moving", namespace)]
    assert "Cancelled" in reasons, reasons


async def _gone(url: str, pid: str) -> bool:
    code, _ = await get_json(f"{url}/preheats/{pid}")
    return code == 404


async def _absent(api: Api, name: str, namespace: str) -> bool:
    return await api.preheat(name, namespace) is None


async def test_an_operator_restart_posts_nothing_twice(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, slow_origin: SlowOrigin,
        kubectl: Kubectl, api: Api) -> None:
    first: OperatorProcess = await operators()
    (await kubectl.apply(preheat_doc("survivor", namespace, slow_origin.url()))).ok()
    running = await wait_for("Running", phase_in(api, "survivor", namespace, "Running"), within=WITHIN)
    ids = {e["url"]: e["preheatID"] for e in running["supernodes"]}
    assert await first.stop() == 0  # SIGTERM: a clean exit, as in a rolling update
    # Nothing in flight was cut off by the shutdown (a status write failing on a closed client).
    assert "failed with an exception" not in first.log(100_000), first.log()
    posts = [await preheat_posts(node) for node in supernodes]
    assert posts == [1.0, 1.0], posts

    await operators()
    slow_origin.release()
    done = await wait_for("Succeeded", phase_in(api, "survivor", namespace, "Succeeded", "Failed"), within=WITHIN)
    assert done["phase"] == "Succeeded", done
    assert {e["url"]: e["preheatID"] for e in done["supernodes"]} == ids
    assert [await preheat_posts(node) for node in supernodes] == [1.0, 1.0]
    reasons = [e["reason"] for e in await api.events("survivor", namespace)]
    assert reasons.count("Submitted") == len(supernodes), reasons


async def test_a_supernode_down_then_up(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, origin: OriginServer,
        kubectl: Kubectl, api: Api) -> None:
    """One supernode is down when the Preheat comes: the other preheats, the down one is retried
    (SupernodeUnreachable) and preheats once it is back."""
    origin.files["/later.bin"] = pattern_bytes(300_000)
    down, up = supernodes
    await down.stop()
    await operators()
    (await kubectl.apply(preheat_doc("patient", namespace, origin.url("/later.bin")))).ok()

    async def retrying() -> dict[str, Any] | None:
        status = await api.status("patient", namespace)
        entries = {e["url"]: e for e in status.get("supernodes") or ()}
        waiting = entries.get(down.api_url, {}).get("state") == "RETRYING"
        return status if waiting and ready(status)["reason"] == "SupernodeUnreachable" else None

    await wait_for("the down supernode to be retried", retrying, within=WITHIN)
    await down.start()
    done = await wait_for("Succeeded", phase_in(api, "patient", namespace, "Succeeded", "Failed"), within=WITHIN)
    assert done["phase"] == "Succeeded", done
    assert {e["url"]: e["state"] for e in done["supernodes"]} == {down.api_url: "SUCCESS", up.api_url: "SUCCESS"}


async def test_a_missing_secret_holds_the_preheat_until_it_appears(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, origin: OriginServer,
        kubectl: Kubectl, api: Api) -> None:
    origin.files["/private.bin"] = pattern_bytes(50_000)
    await operators()
    (await kubectl.apply(preheat_doc("private", namespace, origin.url("/private.bin"),
                                     headersSecretRef={"name": "late-secret"}))).ok()

    async def blocked() -> dict[str, Any] | None:
        status = await api.status("private", namespace)
        conditions = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
        return status if conditions and conditions[0]["reason"] == "SecretNotFound" else None

    status = await wait_for("SecretNotFound", blocked, within=WITHIN)
    assert status["phase"] == "Pending" and f"Secret {namespace}/late-secret not found" in ready(status)["message"]
    assert [await preheat_posts(node) for node in supernodes] == [0.0, 0.0]

    (await kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late-secret",
                                                                             "namespace": namespace},
                          "stringData": {"Authorization": "Bearer late"}})).ok()
    done = await wait_for("Succeeded", phase_in(api, "private", namespace, "Succeeded", "Failed"), within=WITHIN)
    assert done["phase"] == "Succeeded", done
    assert {r.headers.get("Authorization") for r in origin.log} == {"Bearer late"}


async def test_a_namespaced_install_handles_its_namespaces_only(
        namespace: str, supernodes: list[ClusterSupernode], operators: Any, origin: OriginServer,
        render: Any, release_namespace: str, kubectl: Kubectl, api: Api, control_plane: ControlPlane,
        tmp_path: Path) -> None:
    """``operator.watchNamespaces``: Roles instead of the ClusterRole, and ``--namespace`` for kopf. A second
    release (``dfns``), with its own ServiceAccount, Roles and headless Service, beside the default one."""
    origin.files["/team.bin"] = pattern_bytes(40_000)
    chart = render({"operator": {"watchNamespaces": [namespace]}}, name="dfns")
    cluster_wide = {r for role in chart.of_kind("ClusterRole") for rule in role["rules"] for r in rule["resources"]}
    assert cluster_wide == {"customresourcedefinitions", "namespaces"}, cluster_wide  # Preheats: Roles only
    identity = await asyncio.to_thread(install_operator, chart, kubectl, api, control_plane, tmp_path / "dfns")
    slice_doc = endpoint_slice_of(headless_service(chart), supernodes)
    (await kubectl.apply(slice_doc)).ok()
    try:
        await operators(identity)
        (await kubectl.apply(preheat_doc("team", namespace, origin.url("/team.bin")))).ok()
        done = await wait_for("Succeeded", phase_in(api, "team", namespace, "Succeeded", "Failed"), within=WITHIN)
        assert done["phase"] == "Succeeded", done
        assert sorted(e["url"] for e in done["supernodes"]) == sorted(n.api_url for n in supernodes)
    finally:
        await kubectl("delete", "endpointslice", slice_doc["metadata"]["name"], "-n", release_namespace)
