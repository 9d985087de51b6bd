"""What the origin's answer and a cache entry's ``.meta`` allow: keep the cache, continue it, or fetch anew.

The CDN manager sends one request to the origin per task (conditional, ranged or plain) and then judges
the answer against what ``.meta`` recorded of the earlier download. Those judgements are here, apart from
the manager, because they are pure: functions of headers, status and metadata, with no I/O and no clock.
They decide whether bytes already on disk are served to peers, so each is tested on real header values
rather than only through a scripted origin.

Times are epoch milliseconds, as ``.meta`` stores them; a missing or unparsable HTTP date is 0 (unknown).
Response headers are the case-insensitive mapping aiohttp gives; request headers are the registrant's
plain dict, hence :func:`has_header`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from ..tasks import TaskSpec
from .store import CacheMeta


def http_date_ms(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return 0


def http_date(ms: int) -> str:
    return format_datetime(datetime.fromtimestamp(ms / 1000, UTC), usegmt=True)


def content_length(headers: Mapping[str, str]) -> int:
    """The ``Content-Length``, -1 when it is absent or not a plain number (the length is then unknown)."""
    value = headers.get("Content-Length", "")
    return int(value) if value.isdigit() else -1


def _content_range(headers: Mapping[str, str]) -> tuple[int, int]:
    """``(start, total)`` of a ``Content-Range: bytes a-b/total`` header, -1 where absent."""
    value = headers.get("Content-Range", "")
    try:
        unit_range, _, total = value.partition("/")
        start = int(unit_range.split()[1].split("-")[0])
        return start, int(total) if total.isdigit() else -1
    except (IndexError, ValueError):
        return -1, -1


def has_header(headers: Mapping[str, str], name: str) -> bool:
    return any(k.lower() == name.lower() for k in headers)


def if_range(meta: CacheMeta) -> str:
    """The ``If-Range`` validator for resuming ``meta``'s download ("" when there is none usable).

    ``If-Range`` needs a strong comparison, so a weak ETag cannot be used; the date is the fallback.
    """
    if meta.etag and not meta.etag.startswith("W/"):
        return meta.etag
    return http_date(meta.last_modified) if meta.last_modified else ""


def meta_matches(meta: CacheMeta, spec: TaskSpec) -> bool:
    """The cache entry was made for this task: same ID and URL, and the same MD5 (or, without one, identifier)."""
    if meta.task_id != spec.task_id or meta.url != spec.task_url:
        return False
    if spec.md5.strip():
        return meta.md5 == spec.md5
    return meta.biz_id == spec.identifier


def can_resume(meta: CacheMeta, request_headers: Mapping[str, str]) -> bool:
    """An unfinished download of known length whose origin gave a validator usable in ``If-Range``.

    A registrant that asks for a range itself is never resumed: its own ``Range`` is what is fetched.
    """
    return (not meta.finish and meta.http_file_len > 0 and bool(if_range(meta))
            and not has_header(request_headers, "Range"))


def continues(headers: Mapping[str, str], meta: CacheMeta, start: int) -> bool:
    """A 206's headers say it is exactly the rest, from byte ``start``, of ``meta``'s download, of the same content."""
    range_start, total = _content_range(headers)
    if range_start != start or total != meta.http_file_len:
        return False
    etag = headers.get("ETag")
    if etag is not None and meta.etag and etag != meta.etag:
        return False
    modified = headers.get("Last-Modified")
    return modified is None or not meta.last_modified or http_date_ms(modified) == meta.last_modified


def unchanged(status: int, headers: Mapping[str, str], meta: CacheMeta) -> bool:
    """304, or a 200 that carries the very validators we stored (an origin ignoring conditionals)."""
    if status == 304:
        return True
    if status != 200:
        return False
    length = content_length(headers)
    if length >= 0 and length != meta.http_file_len:
        return False
    etag = headers.get("ETag", "")
    modified = http_date_ms(headers.get("Last-Modified"))
    same_etag = bool(meta.etag) and etag == meta.etag
    same_date = bool(meta.last_modified) and modified == meta.last_modified
    return (same_etag or not meta.etag) and (same_date or not meta.last_modified) and (same_etag or same_date)
