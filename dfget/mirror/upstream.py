"""Requests to a mirrored registry, with the registry's auth handled as a runtime would handle it.

The runtime's own ``Authorization`` header always wins and is passed through, and so is the
registry's answer, 401 challenges included: containerd then does its own token dance against the
registry's realm and retries here with the token. Without a runtime header, the mirror answers a
challenge itself when it can: a Bearer challenge with a token from the realm (with the node's
credentials for that registry, or anonymously), a Basic challenge with the node's credentials.
Tokens are kept per repository scope until shortly before they expire.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp

from dfwire.registry import RegistryError, parse_challenges, parse_token_answer, token_request_url

from .config import Registry

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
TOKEN_LIMIT = 1 << 20
#: Headers of the runtime's request that the registry gets as they are.
FORWARDED = ("Accept", "Authorization", "Range", "If-None-Match")


class UpstreamError(Exception):
    """The registry cannot be reached, or its token endpoint failed: the runtime should try the next host."""


class Upstream:
    """One registry: its connections (with its CA), the node's credentials and the tokens obtained."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._ssl: ssl.SSLContext | bool = True
        if registry.ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=str(registry.ca_file))
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (Authorization value, renew at)
        self._basic = False  # the registry asked for Basic credentials once: send them up front from now on
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT))
        return self._session

    @property
    def ca_pem(self) -> str:
        """The CA bundle as text ("" without one): the supernode gets it to fetch blobs from this registry."""
        return self.registry.ca_file.read_text() if self.registry.ca_file is not None else ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_qs: str) -> str:
        return f"{self.registry.url}{path_qs}"

    @contextlib.asynccontextmanager
    async def request(self, method: str, path: str, headers: Mapping[str, str], *,
                      scope: str) -> AsyncIterator[tuple[aiohttp.ClientResponse, str]]:
        """``(response, Authorization used)`` for ``method path``; the caller reads the body inside.

        ``UpstreamError`` when the registry (or its token endpoint) cannot be reached.
        """
        sent = {k: v for k in FORWARDED if (v := headers.get(k))}
        given = "Authorization" in sent
        if not given and (cached := self._token(scope)):
            sent["Authorization"] = cached
        elif not given and self._basic:
            sent["Authorization"] = self.registry.authorization
        for attempt in (1, 2):
            try:
                resp = await self.session.request(method, self.url(path), headers=sent, allow_redirects=True)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise UpstreamError(f"registry {self.registry.name} unreachable: {exc.__class__.__name__}: "
                                    f"{exc}") from exc
            if resp.status == 401 and attempt == 1 and not given:
                answer = await self._answer(resp, scope)
                if answer:
                    resp.release()
                    sent["Authorization"] = answer
                    continue
            try:
                yield resp, sent.get("Authorization", "")
            finally:
                resp.release()
            return

    def _token(self, scope: str) -> str:
        value, renew_at = self._tokens.get(scope, ("", 0.0))
        return value if value and time.monotonic() < renew_at else ""

    async def _answer(self, resp: aiohttp.ClientResponse, scope: str) -> str:
        """The Authorization that answers this 401, or "" to pass the challenge to the runtime."""
        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            try:
                url = token_request_url(bearer, scope)
            except RegistryError as exc:
                log.warning("registry %s: %s", self.registry.name, exc)
                return ""
            auth = {"Authorization": self.registry.authorization} if self.registry.authorization else {}
            try:
                async with self.session.get(url, headers=auth) as answer:
                    body = await answer.content.read(TOKEN_LIMIT)
                    status = answer.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise UpstreamError(f"token endpoint {bearer.realm} unreachable: {exc}") from exc
            if status != 200:
                log.warning("token endpoint %s answered HTTP %d for %s", bearer.realm, status, scope)
                return ""
            try:
                token, expires_in = parse_token_answer(body)
            except RegistryError as exc:
                log.warning("token endpoint %s: %s", bearer.realm, exc)
                return ""
            value = f"Bearer {token}"
            self._tokens[scope] = (value, time.monotonic() + expires_in - min(30.0, expires_in / 2))
            return value
        if any(c.scheme == "basic" for c in challenges) and self.registry.authorization:
            self._basic = True
            return self.registry.authorization
        return ""


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"
