"""The mirror's HTTP side: the read half of the registry API, as containerd calls it through ``hosts.toml``.

``/v2/<name>/manifests/<ref>`` and ``/v2/<name>/tags/list`` are relayed to the registry that ``ns``
names; ``/v2/<name>/blobs/<digest>`` is answered from the node's cache, a download in flight, or a
new download through the swarm (see :mod:`.blobs`), each only after a ``HEAD`` of the blob with the
runtime's credentials succeeded at the registry (no blob bytes, and no access the registry would
refuse). Every answer the registry gives to a relayed or probing request (401 challenges, 404
BLOB_UNKNOWN, ...) reaches the runtime as the registry gave it; a registry that cannot be reached
gets 502, after which containerd tries the next host of ``hosts.toml`` and finally the registry.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from aiohttp import web

from ..config import DownloadConfig
from .blobs import BlobDownload, BlobFailed, BlobRequest
from .config import MirrorConfig
from .metrics import CONTENT_TYPE, MirrorMetrics
from .oci import error, is_digest, name_problem, reference_problem
from .store import BlobStore
from .upstream import Upstream, UpstreamError, pull_scope

log = logging.getLogger(__name__)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
#: Headers of a registry answer that the runtime gets back.
RELAYED = ("Content-Type", "Content-Length", "Docker-Content-Digest", "ETag", "WWW-Authenticate",
           "Docker-Distribution-API-Version", "Content-Range", "Accept-Ranges")
RELAY_CHUNK = 256 * 1024

CONFIG: web.AppKey[MirrorConfig] = web.AppKey("config", MirrorConfig)
METRICS: web.AppKey[MirrorMetrics] = web.AppKey("metrics", MirrorMetrics)
STORE: web.AppKey[BlobStore] = web.AppKey("store", BlobStore)
UPSTREAMS: web.AppKey[dict[str, Upstream]] = web.AppKey("upstreams", dict)


def build_app(config: MirrorConfig) -> web.Application:
    app = web.Application()
    metrics = MirrorMetrics()
    app[CONFIG] = config
    app[METRICS] = metrics
    app[STORE] = BlobStore(config.cache_dir, metrics, limit=config.cache_size)
    app[UPSTREAMS] = {r.name: Upstream(r) for r in config.registries}
    app.router.add_get("/v2/", _ping)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_route("GET", "/v2/{path:.+}", _dispatch)
    app.router.add_route("HEAD", "/v2/{path:.+}", _dispatch)
    app.on_cleanup.append(_close)
    return app


def build_metrics_app(metrics: MirrorMetrics) -> web.Application:
    """Only ``/metrics`` and ``/healthz``: what Prometheus and the kubelet reach on the node's address."""
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _close(app: web.Application) -> None:
    await app[STORE].close()
    for upstream in app[UPSTREAMS].values():
        await upstream.close()


