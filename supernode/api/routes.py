"""The route table: every endpoint once, with what the OpenAPI document needs to describe it.

One table drives both the router and ``/openapi.json``, so the document cannot drift from what is
served. Each REST route is mounted at the root and under ``/api/v1``; every route is also reachable
under a ``/v{version}`` prefix (``/v1.24/_ping``), as the Go supernode's router does. The metrics
``handler`` label is the route template without that version prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from ..models import (
    ErrorResponse,
    HeartbeatResponse,
    NetworkInfoResponse,
    PeerCreateRequest,
    PeerCreateResponse,
    PeerInfo,
    PieceInfo,
    PiecePullRequest,
    PieceUpdateRequest,
    RegisterRequest,
    TaskCreateRequest,
    TaskCreateResponse,
    TaskInfo,
    TaskMetricsRequest,
    TaskUpdateRequest,
    VersionInfo,
)
from ..preheat_models import PreheatCreateRequest, PreheatCreateResponse, PreheatInfo
from . import legacy, rest, system
from . import preheat as preheat_api
from .wire import json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION_PREFIX = "/v{version:[0-9.]+}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str
    schema: Mapping[str, object]
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    ok: int = 200
    answer: type[BaseModel] | str | None = None
    many: bool = False
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = (400,)
    prefixes: tuple[str, ...] = ("",)
    extra: dict[str, object] = field(default_factory=dict)
    writes: bool | None = None
    """Changes state, so it needs the API token when one is configured. ``None``: every method but GET."""

    @property
    def needs_token(self) -> bool:
        """The dfget v1 endpoints never do: dfget 1.0.x has no way to send a token."""
        if self.tag == "Legacy":
            return False
        return self.writes if self.writes is not None else self.method != "GET"


_REST = ("", "/api/v1")
_ID = Param("id", "path", {"type": "string"}, True)
_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_LEGACY_TASK_QUERY = tuple(Param(n, "query", _STR) for n in ("taskId", "srcCid", "dstCid", "range", "result",
                                                               "status"))

ROUTES: tuple[Route, ...] = (
    Route("GET", "/_ping", system.ping, "Check that the server is up", "System", answer="text", errors=()),
    Route("GET", "/version", system.version, "Build information", "System", answer=VersionInfo, errors=()),
    Route("GET", "/metrics", system.metrics, "Prometheus metrics", "System", answer="text", errors=()),
    Route("GET", "/openapi.json", system.openapi, "This document", "System", answer="json", errors=()),
    Route("POST", "/peers", rest.create_peer, "Register a peer", "Peer", body=PeerCreateRequest, ok=201,
          answer=PeerCreateResponse, prefixes=_REST),
    Route("GET", "/peers", rest.list_peers, "List peers, sorted and paged", "Peer", answer=PeerInfo, many=True,
          prefixes=_REST, params=(
              Param("pageNum", "query", _INT), Param("pageSize", "query", _INT, description="0 means all"),
              Param("sortDirect", "query", {"type": "string", "enum": ["ASC", "DESC"]}),
              Param("sortKey", "query", {"type": "array", "items": {
                  "type": "string", "enum": ["ID", "IP", "created", "hostName", "port", "version"]}})),
          extra={"explode": True}),
    Route("GET", "/peers/{id}", rest.get_peer, "Get a peer", "Peer", answer=PeerInfo, params=(_ID,),
          errors=(404,), prefixes=_REST),
    Route("DELETE", "/peers/{id}", rest.delete_peer, "Remove a peer", "Peer", ok=204, params=(_ID,),
          errors=(400, 404), prefixes=_REST),
    Route("POST", "/tasks", rest.create_task, "Create or join a download task", "Task", body=TaskCreateRequest,
          ok=201, answer=TaskCreateResponse, errors=(400, 404, 409), prefixes=_REST),
    Route("GET", "/tasks", rest.list_tasks, "List live tasks", "Task", answer=TaskInfo, many=True, errors=(),
          prefixes=_REST),
    Route("GET", "/tasks/{id}", rest.get_task, "Get a task", "Task", answer=TaskInfo, params=(_ID,),
          errors=(404,), prefixes=_REST),
    Route("PUT", "/tasks/{id}", rest.update_task, "Mark a peer's download of the task finished", "Task",
          body=TaskUpdateRequest, params=(_ID,), errors=(400, 404), prefixes=_REST),
    Route("DELETE", "/tasks/{id}", rest.delete_task, "Delete a task", "Task", ok=204,
          params=(_ID, Param("full", "query", {"type": "boolean"}, description="also delete the cache files")),
          errors=(400, 404), prefixes=_REST),
    Route("GET", "/tasks/{id}/pieces", rest.pull_pieces, "Report a piece and get pieces to download", "Piece",
          body=PiecePullRequest, body_required=False, answer=PieceInfo, many=True, prefixes=_REST,
          params=(_ID, Param("clientID", "query", _STR, True),
                  Param("num", "query", {"type": "integer", "minimum": 1, "default": 4})),
          errors=(400, 404, 409), writes=True),
    Route("PUT", "/tasks/{id}/pieces/{pieceRange}", rest.update_piece, "Update a piece's status", "Piece",
          body=PieceUpdateRequest, prefixes=_REST, errors=(400, 404),
          params=(_ID, Param("pieceRange", "path", {"type": "string", "pattern": "^[0-9]+-[0-9]+$"}, True))),
    Route("POST", "/preheats", preheat_api.create_preheat,
          "Preheat a file or an image into the CDN: 201 new; 200 the same preheat is running; 208 it already "
          "succeeded (body adds code and message)", "PreheatTask", body=PreheatCreateRequest, ok=201,
          answer=PreheatCreateResponse, errors=(400, 409), prefixes=_REST),
    Route("GET", "/preheats", preheat_api.list_preheats, "List preheats (an image's layers are listed too)",
          "PreheatTask", answer=PreheatInfo, many=True, errors=(), prefixes=_REST),
    Route("GET", "/preheats/{id}", preheat_api.get_preheat, "Get a preheat", "PreheatTask", answer=PreheatInfo,
          params=(_ID,), errors=(404,), prefixes=_REST),
    Route("DELETE", "/preheats/{id}", preheat_api.delete_preheat,
          "EXTENSION. Cancel a preheat if it runs and forget it (the cached content stays)", "PreheatTask", ok=204,
          params=(_ID,), errors=(404,), prefixes=_REST),
    Route("POST", "/peer/registry", legacy.register, "dfget v1: register a peer and its task", "Legacy",
          body=RegisterRequest, answer="resultinfo", errors=(400, 409)),
    Route("GET", "/peer/task", legacy.pull_piece_task, "dfget v1: report a piece and pull piece tasks", "Legacy",
          answer="resultinfo", params=_LEGACY_TASK_QUERY, errors=()),
    Route("GET", "/peer/piece/suc", legacy.piece_success, "dfget v1: report a downloaded piece", "Legacy",
          answer="resultinfo", params=tuple(Param(n, "query", _STR) for n in ("taskId", "cid", "dstCid",
                                                                              "pieceRange")),
          errors=(400, 404)),
    Route("GET", "/peer/piece/error", legacy.piece_error, "dfget v1: report a bad piece", "Legacy",
          params=tuple(Param(n, "query", _STR) for n in ("taskId", "range", "srcCid", "dstCid", "dstIp",
                                                         "realMd5", "expectedMd5", "errorType")), errors=()),
    Route("GET", "/peer/service/down", legacy.service_down, "dfget v1: the uploader leaves", "Legacy",
          answer="resultinfo", params=(Param("taskId", "query", _STR), Param("cid", "query", _STR)),
          errors=(400, 404)),
    Route("POST", "/peer/network", legacy.network, "dfget v1: P2P network info (unused)", "Legacy",
          answer=NetworkInfoResponse, body_required=False, errors=(400,)),
    Route("POST", "/peer/heartbeat", legacy.heartbeat, "dfget v1: heartbeat (unused)", "Legacy",
          answer=HeartbeatResponse, body_required=False, errors=(400,)),
    Route("POST", "/task/metrics", legacy.task_metrics, "dfget v1: download report", "Legacy",
          body=TaskMetricsRequest, answer="null"),
)

ERROR_MODEL = ErrorResponse

_CATEGORIES = {"/": ("legacy api", ""), "/api/v1/": ("v1 api", "/api/v1"), "/api/ext/": ("extension api", "/api/ext")}


async def api_index(request: web.Request) -> web.Response:
    """``GET /``, ``/api/v1/``, ``/api/ext/``: the routes of one category, as the Go router lists them."""
    category, prefix = _CATEGORIES[handler_label(request.match_info.route.resource.canonical)]  # type: ignore[union-attr]
    listed = [{"method": r.method, "path": prefix + r.path} for r in ROUTES if prefix in r.prefixes]
    return json_response({"api": listed, "category": category, "prefix": prefix})


INDEX_ROUTES = tuple(
    Route("GET", path, api_index, f"List the routes of the {category}", "System", answer="json", errors=())
    for path, (category, _) in _CATEGORIES.items())


def mounted(route: Route) -> list[str]:
    """Every URL template under which ``route`` is served, version-prefixed forms included."""
    paths = [prefix + route.path for prefix in route.prefixes]
    return paths + [VERSION_PREFIX + p for p in paths]


def _canonical(path: str) -> str:
    """A mounted template as aiohttp's ``resource.canonical`` spells it (no regex in the placeholder)."""
    return path.replace("{version:[0-9.]+}", "{version}")


#: (method, canonical template) -> route, for middlewares that need to know what a request reached.
ROUTE_INDEX: dict[tuple[str, str], Route] = {
    (route.method, _canonical(path)): route for route in ROUTES + INDEX_ROUTES for path in mounted(route)}


def route_of(request: web.Request) -> Route | None:
    """The table entry a request was routed to; ``None`` for an unknown path or method."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return ROUTE_INDEX.get((request.method, resource.canonical))


def add_routes(app: web.Application) -> None:
    for route in ROUTES + INDEX_ROUTES:
        for path in mounted(route):
            app.router.add_route(route.method, path, route.handler)


def handler_label(template: str) -> str:
    """``/v{version}/peers`` (aiohttp's canonical form) -> ``/peers``."""
    return template.removeprefix(VERSION_PREFIX).removeprefix("/v{version}")
