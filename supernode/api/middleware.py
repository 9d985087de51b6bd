"""Cross-cutting request handling: JSON errors for every failure, and HTTP metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .routes import Handler, handler_label
from .wire import NODE, ApiError, error_response

log = logging.getLogger(__name__)


def _label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return handler_label(resource.canonical) if resource is not None else "unknown"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"code","message"}``; an unexpected exception is logged, never shown."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return error_response(exc.status, text or exc.reason)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error; see the supernode log")


@web.middleware
async def http_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[NODE].metrics
    label = _label(request)
    started = time.perf_counter()
    response = await handler(request)
    metrics.http_requests_total.labels(code=str(response.status), handler=label).inc()
    metrics.http_request_duration_seconds.labels(handler=label).observe(time.perf_counter() - started)
    size = len(request.method) + len(request.path_qs) + sum(len(k) + len(v) for k, v in request.headers.items())
    metrics.http_request_size_bytes.labels(handler=label).observe(size + (request.content_length or 0))
    body_length = response.content_length if response.content_length is not None else 0
    metrics.http_response_size_bytes.labels(handler=label).observe(body_length)
    return response
