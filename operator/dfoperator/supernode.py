"""The supernodes' ``/preheats`` API (``supernode-api.md``), as the operator needs it.

Every answer is sorted into what the reconciler does next, so that no HTTP status leaks past here:
- :class:`Accepted` (201, 200 "already running", 208 "already preheated") carries the preheat ID;
- :class:`SupernodeError` with ``retryable=True`` (no connection, timeout, 5xx, 409 "the same ID is
  running as another request") is retried with backoff; ``retryable=False`` (400: the supernode
  refuses the request) fails that supernode at once with the supernode's own message;
- :class:`PreheatGone` (404 on a known ID) means the supernode forgot the preheat (a restart, its GC):
  the reconciler submits it again, which gives the same ID back.

Every failed request is counted in ``dragonfly_operator_supernode_request_errors_total``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from .metrics import OperatorMetrics
from .state import EntryState

log = logging.getLogger(__name__)

_ERROR_TEXT_LIMIT = 500


class SupernodeError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class PreheatGone(Exception):
    """``GET /preheats/{id}`` answered 404: the supernode no longer knows this preheat."""


@dataclass(frozen=True)
class Accepted:
    preheat_id: str
    state: EntryState


@dataclass(frozen=True)
class PreheatProgress:
    state: EntryState
    error_msg: str


def _message(body: bytes) -> str:
    """The ``message`` of the supernode's JSON error envelope, or the text of whatever else came back."""
    text = body.decode(errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:_ERROR_TEXT_LIMIT]
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])[:_ERROR_TEXT_LIMIT]
    return text[:_ERROR_TEXT_LIMIT]


class SupernodeClient:
    """One HTTP session for every supernode; ``base`` is a supernode's API base URL."""

    def __init__(self, *, timeout: float, metrics: OperatorMetrics) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"User-Agent": "dragonfly-operator"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, base: str, operation: str, method: str, path: str,
                    payload: dict[str, Any] | None = None) -> tuple[int, bytes]:
        url = f"{base}{path}"
        try:
            async with self._http().request(method, url, json=payload) as resp:
                body = await resp.read()
                log.debug("%s %s: HTTP %d", method, url, resp.status)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._metrics.supernode_error(base, operation)
            detail = str(exc) or type(exc).__name__
            raise SupernodeError(f"unreachable: {method} {url}: {detail}", retryable=True) from None

    def _failed(self, base: str, operation: str, status: int, body: bytes) -> SupernodeError:
        self._metrics.supernode_error(base, operation)
        retryable = status >= 500 or status in (408, 409, 429)
        return SupernodeError(f"HTTP {status}: {_message(body)}", retryable=retryable)

    async def create(self, base: str, request: dict[str, Any]) -> Accepted:
        status, body = await self._call(base, "create", "POST", "/preheats", request)
        if status in (200, 201, 208):
            try:
                preheat_id = str(json.loads(body)["ID"])
            except (ValueError, KeyError, TypeError):
                raise self._failed(base, "create", 502, b"answer without an ID: " + body[:200]) from None
            return Accepted(preheat_id, EntryState.SUCCESS if status == 208 else EntryState.WAITING)
        raise self._failed(base, "create", status, body)

    async def get(self, base: str, preheat_id: str) -> PreheatProgress:
        status, body = await self._call(base, "get", "GET", f"/preheats/{preheat_id}")
        if status == 404:
            raise PreheatGone(f"{base} no longer knows preheat {preheat_id}")
        if status != 200:
            raise self._failed(base, "get", status, body)
        try:
            info = json.loads(body)
            state = EntryState(str(info["status"]))
        except (ValueError, KeyError, TypeError):
            raise self._failed(base, "get", 502, b"unexpected answer: " + body[:200]) from None
        return PreheatProgress(state, str(info.get("errorMsg") or ""))

    async def delete(self, base: str, preheat_id: str) -> bool:
        """Cancel (and forget) a preheat; ``False`` when the supernode did not know it."""
        status, body = await self._call(base, "delete", "DELETE", f"/preheats/{preheat_id}")
        if status in (200, 204):
            return True
        if status == 404:
            return False
        raise self._failed(base, "delete", status, body)
