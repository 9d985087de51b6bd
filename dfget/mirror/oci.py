"""The read side of the OCI distribution API as the mirror checks it: repository names, digests, errors.

Bad input is answered here, before any registry or supernode is asked, with the error body the
distribution spec defines (``{"errors": [{"code", "message", "detail"}]}``; ``code`` and
``message`` are repeated at the top level for clients that read the project's own error format).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

#: The distribution spec's repository name grammar (path components joined by ``/``).
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
MAX_NAME = 255


def name_problem(name: str) -> str:
    """Why ``name`` is not a repository name ("" when it is one)."""
    if len(name) > MAX_NAME:
        return f"repository name longer than {MAX_NAME} characters"
    if not _NAME.match(name):
        return f"invalid repository name {name!r}"
    return ""


def reference_problem(reference: str) -> str:
    """Why ``reference`` is neither a tag nor a sha256 digest ("" when it is one of them)."""
    if ":" in reference:
        return "" if _DIGEST.match(reference) else f"invalid or unsupported digest {reference!r}"
    return "" if _TAG.match(reference) else f"invalid tag {reference!r}"


def is_digest(value: str) -> bool:
    """A sha256 digest we can verify (the only algorithm registries use for layers)."""
    return _DIGEST.match(value) is not None


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return {"errors": [entry], "code": code, "message": message}


def error(status: int, code: str, message: str, detail: Any = None) -> web.Response:
    """An OCI error answer; HEAD requests get the status and headers only, as aiohttp drops the body."""
    return web.json_response(error_body(code, message, detail), status=status,
                             headers={"Docker-Distribution-API-Version": "registry/2.0"})
