"""The operator end to end: kopf in the test's loop, kmock as the cluster over HTTP, the real supernode
process preheating real files from a real origin.

Each test applies ``kubectl``-shaped manifests and reads back what ``kubectl get ph -o yaml`` and
``kubectl get events`` would show; the supernode's side is read through its own API and through a
proxy that logs every request the operator sends it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from dfoperator.resource import FINALIZER
from tests.operator.conftest import Operators, operator_config
from tests.operator.helpers import (
    CountingProxy,
    SlowOrigin,
    StampingEmulator,
    apply,
    crd_schema,
    delete,
    event_reasons,
    events,
    get_json,
    get_text,
    patch_spec,
    phase_history,
    preheat,
    pruned_fields,
    ready_history,
    status,
    wait_for,
)
from tests.v1proto import OriginServer, SupernodeProcess, free_port, pattern_bytes

MANIFEST = """\
apiVersion: dragonfly.d7y.io/v1alpha1
kind: Preheat
metadata:
  name: {name}
  namespace: default
spec:
  type: file
  url: {url}
"""


def manifest(name: str, url: str, **spec: object) -> str:
    text = MANIFEST.format(name=name, url=url)
    for key, value in spec.items():
        text += f"  {key}: {json.dumps(value)}\n"
    return text


def ready(st: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in st.get("conditions") or [] if c.get("type") == "Ready")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def get_samples(url: str) -> Samples:
    return samples(await get_text(url))


async def gauge_reaches(url: str, phase: str, value: float) -> Samples:
    """The metrics once ``dragonfly_operator_preheats{phase}`` shows ``value``: the gauge follows the
    watch events, which arrive a moment after the status write the test has already seen."""
    key = ("dragonfly_operator_preheats", frozenset({("phase", phase)}))

    async def check() -> Samples | None:
        found = samples(await get_text(url))
        return found if found.get(key) == value else None

    found: Samples = await wait_for(f"preheats{{phase={phase}}} == {value}", check)
    return found


def phase_is(cluster: StampingEmulator, name: str, *phases: str) -> dict[str, Any] | None:
    st = status(cluster, name)
    return st if st.get("phase") in phases else None


async def test_preheat_goes_pending_running_succeeded(
        cluster: StampingEmulator, operators: Operators, supernode: SupernodeProcess, origin: OriginServer,
        proxy: CountingProxy) -> None:
    """Discovery through the Service's EndpointSlices, headers from a Secret, status, Events, metrics."""
    origin.files["/data/model.bin"] = pattern_bytes(3 * 1024 * 1024 + 17)
    token = base64.b64encode(b"s3cret-token").decode()
    await apply(cluster, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": "origin-headers", "namespace": "default"},
                          "data": {"X-Origin-Token": token}})
    # The Service's slices: a ready supernode (through the proxy), a pod that is not ready, another Service.
    await apply(cluster, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": "dragonfly-supernode-abcde", "namespace": "dragonfly",
                                       "labels": {"kubernetes.io/service-name": "dragonfly-supernode"}},
                          "ports": [{"name": "api", "port": proxy.port, "protocol": "TCP"},
                                    {"name": "cdn", "port": supernode.cdn_port, "protocol": "TCP"}],
                          "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}},
                                        {"addresses": ["127.0.0.9"], "conditions": {"ready": False}}]})
    await apply(cluster, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": "other-xyz", "namespace": "dragonfly",
                                       "labels": {"kubernetes.io/service-name": "other"}},
                          "ports": [{"name": "api", "port": 1}],
                          "endpoints": [{"addresses": ["127.0.0.10"]}]})
    operator = await operators.start(operator_config())

    await apply(cluster, manifest("model", origin.url("/data/model.bin"),
                                  headersSecretRef={"name": "origin-headers"}))
    st = await wait_for("Succeeded", lambda: phase_is(cluster, "model", "Succeeded", "Failed"))

    assert st["phase"] == "Succeeded", st
    assert phase_history(cluster, "model") == ["Pending", "Running", "Succeeded"]
    [entry] = st["supernodes"]
    assert entry["url"] == proxy.url and entry["state"] == "SUCCESS" and "errorMsg" not in entry
    pid = entry["preheatID"]
    condition = ready(st)
    assert condition["status"] == "True" and condition["reason"] == "Succeeded"
    assert condition["observedGeneration"] == 1 and condition["lastTransitionTime"]
    assert st["observedGeneration"] == 1
    assert st["startTime"] <= st["finishTime"]

    # The supernode has the preheat, asked for once, and the origin saw the Secret's header.
    code, info = await get_json(f"{supernode.api_url}/preheats/{pid}")
    assert code == 200 and info["status"] == "SUCCESS", info
    assert proxy.count("POST") == 1
    assert [r for r in origin.log if r.path == "/data/model.bin"]
    assert all(r.headers.get("X-Origin-Token") == "s3cret-token" for r in origin.log if r.path == "/data/model.bin")

    # Events for the milestones; kopf's bookkeeping in our annotations; status only in our schema.
    reasons = await wait_for("the Succeeded Event",
                             lambda: (r := event_reasons(cluster, "model")) and "Succeeded" in r and r)
    assert reasons.count("Submitted") == 1 and reasons.count("Succeeded") == 1, reasons
    assert all(e["type"] == "Normal" for e in events(cluster, "model"))
    obj = preheat(cluster, "model")
    assert obj is not None
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    annotations = obj["metadata"].get("annotations") or {}
    assert annotations and all(key.startswith("dragonfly.d7y.io/") for key in annotations), annotations
    schema = crd_schema()
    assert pruned_fields(obj, schema) == []
    jsonschema.validate(obj, schema, format_checker=jsonschema.FormatChecker())

    # Metrics on /metrics.
    found = await gauge_reaches(operator.metrics_url, "Succeeded", 1)
    assert found[("dragonfly_operator_preheats", frozenset({("phase", "Running")}))] == 0
    assert found[("dragonfly_operator_reconcile_total",
                  frozenset({("handler", "reconcile"), ("result", "success")}))] >= 1
    assert found[("dragonfly_operator_reconcile_total", frozenset({("handler", "poll"), ("result", "success")}))] >= 1
    assert found[("dragonfly_operator_reconcile_duration_seconds_count", frozenset({("handler", "reconcile")}))] >= 1


