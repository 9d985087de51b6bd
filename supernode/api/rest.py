"""The seed REST API (``supernode-api.md``): peers, tasks and pieces.

Served at the root and under ``/api/v1``. Status codes follow the spec: 201 on create, 204 on delete,
404 for an unknown ID, 400 for bad input; errors are ``{"code","message"}``.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import DfError
from ..models import (
    PeerCreateRequest,
    PeerCreateResponse,
    PiecePullRequest,
    PieceUpdateRequest,
    SortDirection,
    TaskCreateRequest,
    TaskUpdateRequest,
)
from .services import SERVICES
from .wire import ApiError, body_model, json_response, query_bool, query_int, raw_query, rest_error


def _sort_keys(request: web.Request) -> list[str]:
    keys: list[str] = []
    for value in request.query.getall("sortKey", []):
        keys.extend(k for k in value.split(",") if k)
    return keys


async def create_peer(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await body_model(request, PeerCreateRequest)
    try:
        peer = node.peers.register(ip=req.ip, host_name=req.host_name, port=req.port, version=req.version)
    except DfError as exc:
        raise rest_error(exc) from None
    node.metrics.peers.labels(peer=peer.ip).inc()
    return json_response(PeerCreateResponse(id=peer.id).wire(), status=201)


async def list_peers(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    direction_text = q.get("sortDirect", "ASC").upper() or "ASC"
    if direction_text not in SortDirection.__members__:
        raise ApiError(400, f"unexpected sortDirect {q.get('sortDirect')}: use ASC or DESC")
    try:
        peers = node.peers.list(page_num=query_int(q, "pageNum", 0), page_size=query_int(q, "pageSize", 0),
                                sort_keys=_sort_keys(request), direction=SortDirection(direction_text))
    except DfError as exc:
        raise rest_error(exc) from None
    return json_response([p.info().wire(omit_empty=True) for p in peers])


async def get_peer(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    try:
        return json_response(node.peers.get(request.match_info["id"]).info().wire(omit_empty=True))
    except DfError as exc:
        raise rest_error(exc) from None


async def delete_peer(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    try:
        node.tasks.remove_peer(request.match_info["id"])
    except DfError as exc:
        raise rest_error(exc) from None
    return web.Response(status=204)


async def create_task(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await body_model(request, TaskCreateRequest)
    try:
        answer = await node.tasks.create(req)
    except DfError as exc:
        raise rest_error(exc) from None
    return json_response(answer.wire(), status=201)


async def list_tasks(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    return json_response([t.info().wire(omit_empty=True) for t in node.tasks.tasks.values()])


async def get_task(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    try:
        return json_response(node.tasks.get(request.match_info["id"]).info().wire(omit_empty=True))
    except DfError as exc:
        raise rest_error(exc) from None


async def update_task(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await body_model(request, TaskUpdateRequest)
    try:
        node.pulls.finish(request.match_info["id"], req.peer_id)
    except DfError as exc:
        raise rest_error(exc) from None
    return web.Response(status=200)


async def delete_task(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    full = query_bool(raw_query(request), "full")
    try:
        await node.tasks.delete(request.match_info["id"], full=full)
    except DfError as exc:
        raise rest_error(exc) from None
    return web.Response(status=204)


async def pull_pieces(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    client_id = q.get("clientID", "")
    if not client_id:
        raise ApiError(400, "query parameter clientID is required")
    num = query_int(q, "num", 4, minimum=1)
    req = await body_model(request, PiecePullRequest, required=False)
    try:
        pieces = node.pulls.pull_pieces(request.match_info["id"], client_id, num=num,
                                        status=req.dfget_task_status, result=req.piece_result,
                                        piece_range_text=req.piece_range, dst_pid=req.dst_pid)
    except DfError as exc:
        raise rest_error(exc) from None
    return json_response([p.wire() for p in pieces])


async def update_piece(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await body_model(request, PieceUpdateRequest)
    try:
        node.pulls.update_piece(request.match_info["id"], request.match_info["pieceRange"],
                                client_id=req.client_id, dst_pid=req.dst_pid, result=req.piece_status)
    except DfError as exc:
        raise rest_error(exc) from None
    return web.Response(status=200)
