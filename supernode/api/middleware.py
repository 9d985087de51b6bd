"""Cross-cutting request handling: JSON errors for every failure, the API token, and HTTP metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .routes import Handler, handler_label, route_of
from .services import SERVICES
from .wire import ApiError, error_response, json_response

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


_OPEN_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an API token configured, a state-changing call without ``Authorization: Bearer <token>`` is 401.

    Read-only GETs, the system endpoints and the dfget v1 endpoints stay open (see ``Route.needs_token``);
    an unknown path or method is judged by its method, so probing for write routes needs the token too.
    The comparison is constant-time and the answer never says how close a wrong token was.
    """
    token = request.app[SERVICES].api_token
    if not token.enabled:
        return await handler(request)
    route = route_of(request)
    needed = route.needs_token if route is not None else request.method not in _OPEN_METHODS
    if not needed:
        return await handler(request)
    header = request.headers.get("Authorization")
    if token.matches(header):
        return await handler(request)
    if header is None:
        message, challenge = "this call needs 'Authorization: Bearer <token>'", 'Bearer realm="supernode"'
    else:
        message = "the bearer token is missing or wrong"
        challenge = 'Bearer realm="supernode", error="invalid_token"'
    log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, message)
    response = json_response({"code": 401, "message": message}, status=401)
    response.headers["WWW-Authenticate"] = challenge
    return response


@web.middleware
async def http_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[SERVICES].metrics
    label = _label(request)
    started = time.perf_counter()
    response = await handler(request)
    size = len(request.method) + len(request.path_qs) + sum(len(k) + len(v) for k, v in request.headers.items())
    metrics.http_request(label, response.status, time.perf_counter() - started, size + (request.content_length or 0),
                         response.content_length if response.content_length is not None else 0)
    return response