async def test_unreachable_supernode_fails_without_blocking_the_others(
        cluster: StampingEmulator, operators: Operators, origin: OriginServer, proxy: CountingProxy) -> None:
    origin.files["/f.bin"] = pattern_bytes(200_000)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    operator = await operators.start(operator_config(retry_attempts=3, retry_backoff=1.0))

    await apply(cluster, manifest("two", origin.url("/f.bin"), supernodes=[proxy.url, down]))
    st = await wait_for("Failed", lambda: phase_is(cluster, "two", "Succeeded", "Failed"), within=20)

    assert st["phase"] == "Failed"
    entries = {e["url"]: e for e in st["supernodes"]}
    assert entries[proxy.url]["state"] == "SUCCESS"
    assert entries[down]["state"] == "UNREACHABLE" and "preheatID" not in entries[down]
    assert "unreachable" in entries[down]["errorMsg"] and "gave up after 3 attempts" in entries[down]["errorMsg"]
    condition = ready(st)
    assert condition["status"] == "False" and condition["reason"] == "SupernodeUnreachable"
    assert down in condition["message"] and "succeeded on 1 of 2" in condition["message"]
    # While the down one was retried, the other one finished: it did not wait.
    history = [v.raw["status"] for v in cluster.objects["dragonfly.d7y.io/v1alpha1/preheats", "default", "two"].history
               if v is not None and v.raw.get("status", {}).get("supernodes")]
    assert any({e["url"]: e["state"] for e in h["supernodes"]} == {proxy.url: "SUCCESS", down: "RETRYING"}
               for h in history)
    assert ("Running", "SupernodeUnreachable") in ready_history(cluster, "two")
    reasons = await wait_for("the Failed Event", lambda: (r := event_reasons(cluster, "two")) and "Failed" in r and r)
    assert reasons.count("SupernodeUnreachable") == 1 and reasons.count("Failed") == 1, reasons
    assert proxy.count("POST") == 1  # three handler runs, one submission to the good supernode

    found = await gauge_reaches(operator.metrics_url, "Failed", 1)
    errors = ("dragonfly_operator_supernode_request_errors_total",
              frozenset({("supernode", down), ("operation", "create")}))
    assert found[errors] == 3
    retries = ("dragonfly_operator_reconcile_total", frozenset({("handler", "reconcile"), ("result", "retry")}))
    assert found[retries] == 2


