"""The download port: wrapped piece bytes straight from the cache, with byte ranges.

dfget asks for ``/download/{id[:3]}/{id}`` with ``Range: bytes=start-end`` and announces the last
piece at full size, so ranges past the end are clamped (206), as nginx does for the Go supernode.
aiohttp's ``FileResponse`` does the range arithmetic and uses ``sendfile``, so bytes go from the page
cache to the socket without passing through Python. A piece may be requested while the CDN is still
writing later ones: the file's current size is what can be served.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..api.middleware import errors
from ..ids import is_task_id
from ..metrics import Metrics
from .store import CacheStore

STORE: web.AppKey[CacheStore] = web.AppKey("store")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")


class _CountedFile(web.FileResponse):
    """A file response that adds the bytes it sends to ``cdn_served_bytes_total``."""

    def __init__(self, path: Path, metrics: Metrics) -> None:
        super().__init__(path, headers={"Content-Type": "application/octet-stream"})
        self._metrics = metrics

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if self.status in (200, 206) and self.content_length:
            self._metrics.cdn_served_bytes_total.inc(self.content_length)
        return writer


async def _serve(request: web.Request) -> web.StreamResponse:
    prefix, task_id = request.match_info["prefix"], request.match_info["id"]
    if not is_task_id(task_id) or prefix != task_id[:3]:
        raise web.HTTPNotFound(text="no such file")
    path = request.app[STORE].data_path(task_id)
    if not path.is_file():
        raise web.HTTPNotFound(text="no such file")
    return _CountedFile(path, request.app[METRICS])


def build_download_app(store: CacheStore, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[STORE] = store
    app[METRICS] = metrics
    app.router.add_route("GET", "/download/{prefix}/{id}", _serve)
    return app
