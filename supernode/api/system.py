"""``/_ping``, ``/version``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

import platform

from aiohttp import web

from .. import __version__
from ..models import VersionInfo
from .services import SERVICES
from .wire import json_response


async def ping(request: web.Request) -> web.Response:
    return web.Response(body=b"OK", content_type="text/plain")


def version_info() -> VersionInfo:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return VersionInfo(arch=arch, go_version=f"python{platform.python_version()}",
                       os=platform.system().lower(), version=__version__)


async def version(request: web.Request) -> web.Response:
    return json_response(version_info().wire(omit_empty=True), newline=False)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SERVICES].render_metrics()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[SERVICES].openapi)