async def test_supernode_errors_are_retried_with_backoff(
        cluster: StampingEmulator, operators: Operators, origin: OriginServer, proxy: CountingProxy) -> None:
    origin.files["/f.bin"] = pattern_bytes(100_000)
    proxy.fail_next(2, "POST")  # the supernode answers 503 twice, then works
    await operators.start(operator_config(supernodes=[proxy.url], retry_attempts=3))

    await apply(cluster, manifest("flaky", origin.url("/f.bin")))
    st = await wait_for("Succeeded", lambda: phase_is(cluster, "flaky", "Succeeded", "Failed"))

    assert st["phase"] == "Succeeded", st
    assert [r.status for r in proxy.log if r.method == "POST"] == [503, 503, 201]
    assert ("Pending", "SupernodeUnreachable") in ready_history(cluster, "flaky")
    assert ready(st)["reason"] == "Succeeded"


async def test_failed_preheat_reports_the_supernode_message(
        cluster: StampingEmulator, operators: Operators, origin: OriginServer, proxy: CountingProxy) -> None:
    await operators.start(operator_config(supernodes=[proxy.url]))

    await apply(cluster, manifest("missing", origin.url("/no/such/file")))
    st = await wait_for("Failed", lambda: phase_is(cluster, "missing", "Succeeded", "Failed"))

    assert st["phase"] == "Failed"
    [entry] = st["supernodes"]
    assert entry["state"] == "FAILED" and "404" in entry["errorMsg"], entry
    code, info = await get_json(f"{proxy.url}/preheats/{entry['preheatID']}")
    assert code == 200 and info["status"] == "FAILED"
    condition = ready(st)
    assert condition["reason"] == "PreheatFailed" and info["errorMsg"] in condition["message"]
    assert phase_history(cluster, "missing")[-1] == "Failed"
    failed = await wait_for("the Failed Event",
                            lambda: [e for e in events(cluster, "missing") if e["reason"] == "Failed"])
    assert len(failed) == 1 and failed[0]["type"] == "Warning" and info["errorMsg"] in failed[0]["message"]


async def test_bad_spec_fails_permanently_with_a_clear_message(
        cluster: StampingEmulator, operators: Operators, proxy: CountingProxy) -> None:
    """kmock does not validate against the CRD, like a server with an outdated CRD: the operator must."""
    operator = await operators.start(operator_config(supernodes=[proxy.url]))

    await apply(cluster, manifest("tarball", "http://127.0.0.1:9/x.tar").replace("type: file", "type: tarball"))
    await apply(cluster, manifest("ftp", "ftp://127.0.0.1/x"))
    tarball = await wait_for("Failed", lambda: phase_is(cluster, "tarball", "Failed"))
    ftp = await wait_for("Failed", lambda: phase_is(cluster, "ftp", "Failed"))

    condition = ready(tarball)
    assert condition["reason"] == "InvalidSpec"
    assert "spec.type: Input should be 'image' or 'file' (got 'tarball')" in condition["message"]
    assert ready(ftp)["reason"] == "InvalidSpec" and "spec.url" in ready(ftp)["message"]
    assert tarball["supernodes"] == [] and proxy.log == []
    # Permanent: each handler failed once, and kopf does not run it again (retries would come after 0.2 s).
    failures = ("dragonfly_operator_reconcile_total", frozenset({("handler", "reconcile"), ("result", "failure")}))

    async def failures_counted() -> float | None:
        return (await get_samples(operator.metrics_url)).get(failures)

    assert await wait_for("two permanent failures", failures_counted) == 2
    await asyncio.sleep(1.0)
    assert (await get_samples(operator.metrics_url))[failures] == 2
    await wait_for("the Failed Event", lambda: "Failed" in event_reasons(cluster, "tarball"))


async def test_deleting_the_resource_cancels_its_preheat(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, proxy: CountingProxy,
        supernode: SupernodeProcess) -> None:
    await operators.start(operator_config(supernodes=[proxy.url]))
    await apply(cluster, manifest("doomed", slow_origin.url()))
    st = await wait_for("Running", lambda: phase_is(cluster, "doomed", "Running"))
    pid = st["supernodes"][0]["preheatID"]
    await wait_for("the origin to be asked", lambda: slow_origin.requests)

    await delete(cluster, "doomed")
    await wait_for("the object to be gone", lambda: preheat(cluster, "doomed") is None)

    # kopf may run a delete handler again (e.g. its finalizer patch met a newer version): a repeat
    # finds the preheat gone (404), which is fine; exactly one DELETE cancelled it.
    deletes = [r.status for r in proxy.log if r.method == "DELETE" and r.path == f"/preheats/{pid}"]
    assert deletes.count(204) == 1 and set(deletes) <= {204, 404}, deletes
    code, _ = await get_json(f"{supernode.api_url}/preheats/{pid}")
    assert code == 404
    await wait_for("the supernode to drop the origin download", slow_origin.disconnected.is_set, within=10)
    await wait_for("the Cancelled Event", lambda: "Cancelled" in event_reasons(cluster, "doomed"))
    assert event_reasons(cluster, "doomed").count("Cancelled") == 1
    await asyncio.sleep(0.5)  # a poll that would (wrongly) find it gone and submit it again
    assert proxy.count("POST") == 1


