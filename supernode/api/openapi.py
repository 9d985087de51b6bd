"""The OpenAPI 3 document, generated from the route table and the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .routes import ERROR_MODEL, INDEX_ROUTES, ROUTES, Route, mounted

_REF = "#/components/schemas/{model}"

_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_RESULT_INFO = {"application/json": {"schema": {"$ref": _REF.format(model="ResultInfo")}}}
_RESULT_INFO_SCHEMA = {
    "type": "object",
    "description": "dfget v1 envelope; code 200/600/601/602/607/611/612 or an error code",
    "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}, "data": {}},
    "required": ["code"],
}


def _content(route: Route) -> dict[str, Any] | None:
    answer = route.answer
    if answer is None:
        return None
    if answer == "text":
        return _TEXT
    if answer == "resultinfo":
        return _RESULT_INFO
    if answer == "json":
        return {"application/json": {"schema": {"type": "object"}}}
    if answer == "null":
        return {"application/json": {"schema": {"nullable": True}}}
    assert isinstance(answer, type)
    ref: dict[str, Any] = {"$ref": _REF.format(model=answer.__name__)}
    schema = {"type": "array", "items": ref} if route.many else ref
    return {"application/json": {"schema": schema}}


def _operation(route: Route, path: str, *, auth: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "no error"}
    content = _content(route)
    if content is not None and route.ok != 204:
        ok["content"] = content
    responses[str(route.ok)] = ok
    error_content = {"application/json": {"schema": {"$ref": _REF.format(model=ERROR_MODEL.__name__)}}}
    for status in route.errors:
        responses[str(status)] = {"description": "error", "content": error_content}
    if route.path in ("/tasks", "/preheats", "/peer/registry") and route.method == "POST":
        responses["403"] = {"description": "the source URL's host is not in the supernode's source_allow",
                            "content": error_content}
    if auth and route.needs_token:
        responses["401"] = {"description": "no or a wrong bearer token", "content": error_content}
    params = [
        {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "schema": dict(p.schema),
         **({"description": p.description} if p.description else {})}
        for p in route.params
    ]
    if "{version" in path:
        params.insert(0, {"name": "version", "in": "path", "required": True,
                          "schema": {"type": "string", "pattern": "^[0-9.]+$"}})
    op: dict[str, Any] = {"summary": route.summary, "tags": [route.tag], "responses": responses,
                          "operationId": f"{route.method.lower()}{path}".replace("/", "_").replace("{", "")
                          .replace("}", "").replace(":", "").replace("[0-9.]+", "").replace(".", "")}
    if params:
        op["parameters"] = params
    if auth and route.needs_token:
        op["security"] = [{"bearer": []}]
    if route.body is not None:
        op["requestBody"] = {"required": route.body_required, "content": {
            "application/json": {"schema": {"$ref": _REF.format(model=route.body.__name__)}}}}
    return op


def build_openapi(*, auth: bool = False) -> dict[str, Any]:
    """The document of this node: with ``auth`` (an API token is configured) the protected operations say so."""
    models: set[type[BaseModel]] = {ERROR_MODEL}
    for route in ROUTES:
        if route.body is not None:
            models.add(route.body)
        if isinstance(route.answer, type):
            models.add(route.answer)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema([(m, "validation") for m in ordered], by_alias=True, ref_template=_REF)
    schemas: dict[str, Any] = dict(schema.get("$defs", {}))
    schemas["ResultInfo"] = _RESULT_INFO_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES + INDEX_ROUTES:
        for path in mounted(route):
            openapi_path = path.replace("{version:[0-9.]+}", "{version}")
            paths.setdefault(openapi_path, {})[route.method.lower()] = _operation(route, path, auth=auth)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Dragonfly SuperNode API", "version": __version__,
                 "description": "The SuperNode API (swagger 0.1) and the legacy dfget v1 endpoints."},
        "paths": paths,
        "components": {"schemas": schemas, **({"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "the supernode's api_token; the dfget v1 endpoints and read-only GETs need none"}}}
            if auth else {})},
    }
