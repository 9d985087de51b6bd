"""The endpoints unmodified dfget v1 clients call (spec §1.4), with their exact envelopes.

dfget reads a ResultInfo ``{"code","data","msg"}`` inside an HTTP 200 for register and the pull loop,
and treats any other HTTP status as "try the next supernode". We keep that: answers dfget must act
on are 200 with a result code; malformed requests are 4xx JSON errors, which dfget handles exactly
like the Go supernode's 500s.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from ..errors import DfCode, DfError
from ..managers.pull import Finished
from ..models import (
    DfgetTaskStatus,
    HeartbeatResponse,
    NetworkInfoResponse,
    PieceErrorRequest,
    PieceResult,
    RegisterRequest,
    TaskMetricsRequest,
)
from .services import SERVICES
from .wire import ApiError, json_response, parse_model, raw_query, read_json, rest_error

FORM_TYPE = "application/x-www-form-urlencoded"

_STATUS = {"700": DfgetTaskStatus.STARTED, "701": DfgetTaskStatus.RUNNING, "702": DfgetTaskStatus.FINISHED}
_RESULT = {"500": PieceResult.FAILED, "501": PieceResult.SUCCESS, "502": PieceResult.INVALID,
           "503": PieceResult.SEMISUC}

# ResultInfo codes of /peer/task by error kind (Go's NewResultInfoWithError); anything else is 500.
_PULL_CODE = {DfCode.EMPTY_VALUE: 501, DfCode.INVALID_VALUE: 501, DfCode.DATA_NOT_FOUND: 502,
              DfCode.PEER_WAIT: 602, DfCode.PEER_CONTINUE: 601, DfCode.URL_NOT_REACHABLE: 607}


def result(code: int, data: Any = None, msg: str = "") -> web.Response:
    """A ResultInfo: keys in Go's order, empty ones left out (``omitempty``)."""
    body: dict[str, Any] = {"code": code}
    if data is not None:
        body["data"] = data
    if msg:
        body["msg"] = msg
    return json_response(body)


async def _register_body(request: web.Request) -> RegisterRequest:
    if request.content_type == FORM_TYPE and request.headers.get("Content-Type", "").strip() == FORM_TYPE:
        text = (await request.read()).decode(errors="replace")
        form: dict[str, Any] = {}
        for key, value in parse_qsl(text, keep_blank_values=True):
            if key.lower() in ("headers", "rootcas"):
                form.setdefault(key, []).append(value)
            else:
                form[key] = value
        return parse_model(RegisterRequest, form)
    return parse_model(RegisterRequest, await read_json(request))


async def register(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = await _register_body(request)
    try:
        answer = await node.tasks.register(req)
    except DfError as exc:
        if exc.code in (DfCode.URL_NOT_REACHABLE, DfCode.AUTHENTICATION_REQUIRED):
            return result(607, msg=str(exc))
        raise rest_error(exc) from None
    return result(200, answer.wire(), "success")


async def pull_piece_task(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    status_text, result_text = q.get("status", ""), q.get("result", "")
    try:
        answer = await node.pulls.pull_held(
            q.get("taskId", ""), q.get("srcCid", ""), status=_STATUS.get(status_text),
            result=_RESULT.get(result_text), piece_range_text=q.get("range", ""), dst_cid=q.get("dstCid", ""))
    except DfError as exc:
        code = _PULL_CODE.get(exc.code, 500)
        return result(code, msg=str(exc))
    if answer is None:
        return result(600)
    if isinstance(answer, Finished):
        return result(600, answer.data.wire())
    return result(601, [item.wire() for item in answer])


async def piece_success(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    try:
        node.pulls.report_success(q.get("taskId", ""), q.get("cid", ""), q.get("dstCid", ""),
                                  q.get("pieceRange", ""))
    except DfError as exc:
        raise rest_error(exc) from None
    return result(611)


async def piece_error(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    req = PieceErrorRequest(taskId=q.get("taskId", ""), range=q.get("range", ""), srcCid=q.get("srcCid", ""),
                            dstPid=q.get("dstCid", ""), dstIP=q.get("dstIp", ""), realMd5=q.get("realMd5", ""),
                            expectedMd5=q.get("expectedMd5", ""), errorType=q.get("errorType", ""))
    node.repair.report(req)
    return web.Response(status=200)


async def service_down(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    q = raw_query(request)
    try:
        node.pulls.service_down(q.get("taskId", ""), q.get("cid", ""))
    except DfError as exc:
        raise rest_error(exc) from None
    return result(612)


async def network(request: web.Request) -> web.Response:
    await read_json(request, required=False)
    return json_response(NetworkInfoResponse().model_dump(by_alias=True))


async def heartbeat(request: web.Request) -> web.Response:
    await read_json(request, required=False)
    return json_response(HeartbeatResponse().model_dump(by_alias=True))


async def task_metrics(request: web.Request) -> web.Response:
    node = request.app[SERVICES]
    req = parse_model(TaskMetricsRequest, await read_json(request))
    node.report_download(req)
    return json_response(None)


def bad_request_if(condition: bool, message: str) -> None:
    if condition:
        raise ApiError(400, message)