async def test_a_preheat_shared_by_two_resources_is_not_cancelled_by_one(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, proxy: CountingProxy) -> None:
    await operators.start(operator_config(supernodes=[proxy.url]))
    await apply(cluster, manifest("first", slow_origin.url()))
    await apply(cluster, manifest("second", slow_origin.url()))
    first = await wait_for("Running", lambda: phase_is(cluster, "first", "Running"))
    second = await wait_for("Running", lambda: phase_is(cluster, "second", "Running"))
    assert first["supernodes"][0]["preheatID"] == second["supernodes"][0]["preheatID"]

    await delete(cluster, "first")
    await wait_for("first to be gone", lambda: preheat(cluster, "first") is None)
    slow_origin.release()
    st = await wait_for("Succeeded", lambda: phase_is(cluster, "second", "Succeeded", "Failed"))

    assert st["phase"] == "Succeeded"
    assert proxy.count("DELETE") == 0
    assert not slow_origin.disconnected.is_set()


async def test_spec_change_submits_the_new_preheat_and_cancels_the_old(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, origin: OriginServer,
        proxy: CountingProxy) -> None:
    origin.files["/v2.bin"] = pattern_bytes(50_000)
    await operators.start(operator_config(supernodes=[proxy.url]))
    await apply(cluster, manifest("moving", slow_origin.url()))
    old = (await wait_for("Running", lambda: phase_is(cluster, "moving", "Running")))["supernodes"][0]["preheatID"]

    await patch_spec(cluster, "moving", {"url": origin.url("/v2.bin")})
    st = await wait_for("generation 2 Succeeded",
                        lambda: (s := phase_is(cluster, "moving", "Succeeded", "Failed"))
                        and s.get("observedGeneration") == 2 and s)

    assert st["phase"] == "Succeeded"
    new = st["supernodes"][0]["preheatID"]
    assert new != old
    assert ready(st)["observedGeneration"] == 2
    assert [r.status for r in proxy.log if r.method == "DELETE" and r.path == f"/preheats/{old}"] == [204]
    await wait_for("the old download to be dropped", slow_origin.disconnected.is_set, within=10)


async def test_operator_restart_duplicates_nothing(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, proxy: CountingProxy) -> None:
    config = operator_config(supernodes=[proxy.url])
    first = await operators.start(config)
    await apply(cluster, manifest("survivor", slow_origin.url()))
    running = await wait_for("Running", lambda: phase_is(cluster, "survivor", "Running"))
    pid = running["supernodes"][0]["preheatID"]
    await operators.stop(first)

    # A new operator on the same cluster state picks the preheat up where it was: polls, never re-submits.
    gets_before = proxy.count("GET")
    second = await operators.start(config)
    await wait_for("the new operator to poll", lambda: proxy.count("GET") > gets_before)
    assert proxy.count("POST") == 1
    slow_origin.release()
    done = await wait_for("Succeeded", lambda: phase_is(cluster, "survivor", "Succeeded", "Failed"))
    assert done["phase"] == "Succeeded" and done["supernodes"][0]["preheatID"] == pid
    await operators.stop(second)

    # A third start finds it finished: no request at all, nothing rewritten, no new Event.
    requests_before, status_before = len(proxy.log), status(cluster, "survivor")
    third = await operators.start(config)
    await wait_for("the new operator to see the object", lambda: third.probe().get("Succeeded"))
    await asyncio.sleep(1.0)  # five poll intervals in which it could (wrongly) act
    assert len(proxy.log) == requests_before
    assert status(cluster, "survivor") == status_before
    assert proxy.count("POST") == 1
    reasons = event_reasons(cluster, "survivor")
    assert reasons.count("Submitted") == 1 and reasons.count("Succeeded") == 1, reasons
    code, listing = await get_json(f"{proxy.url}/preheats")
    assert code == 200 and [p["ID"] for p in listing] == [pid]


