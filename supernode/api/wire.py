"""Wire helpers shared by every handler: JSON bodies in and out, lenient queries, error answers."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import unquote

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import DfCode, DfError

M = TypeVar("M", bound=BaseModel)

JSON_TYPE = "application/json"
MAX_JSON_BODY = 1024 * 1024

# How a manager's error kind answers on the REST API. Anything caused by the request is a 4xx.
_REST_STATUS = {
    DfCode.DATA_NOT_FOUND: 404,
    DfCode.EMPTY_VALUE: 400,
    DfCode.INVALID_VALUE: 400,
    DfCode.CONVERT_FAILED: 400,
    DfCode.RANGE_NOT_SATISFIABLE: 416,
    DfCode.URL_NOT_REACHABLE: 400,
    DfCode.AUTHENTICATION_REQUIRED: 400,
    DfCode.TASK_ID_DUPLICATE: 409,
    DfCode.CDN_FAIL: 409,
    DfCode.PEER_WAIT: 409,
    DfCode.PEER_CONTINUE: 409,
    DfCode.SOURCE_NOT_ALLOWED: 403,
}


class ApiError(Exception):
    """An answer that is an error: ``{"code": status, "message": ...}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def encode(data: Any, *, newline: bool = True) -> bytes:
    """Compact JSON without HTML escaping, with Go's trailing newline unless told otherwise.

    orjson writes the same bytes as ``json.dumps(separators=(",", ":"), ensure_ascii=False)`` several
    times faster (every pull answer goes through here); what it refuses (integers beyond 64 bits, keys
    that are not strings) takes the standard library's way.
    """
    try:
        body = orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE if newline else 0)
    except TypeError:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        body = (text + "\n" if newline else text).encode()
    return body


def json_response(data: Any, *, status: int = 200, newline: bool = True) -> web.Response:
    return web.Response(body=encode(data, newline=newline), status=status, content_type=JSON_TYPE)


def error_response(status: int, message: str) -> web.Response:
    return json_response({"code": status, "message": message}, status=status)


def rest_error(exc: DfError) -> ApiError:
    return ApiError(_REST_STATUS.get(exc.code, 500), str(exc))


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "validation failure list:\n" + "\n".join(parts)


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, f"request body larger than {MAX_JSON_BODY} bytes")
    # ``read(n)`` returns what has arrived, up to n bytes: keep reading until the end of the body, or a body
    # that comes in several packets (a chunked upload, a slow client, a large rootCAs list) is cut short.
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise ApiError(413, f"request body larger than {MAX_JSON_BODY} bytes")
    if not raw.strip():
        if required:
            raise ApiError(400, "empty request")
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:  # bad syntax or encoding, or an integer literal of more than 4300 digits
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON body: nested too deeply") from None


def parse_model(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, _validation_text(exc)) from None


async def body_model(request: web.Request, model: type[M], *, required: bool = True) -> M:
    return parse_model(model, await read_json(request, required=required))


def raw_query(request: web.Request) -> dict[str, str]:
    """dfget builds queries without escaping; split the raw text and decode only ``%XX`` (never ``+``)."""
    _, _, query = request.raw_path.partition("?")
    values: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        values.setdefault(unquote(key), unquote(value))
    return values


def query_int(query: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    text = query.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ApiError(400, f"{name} {value} is not a natural number" if minimum == 0
                       else f"{name} must be >= {minimum}")
    return value


def query_bool(query: dict[str, str], name: str) -> bool:
    text = query.get(name, "").lower()
    if text in ("", "0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise ApiError(400, f"{name} must be true or false, got {text!r}")