async def _ping(request: web.Request) -> web.Response:
    return web.json_response({}, headers=API_VERSION)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def _dispatch(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    name, kind, ref = _split(path)
    metrics = request.app[METRICS]
    answer = await _answer(request, name, kind, ref)
    metrics.requests.labels(kind=kind or "other", code=str(answer.status)).inc()
    return answer


def _split(path: str) -> tuple[str, str, str]:
    """``(name, kind, reference)`` of ``<name>/manifests/<ref>``, ``<name>/blobs/<digest>``, ``<name>/tags/list``."""
    for kind in ("manifests", "blobs"):
        name, sep, ref = path.rpartition(f"/{kind}/")
        if sep and ref and "/" not in ref:
            return name, kind, ref
    if path.endswith("/tags/list"):
        return path.removesuffix("/tags/list"), "tags", "list"
    return path, "", ""


async def _answer(request: web.Request, name: str, kind: str, ref: str) -> web.StreamResponse:
    if not kind:
        return error(404, "UNSUPPORTED", f"/v2/{request.match_info['path']} is not a registry read API path")
    problem = name_problem(name)
    if problem:
        return error(400, "NAME_INVALID", problem)
    if kind == "blobs" and not is_digest(ref):
        return error(400, "DIGEST_INVALID", f"invalid or unsupported digest {ref!r}: sha256:<64 hex digits> "
                                            "expected")
    if kind == "manifests" and (problem := reference_problem(ref)):
        return error(400, "MANIFEST_INVALID" if ":" not in ref else "DIGEST_INVALID", problem)
    config = request.app[CONFIG]
    ns = request.query.get("ns", "")
    registry = config.registry(ns) if ns else config.default_registry
    if registry is None:
        return error(404, "NAME_UNKNOWN", f"registry {ns!r} is not mirrored here")
    upstream = request.app[UPSTREAMS][registry.name]
    upstream_path = f"/v2/{name}/tags/list" if kind == "tags" else f"/v2/{name}/{kind}/{ref}"
    try:
        if kind == "blobs" and request.method == "GET" and "Range" not in request.headers:
            return await _blob(request, upstream, name, ref, upstream_path)
        return await _relay(request, upstream, upstream_path, pull_scope(name), kind=kind)
    except UpstreamError as exc:
        log.warning("%s %s: %s", request.method, upstream_path, exc)
        return error(502, "UNAVAILABLE", str(exc))


async def _relay(request: web.Request, upstream: Upstream, path: str, scope: str, *, kind: str) -> web.StreamResponse:
    """The registry's answer, streamed through unchanged (status, the headers that matter, body)."""
    query = f"?{request.query_string}" if kind == "tags" and request.query_string else ""
    async with upstream.request(request.method, path + query, request.headers, scope=scope) as (resp, _):
        headers = {k: v for k in RELAYED for v in resp.headers.getall(k, [])}
        answer = web.StreamResponse(status=resp.status, headers=headers)
        await answer.prepare(request)
        if request.method != "HEAD":
            sent = 0
            async for chunk in resp.content.iter_chunked(RELAY_CHUNK):
                await answer.write(chunk)
                sent += len(chunk)
            if kind == "blobs":
                request.app[METRICS].bytes.labels(source="registry").inc(sent)
        await answer.write_eof()
        return answer


async def _blob(request: web.Request, upstream: Upstream, name: str, digest: str, path: str) -> web.StreamResponse:
    app = request.app
    store, metrics, config = app[STORE], app[METRICS], app[CONFIG]
    # The registry decides who may read the blob, also when this node has it: the mirror never widens access.
    probe = await _probe(request, upstream, path, pull_scope(name))
    if isinstance(probe, web.StreamResponse):
        return probe
    size, authorization = probe
    local = store.cached(digest)
    if local is not None:
        store.used(local)
        metrics.local(local.stat().st_size)
        return web.FileResponse(local, headers={**API_VERSION, "Docker-Content-Digest": digest,
                                                "Content-Type": "application/octet-stream"})
    download = store.inflight(digest)
    if download is None:
        download = store.start(BlobRequest(
            digest=digest, size=size, path=path, scope=pull_scope(name), authorization=authorization,
            download=None if digest in store.swarm_refused else
            _download_config(config, upstream, path, authorization, store.incoming_path(digest)),
            stall_timeout=config.stall_timeout, upstream=upstream, scratch=store.incoming,
            swarm_refused=digest in store.swarm_refused))
    return await _stream(request, download)


async def _probe(request: web.Request, upstream: Upstream, path: str,
                 scope: str) -> tuple[int, str] | web.StreamResponse:
    """``(size, Authorization)`` from a HEAD of the blob; the registry's own answer when it is not a 200."""
    async with upstream.request("HEAD", path, request.headers, scope=scope) as (resp, authorization):
        if resp.status == 200 and resp.content_length is not None:
            return resp.content_length, authorization
        if resp.status == 200:
            return error(502, "UNAVAILABLE", "the registry gave no Content-Length for the blob")
        headers = {k: v for k in RELAYED if k != "Content-Length" for v in resp.headers.getall(k, [])}
        if resp.status == 404:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": path.rpartition("/")[2]})
        return web.Response(status=resp.status, headers=headers)


def _download_config(config: MirrorConfig, upstream: Upstream, path: str, authorization: str,
                     output: Path) -> DownloadConfig | None:
    if not config.nodes:
        return None
    ca = upstream.ca_pem
    return DownloadConfig(
        url=upstream.url(path), output=output, nodes=config.nodes, notbs=True, ip=config.ip, home=config.home,
        headers=(f"Authorization: {authorization}",) if authorization else (), alive_time=config.alive_time,
        expire_time=config.expire_time, local_limit=config.local_limit, call_system="dfget-proxy", dfdaemon=True,
        root_cas=(base64.b64encode(ca.encode()).decode(),) if ca else ())


async def _stream(request: web.Request, download: BlobDownload) -> web.StreamResponse:
    """Send the blob as it arrives; headers go only with the first byte, so an early failure is still a 502."""
    answer = web.StreamResponse(headers={**API_VERSION, "Docker-Content-Digest": download.request.digest,
                                         "Content-Type": "application/octet-stream"})
    answer.content_length = download.size

    async def write(block: bytes) -> None:
        if not answer.prepared:
            await answer.prepare(request)
        await answer.write(block)

    try:
        await download.send(write)
    except BlobFailed as exc:
        if not answer.prepared:
            return error(502, "BLOB_UNAVAILABLE", f"the blob could not be fetched: {exc}")
        log.error("blob %s: cutting the connection after a partial body: %s", download.request.digest, exc)
        if request.transport is not None:
            request.transport.abort()
        return answer
    if not answer.prepared:
        await answer.prepare(request)
    await answer.write_eof()
    return answer
