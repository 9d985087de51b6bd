"""``/preheats``: create, list, read and cancel preheats (``supernode-api.md``, PreheatTask).

Served at the root and under ``/api/v1`` (and ``/v{version}``), like the Go supernode, whose SDK and
Harbor's Dragonfly provider call the root form.

A repeated ``POST`` for the same ID does not start a second fetch:
- the same preheat is waiting or running: **200** with ``{"ID"}`` (the swagger's status for this call:
  "here is the preheat", nothing was created);
- it already succeeded and its content is still cached: **208 Already Reported**, as the Go
  supernode answers; Harbor's Dragonfly provider reads 208 as "already preheated" and reports
  success. The body is Go's ``{"code":208,"message":...}`` plus the ``ID``, so a client that decodes
  PreheatCreateResponse (the Go SDK) also learns the ID;
- it failed (or its cached content was evicted): a new attempt, **201** as for a new preheat.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import DfError
from ..managers.preheat import Outcome
from ..preheat_models import PreheatCreateRequest, PreheatCreateResponse
from .services import SERVICES
from .wire import body_model, json_response, rest_error

_STATUS = {Outcome.CREATED: 201, Outcome.RUNNING: 200}


async def create_preheat(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await body_model(request, PreheatCreateRequest)
    try:
        # Checked here as well as by the CDN's connector: a refused preheat answers 403 at once instead of
        # becoming a FAILED record (and an image's manifest is fetched by the registry client, not the CDN).
        node.source_allow.check(req.url)
        record, outcome = await node.preheats.create(req)
    except DfError as exc:
        raise rest_error(exc) from None
    if outcome is Outcome.DONE:
        return json_response({"ID": record.id, "code": 208,
                              "message": f"preheat task already exists, id:{record.id}"}, status=208)
    return json_response(PreheatCreateResponse(id=record.id).wire(), status=_STATUS[outcome])


async def list_preheats(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    return json_response([record.info().wire() for record in node.preheats.list()])


async def get_preheat(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    try:
        return json_response(node.preheats.get(request.match_info["id"]).info().wire())
    except DfError as exc:
        raise rest_error(exc) from None


async def delete_preheat(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    try:
        await node.preheats.delete(request.match_info["id"])
    except DfError as exc:
        raise rest_error(exc) from None
    return web.Response(status=204)
