"""Edges of the operator tests: the Kubernetes API double (kmock, made kopf-ready), a counting proxy in
front of the real supernode, a slow origin, and bounded waits.

Only the cluster is a double (kmock over real HTTP); the operator is the real one (kopf in the test's
event loop) and the supernode is the real ``python -m supernode`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch  # type: ignore[import-untyped]
import kmock
import yaml
from aiohttp import web

from dfoperator.resource import API_VERSION, GROUP, PLURAL, VERSION

PREHEATS = f"{GROUP}/{VERSION}/{PLURAL}"
EVENTS = "v1/events"
SECRETS = "v1/secrets"
SLICES = "discovery.k8s.io/v1/endpointslices"
PREHEAT_RESOURCE = kmock.resource(GROUP, VERSION, PLURAL)

_rv = itertools.count(1)


class StampingEmulator(kmock.KubernetesEmulator):
    """kmock plus what kopf relies on (shared/notes/kubernetes-helm-prometheus.md, C.6).

    uid/creationTimestamp/generation/resourceVersion on every object, a name made from ``generateName``
    (kopf names its Events so), ``generation`` bumped by spec
    changes, 422 on a failed JSON-patch ``test`` (kopf's optimistic concurrency), lists with a real
    resourceVersion and kind, and watches that do not replay what the client has already listed.
    """

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None:
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):  # kopf's Events use generateName
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["generation"], meta["resourceVersion"] = 1, str(next(_rv))
            elif request.action == kmock.action.UPDATE and request.name:
                key = (request.resource, request.namespace, request.name)
                cur = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else None
                if isinstance(request.data, list) and cur is not None:  # JSON-patch
                    try:
                        jsonpatch.apply_patch(cur, [op for op in request.data if op.get("op") == "test"])
                    except jsonpatch.JsonPatchTestFailed as e:
                        raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e)) from None
                    request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                         "value": str(next(_rv))})
                elif isinstance(request.data, dict):  # merge-patch
                    meta = request.data.setdefault("metadata", {})
                    meta["resourceVersion"] = str(next(_rv))
                    if "spec" in request.data and cur is not None and request.subresource != "status":
                        meta["generation"] = cur.get("metadata", {}).get("generation", 1) + 1
        return await super()._handle(request)

    async def _serve_list(self, request: Any) -> Any:
        result: Any = await super()._serve_list(request)
        info: Any = self.resources.get(request.resource, None)
        kind = info.kind if info is not None and info.kind else "Object"
        result.update(apiVersion=f"{request.resource.group}/{request.resource.version}".lstrip("/"),
                      kind=f"{kind}List", metadata={"resourceVersion": str(next(_rv))})
        return result

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        since = request.params.get("resourceVersion", "")
        since_rv = int(since) if since.isdigit() else 0
        event: Any
        async for event in super()._serve_watch(request):
            meta = event.get("object", {}).get("metadata", {}) if isinstance(event, dict) else {}
            rv = meta.get("resourceVersion", "")
            if since_rv and rv.isdigit() and int(rv) <= since_rv and event["type"] == "ADDED":
                continue
            yield event


def declare_resources(cluster: kmock.KubernetesEmulator) -> None:
    """Built-in resources (kopf needs v1/namespaces and v1/events) and ours, as the CRD declares it."""
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        cluster.resources.load_bundled()
    cluster.resources[PREHEATS] = kmock.ResourceInfo(
        kind="Preheat", singular="preheat", namespaced=True, shortnames={"ph"}, subresources={"status"},
        verbs={"list", "watch", "get", "patch", "create", "delete"})


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig as kind writes one, pointing at kmock (plain HTTP, a token nobody checks)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": "default"}}],
    }))
    return path


async def apply(cluster: kmock.KubernetesEmulator, manifest: str | dict[str, Any]) -> dict[str, Any]:
    """``kubectl apply`` of a new object: POST the manifest to its collection."""
    body = yaml.safe_load(manifest) if isinstance(manifest, str) else manifest
    api_version, kind = body["apiVersion"], body["kind"]
    namespace = body["metadata"].get("namespace", "default")
    plural = {"Preheat": PLURAL, "Secret": "secrets", "EndpointSlice": "endpointslices"}[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    async with cluster.post(f"{prefix}/namespaces/{namespace}/{plural}", json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), answer
        return answer


async def patch_spec(cluster: kmock.KubernetesEmulator, name: str, spec: dict[str, Any],
                     namespace: str = "default") -> None:
    """``kubectl patch ph NAME --type=merge -p '{"spec": ...}'``."""
    url = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    async with cluster.patch(url, json={"spec": spec},
                             headers={"Content-Type": "application/merge-patch+json"}) as resp:
        assert resp.status == 200, await resp.text()


async def delete(cluster: kmock.KubernetesEmulator, name: str, namespace: str = "default") -> None:
    """``kubectl delete ph NAME --wait=false``."""
    async with cluster.delete(f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}") as resp:
        assert resp.status == 200, await resp.text()


def preheat(cluster: kmock.KubernetesEmulator, name: str, namespace: str = "default") -> dict[str, Any] | None:
    key = (PREHEAT_RESOURCE, namespace, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    return cluster.objects[key].raw


def status(cluster: kmock.KubernetesEmulator, name: str) -> dict[str, Any]:
    obj = preheat(cluster, name)
    return dict((obj or {}).get("status") or {})


def phase_history(cluster: kmock.KubernetesEmulator, name: str, namespace: str = "default") -> list[str]:
    """The phases the object went through, in order, each once (from kmock's version history)."""
    phases: list[str] = []
    for version in cluster.objects[PREHEATS, namespace, name].history:
        phase = ((version.raw if version is not None else {}).get("status") or {}).get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
    return phases


def ready_history(cluster: kmock.KubernetesEmulator, name: str, namespace: str = "default") -> list[tuple[str, str]]:
    """``(phase, Ready reason)`` of each version, each once, in order."""
    seen: list[tuple[str, str]] = []
    for version in cluster.objects[PREHEATS, namespace, name].history:
        st = (version.raw if version is not None else {}).get("status") or {}
        ready = next((c for c in st.get("conditions") or () if c.get("type") == "Ready"), None)
        if ready is not None:
            item = (st.get("phase", ""), ready.get("reason", ""))
            if not seen or seen[-1] != item:
                seen.append(item)
    return seen


def events(cluster: kmock.KubernetesEmulator, name: str) -> list[dict[str, Any]]:
    """The Events posted about Preheat ``name``, oldest first."""
    found = []
    for (resource, _, _), obj in cluster.objects.items():
        if resource.plural != "events":
            continue
        raw = obj.raw
        involved = raw.get("involvedObject") or {}
        if involved.get("kind") == "Preheat" and involved.get("name") == name:
            found.append(raw)
    return sorted(found, key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or ""))


def event_reasons(cluster: kmock.KubernetesEmulator, name: str) -> list[str]:
    return [str(e.get("reason")) for e in events(cluster, name)]


async def wait_for(what: str, check: Callable[[], Any], within: float = 20.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds saying ``what``."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within:g}s waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    path: str
    status: int


class CountingProxy:
    """A reverse proxy on 127.0.0.1 in front of the supernode API that logs every request.

    ``fail_next(n, method)`` answers the next ``n`` requests (of that method, or any) with 503 itself (a
    supernode that is overloaded or restarting) without forwarding them.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self.log: list[ProxyRequest] = []
        self._failures = 0
        self._failing_method: str | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, method: str | None = None) -> None:
        self._failures, self._failing_method = n, method

    def count(self, method: str, prefix: str = "/preheats") -> int:
        return sum(1 for r in self.log if r.method == method and r.path.startswith(prefix))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if self._failures > 0 and self._failing_method in (None, request.method):
            self._failures -= 1
            self.log.append(ProxyRequest(request.method, request.path, 503))
            return web.json_response({"code": 503, "message": "injected by the test proxy"}, status=503)
        data = await request.read() if request.body_exists else None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with self._session.request(request.method, f"{self.upstream}{request.path_qs}", data=data,
                                         headers=headers) as resp:
            body = await resp.read()
            self.log.append(ProxyRequest(request.method, request.path, resp.status))
            return web.Response(status=resp.status, body=body,
                                headers={"Content-Type": resp.headers.get("Content-Type", "application/json")})


class SlowOrigin:
    """An origin whose one file is sent only after :meth:`release`: keeps a preheat RUNNING on demand.

    ``disconnected`` is set when the client (the supernode's CDN) drops the connection before the end,
    which is what cancelling the preheat does.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.port = 0
        self.requests = 0
        self.released = asyncio.Event()
        self.disconnected = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/slow.bin") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        self.released.set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(len(self.data))})
        await resp.prepare(request)
        half = len(self.data) // 2
        await resp.write(self.data[:half])
        # aiohttp does not cancel a handler whose client went away: watch the transport while holding back.
        while not self.released.is_set():
            if request.transport is None or request.transport.is_closing():
                self.disconnected.set()
                return resp
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 0.05)
        await resp.write(self.data[half:])
        await resp.write_eof()
        return resp


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, resp.status
        return await resp.text()


CRD_PATH = Path(__file__).with_name("preheat_crd.yaml")


def crd_schema(path: Path = CRD_PATH) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the v1alpha1 version of a Preheat CRD file."""
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths the API server would prune from ``value``: fields its structural schema does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        if properties is None:  # e.g. metadata: {type: object}, validated by the server itself
            return []
        found = []
        for key, item in value.items():
            if key not in properties:
                found.append(f"{path}.{key}")
            else:
                found.extend(pruned_fields(item, properties[key], f"{path}.{key}"))
        return found
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in pruned_fields(item, schema["items"], f"{path}[{i}]")]
    return []
