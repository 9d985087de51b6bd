"""Who may call the write API, which origins the supernode may fetch, and TLS for the API port.

Three independent, opt-in protections (all off by default, so an existing deployment keeps working):

- **API token.** A supernode is a shared cache in front of every node's registry: anyone who can
  ``POST /preheats`` or ``DELETE /tasks/{id}?full=true`` can make it fetch or forget content. With
  ``api_token`` (or ``api_token_file``, a mounted Kubernetes Secret) every call of the REST and preheat
  API that changes state needs ``Authorization: Bearer <token>``. The dfget v1 endpoints (``/peer/*``,
  ``/task/metrics``) stay open because dfget 1.0.x cannot send a header; they only act for the
  registering client itself, and the source allow-list below is what bounds them.
- **Source allow-list.** ``source_allow`` limits the hosts the supernode fetches from, so a register or
  a preheat cannot be used to reach internal services (SSRF). The check runs where the connection is
  made (:class:`AllowListConnector`), so every redirect hop is checked too, not only the first URL.
- **TLS** for the API port, from a certificate and key given in the configuration.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .errors import DfCode, DfError

if TYPE_CHECKING:
    from aiohttp import ClientTimeout
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

# --------------------------------------------------------------------------------------- source allow-list


class SourceNotAllowed(aiohttp.ClientConnectionError):
    """Raised by :class:`AllowListConnector` before connecting to a host the allow-list refuses.

    A ``ClientConnectionError`` so that code which handles "the origin cannot be reached" keeps working;
    the CDN turns it into a DfError SOURCE_NOT_ALLOWED (HTTP 403) rather than a plain 607.
    """

    def __init__(self, host: str, url: str) -> None:
        super().__init__(f"source host {host!r} of {url} is not in the supernode's source allow-list")
        self.host = host
        self.url = url


def _host_of(url: URL) -> str:
    """The host a request to ``url`` connects to, in the form the patterns use: lower case, no dot at the end."""
    return (url.raw_host or "").lower().rstrip(".")


def _as_ip(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 reaches 10.0.0.1
    return address


@dataclass(frozen=True)
class SourceAllowList:
    """Host patterns: ``registry.local`` (that name), ``*.example.com`` (any name below example.com, not
    example.com itself), ``10.0.0.0/8`` or ``127.0.0.1`` (IP literals in that network).

    Names are compared as written in the URL, never by what they resolve to: an allowed name is trusted
    whatever its DNS says, and an IP written in an unusual form (``2130706433``, ``0x7f.1``) is no name
    any pattern lists, so it is refused. Ports are not part of a pattern. An empty list allows every host.
    """

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> SourceAllowList:
        """Build from configuration; ``ValueError`` names the first pattern that is not valid."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in patterns:
            pattern = raw.strip().lower().rstrip(".")
            if not pattern:
                continue
            if "/" in pattern or _as_ip(pattern.strip("[]")) is not None:
                try:
                    networks.append(ipaddress.ip_network(pattern.strip("[]"), strict=False))
                except ValueError:
                    raise ValueError(f"source_allow: {raw!r} is not an IP network") from None
                continue
            wildcard = pattern.startswith("*.")
            name = pattern[2:] if wildcard else pattern
            if not name or not all(_LABEL.match(label) for label in name.split(".")):
                raise ValueError(f"source_allow: {raw!r} is not a host name, *.domain, IP or network")
            if wildcard:
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if not self.enabled:
            return True
        if not host:
            return False
        address = _as_ip(host)
        if address is not None:
            return any(address in network for network in self.networks)
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def check(self, url: str | URL) -> None:
        """Raise ``DfError`` SOURCE_NOT_ALLOWED (HTTP 403) unless ``url``'s host may be fetched."""
        if not self.enabled:
            return
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (ValueError, TypeError):
            raise DfError(DfCode.INVALID_VALUE, f"url: {url}", "not a valid URL") from None
        host = _host_of(parsed)
        if not self.allows_host(host):
            log.warning("refused to fetch %s: host %r is not in source_allow", url, host)
            raise DfError(DfCode.SOURCE_NOT_ALLOWED, f"url: {url}",
                          f"source host {host!r} is not allowed by this supernode (source_allow)")


class AllowListConnector(aiohttp.TCPConnector):
    """A connector that refuses, before any DNS lookup or connection, a host the allow-list does not allow.

    aiohttp calls :meth:`connect` for every request it sends, redirect hops included, with the URL it is
    about to reach; checking there (instead of the URL a caller passed in) is what makes a redirect from
    an allowed origin to an internal address fail.
    """

    def __init__(self, allow: SourceAllowList, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allow = allow

    async def connect(self, req: ClientRequest, traces: list[Trace],
                      timeout: ClientTimeout) -> Connection:  # noqa: ASYNC109 - aiohttp's signature
        host = _host_of(req.url)
        if not self._allow.allows_host(host):
            log.warning("refused to connect to %s: host %r is not in source_allow", req.url, host)
            raise SourceNotAllowed(host, str(req.url))
        return await super().connect(req, traces, timeout)


# --------------------------------------------------------------------------------------- API token


class TokenError(Exception):
    """The token configuration cannot be used (unreadable or empty token file)."""


class ApiToken:
    """The bearer token of the write API, from the configuration or from a file.

    A file-backed token is re-read when the file changes (checked at most every ``recheck`` seconds), so a
    rotated Kubernetes Secret takes effect without a restart. A file that becomes unreadable or empty
    keeps the last good token: a half-updated Secret mount must not open the API.
    """

    def __init__(self, *, token: str | None = None, path: Path | None = None, recheck: float = 10.0) -> None:
        self._path = path
        self._recheck = recheck
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._token: bytes | None = token.encode() if token else None
        if path is not None:
            self._token = self._read(path)
            self._checked = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self._token is not None

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_mtime_ns, stat.st_ino

    def _read(self, path: Path) -> bytes:
        try:
            self._stamp = self._stat(path)
            token = path.read_bytes().strip()
        except OSError as exc:
            raise TokenError(f"cannot read api_token_file {path}: {exc.strerror or exc}") from None
        if not token:
            raise TokenError(f"api_token_file {path} is empty")
        return token

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < self._recheck:
            return
        self._checked = now
        try:
            if self._stat(self._path) == self._stamp:
                return
            self._token = self._read(self._path)
            log.info("api token reloaded from %s", self._path)
        except (OSError, TokenError) as exc:
            log.warning("keeping the previous api token: %s", exc)

    def matches(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token; compared in constant time."""
        self._refresh()
        if self._token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(errors="surrogateescape"), self._token)


# --------------------------------------------------------------------------------------- TLS


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The API port's TLS context (TLS 1.2 or later); ``OSError``/``ssl.SSLError`` when unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise OSError(f"cannot use tls_cert {cert} with tls_key {key}: {exc.strerror or exc}") from None
    return context
