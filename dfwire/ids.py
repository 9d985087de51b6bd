"""Identifiers exactly as Dragonfly v1 computes them (spec §2.1, §2.2).

A task ID is the contract between every dfget, every supernode and the on-disk cache: the same URL,
sign and Range must give the same ID on every implementation, or peers end up in different swarms
and caches are never reused. Everything here is pure and tested against the golden vectors recorded
from the Go supernode.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from yarl import URL

# The 32-character salt of the Go supernode (``manager_util.go``); the backquote and the double quote
# are literal characters of the key.
TASK_ID_KEY = ">I$pg-~AS~sP'rqu_`Oh&lz#9]\"=;nE%"

SUPER_CID_PREFIX = "cdnnode:"

_TASK_ID_RE = re.compile(r"[0-9a-f]{64}")
# RFC 9110 token: what a header name may be. Values must not carry CR, LF or NUL (header injection).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


def is_blank(value: str | None) -> bool:
    """Go's ``stringutils.IsEmptyStr``: empty or only white space."""
    return value is None or value.strip() == ""


def filter_url_param(url: str, filters: Iterable[str]) -> str:
    """Drop the query parameters named in ``filters`` from ``url``.

    Nothing is decoded and names match case-sensitively, so that the result is byte-identical to
    what dfget computes on its side (it sends the filtered URL as ``taskUrl``).
    """
    wanted = {f for f in filters if f}
    base, sep, query = url.partition("?")
    if not wanted or not sep or is_blank(query):
        return url
    kept = [p for p in query.split("&") if p.partition("=")[0] not in wanted]
    return f"{base}?{'&'.join(kept)}" if kept else base


def split_filter(filter_text: str | None) -> list[str]:
    """dfget's ``-f 'a&b'`` and the preheat ``filter`` field are ``&``-separated names."""
    return [f for f in (filter_text or "").split("&") if f]


def convert_headers(lines: Iterable[str] | None) -> dict[str, str]:
    """``["Name: value", ...]`` -> ``{Name: value}`` as Go's ``ConvertHeaders`` does.

    Split on the first colon, trim both sides, skip empty values, join repeated names with ``,``.
    Names keep their case: only the exact key ``Range`` enters the task ID.
    """
    headers: dict[str, str] = {}
    for line in lines or ():
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def task_sign(md5: str | None, identifier: str | None) -> str:
    if not is_blank(md5):
        return md5 or ""
    if not is_blank(identifier):
        return identifier or ""
    return ""


def task_id(task_url: str, *, md5: str | None = None, identifier: str | None = None,
            headers: Mapping[str, str] | None = None) -> str:
    """SHA-256 of ``KEY + taskURL + sign [+ Range] + KEY`` (§2.1)."""
    parts = [TASK_ID_KEY, task_url, task_sign(md5, identifier)]
    if headers is not None and "Range" in headers:
        parts.append(headers["Range"])
    parts.append(TASK_ID_KEY)
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def effective_task_url(task_url: str | None, raw_url: str) -> str:
    """The registrant's ``taskURL`` when it is not blank, else the raw URL unchanged."""
    return task_url if task_url and not is_blank(task_url) else raw_url


def preheat_id(url: str, *, filter_text: str | None = None, identifier: str | None = None,
               headers: Mapping[str, str] | None = None) -> str:
    """Preheat IDs use the task-ID scheme with the identifier as the only sign (§2.1 item 7)."""
    return task_id(filter_url_param(url, split_filter(filter_text)), identifier=identifier, headers=headers)


def is_task_id(value: str) -> bool:
    """Task IDs become file names: anything but 64 lowercase hex digits is refused before disk access."""
    return _TASK_ID_RE.fullmatch(value) is not None


def peer_id(host_name: str, ip: str, unix_nanos: int) -> str:
    return f"{host_name}-{ip}-{unix_nanos}"


def super_cid(advertise_ip: str, task: str) -> str:
    return f"{SUPER_CID_PREFIX}{advertise_ip}~{task}"


def is_super_cid(cid: str, advertise_ip: str) -> bool:
    return cid.startswith(f"{SUPER_CID_PREFIX}{advertise_ip}~")


def cdn_http_path(task: str) -> str:
    """Where the download port serves a task's wrapped file: ``/download/{id[:3]}/{id}``."""
    return f"/download/{task[:3]}/{task}"


def source_url_problem(url: str) -> str:
    """Why ``url`` cannot be fetched as a source ("" when it can): refused up front as bad input (400)
    rather than discovered later as an unreachable source.

    An http(s) URL with a host, a port in 1-65535 and no control characters, that both the standard
    library and yarl (the parser of the HTTP client) accept.
    """
    if not url.isprintable():
        return "contains control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
        URL(url)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "not an http or https URL"
    if not parts.hostname:
        return "no host"
    if port == 0:
        return "port 0"
    return ""


def header_problem(name: str, value: str) -> str:
    """Why ``name: value`` cannot be sent to a source ("" when it can)."""
    if not _HEADER_NAME.match(name):
        return f"header name {name!r} is not an HTTP token"
    if _HEADER_VALUE_FORBIDDEN.search(value):
        return f"header {name!r} has CR, LF or NUL in its value"
    return ""
