"""The download port: wrapped piece bytes straight from the cache, with byte ranges.

dfget asks for ``/download/{id[:3]}/{id}`` with ``Range: bytes=start-end`` and announces the last
piece at full size, so ranges past the end are clamped (206), as nginx does for the Go supernode.
aiohttp's ``FileResponse`` does the range arithmetic and uses ``sendfile``, so bytes go from the page
cache to the socket without passing through Python (on the standard event loop: uvloop has no
``loop.sendfile``, and aiohttp then copies the file in chunks). A piece may be requested while the CDN is still
writing later ones: the file's current size is what can be served.

With ``cdn_rate_limit`` set, the bytes go out through the port's one :class:`EgressLimiter`; aiohttp
still decides status, headers and range, only the sending of the body is paced.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import NOSENDFILE

from dfwire.ids import is_task_id

from ..api.middleware import errors
from ..metrics import Metrics
from .egress import EgressLimiter
from .store import CacheStore

STORE: web.AppKey[CacheStore] = web.AppKey("store")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
LIMITER: web.AppKey[EgressLimiter | None] = web.AppKey("limiter")


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


class _PacedFile(_CountedFile):
    """A counted file response whose body is sent through the port's shared :class:`EgressLimiter`.

    ``FileResponse._sendfile(request, fobj, offset, count)`` is aiohttp's (private) step that sends the
    body once status, headers and range are settled; HEAD, 304, 416 and empty bodies never reach it.
    Overriding only that step keeps aiohttp's range handling exactly; ``tests/integration/
    test_cdn_rate_limit.py`` fails if aiohttp stops calling it so.
    """

    def __init__(self, path: Path, metrics: Metrics, limiter: EgressLimiter) -> None:
        super().__init__(path, metrics)
        self._limiter = limiter

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int,
                        count: int) -> AbstractStreamWriter:
        writer = await web.StreamResponse.prepare(self, request)  # status line and headers, not the body
        assert writer is not None
        await self._limiter.send(request, writer, fobj, offset, count, zero_copy=not (NOSENDFILE or self.compression))
        await super().write_eof()
        return writer


async def _serve(request: web.Request) -> web.StreamResponse:
    prefix, task_id = request.match_info["prefix"], request.match_info["id"]
    if not is_task_id(task_id) or prefix != task_id[:3]:
        raise web.HTTPNotFound(text="no such file")
    path = request.app[STORE].data_path(task_id)
    if not path.is_file():
        raise web.HTTPNotFound(text="no such file")
    limiter = request.app[LIMITER]
    if limiter is None:
        return _CountedFile(path, request.app[METRICS])
    return _PacedFile(path, request.app[METRICS], limiter)


def build_download_app(store: CacheStore, metrics: Metrics, rate_limit: int | None = None) -> web.Application:
    """The download port's app; ``rate_limit`` is its total egress in bytes per second (``None``: unlimited)."""
    app = web.Application(middlewares=[errors])
    app[STORE] = store
    app[METRICS] = metrics
    app[LIMITER] = EgressLimiter(rate_limit) if rate_limit else None
    app.router.add_route("GET", "/download/{prefix}/{id}", _serve)
    return app