async def test_waits_for_supernode_endpoints_then_preheats(
        cluster: StampingEmulator, operators: Operators, origin: OriginServer, proxy: CountingProxy) -> None:
    """No ready supernode yet (the StatefulSet is scaling up): Pending with NoSupernodes, then it goes on."""
    origin.files["/late.bin"] = pattern_bytes(10_000)
    await operators.start(operator_config(retry_attempts=6, retry_backoff=0.3))
    await apply(cluster, manifest("early", origin.url("/late.bin")))
    await wait_for("NoSupernodes", lambda: ("Pending", "NoSupernodes") in ready_history(cluster, "early"))

    await apply(cluster, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                          "metadata": {"name": "dragonfly-supernode-x1", "namespace": "dragonfly",
                                       "labels": {"kubernetes.io/service-name": "dragonfly-supernode"}},
                          "ports": [{"name": "api", "port": proxy.port}],
                          "endpoints": [{"addresses": ["127.0.0.1"]}]})
    st = await wait_for("Succeeded", lambda: phase_is(cluster, "early", "Succeeded", "Failed"))

    assert st["phase"] == "Succeeded" and st["supernodes"][0]["url"] == proxy.url


async def test_missing_secret_fails_after_the_retry_budget(
        cluster: StampingEmulator, operators: Operators, proxy: CountingProxy) -> None:
    await operators.start(operator_config(supernodes=[proxy.url], retry_attempts=2))
    await apply(cluster, manifest("secretless", "http://127.0.0.1:9/x", headersSecretRef={"name": "nowhere"}))
    st = await wait_for("Failed", lambda: phase_is(cluster, "secretless", "Failed"))

    condition = ready(st)
    assert condition["reason"] == "SecretNotFound"
    assert "Secret default/nowhere not found" in condition["message"] and "2 attempts" in condition["message"]
    assert ("Pending", "SecretNotFound") in ready_history(cluster, "secretless")
    assert proxy.log == []  # nothing is sent without the headers it was asked to carry


async def test_a_supernode_that_forgot_the_preheat_gets_it_again(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, proxy: CountingProxy,
        supernode: SupernodeProcess) -> None:
    """A supernode restart loses its in-memory preheats: the operator re-submits (same ID) and carries on."""
    # Enough retries to outlast a supernode restart on a loaded machine (a Python start can take seconds there).
    await operators.start(operator_config(supernodes=[proxy.url], retry_attempts=30))
    await apply(cluster, manifest("amnesia", slow_origin.url()))
    pid = (await wait_for("Running", lambda: phase_is(cluster, "amnesia", "Running")))["supernodes"][0]["preheatID"]

    await supernode.restart()
    await wait_for("a second submission", lambda: proxy.count("POST") == 2, within=30)
    slow_origin.release()
    st = await wait_for("Succeeded", lambda: phase_is(cluster, "amnesia", "Succeeded", "Failed"))

    assert st["phase"] == "Succeeded" and st["supernodes"][0]["preheatID"] == pid
    assert [r.status for r in proxy.log if r.path == f"/preheats/{pid}" and r.method == "GET"].count(404) >= 1


async def test_a_failed_cancel_is_retried_and_never_blocks_the_deletion(
        cluster: StampingEmulator, operators: Operators, slow_origin: SlowOrigin, proxy: CountingProxy) -> None:
    await operators.start(operator_config(supernodes=[proxy.url], retry_attempts=2))
    await apply(cluster, manifest("stubborn", slow_origin.url()))
    await apply(cluster, manifest("hopeless", slow_origin.url(), identifier="other-task"))
    await wait_for("Running", lambda: phase_is(cluster, "stubborn", "Running") and phase_is(cluster, "hopeless",
                                                                                          "Running"))

    proxy.fail_next(1, "DELETE")  # the first DELETE meets a 503, the retry goes through
    await delete(cluster, "stubborn")
    await wait_for("stubborn to be gone", lambda: preheat(cluster, "stubborn") is None)
    assert [r.status for r in proxy.log if r.method == "DELETE"] == [503, 204]

    proxy.fail_next(10, "DELETE")  # every DELETE fails: after the retry budget, the object goes anyway
    await delete(cluster, "hopeless")
    await wait_for("hopeless to be gone", lambda: preheat(cluster, "hopeless") is None)
    assert [r.status for r in proxy.log if r.method == "DELETE"] == [503, 204, 503, 503]
    await wait_for("the CancelFailed Event", lambda: "CancelFailed" in event_reasons(cluster, "hopeless"))
