"""The origin client: one place that opens HTTP(S) requests to sources.

TLS settings arrive per source host from dfget (``insecure``, ``rootCAs``) and are remembered, as the
Go supernode does, so later fetches of that host (e.g. a cache revalidation after a restart of the
task) use them. Content is fetched with ``Accept-Encoding: identity`` and no transparent
decompression: the CDN must store the exact bytes whose MD5 dfget will check.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .. import __version__
from ..security import AllowListConnector, SourceAllowList


@dataclass(frozen=True)
class TlsOptions:
    insecure: bool = False
    root_cas: tuple[str, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | bool:
        """``ssl.SSLError`` or ``ValueError`` when a CA cannot be used."""
        if self.insecure:
            return False
        if not self.root_cas:
            return True
        ctx = ssl.create_default_context()
        for ca in self.root_cas:
            try:
                ctx.load_verify_locations(cadata=_pem_or_der(ca))
            except TypeError as exc:  # PEM text that is not ASCII
                raise ValueError(str(exc)) from None
        return ctx


def _pem_or_der(value: str) -> str | bytes:
    """dfget sends each CA as base64 of the PEM file; a bare DER blob is accepted too."""
    raw = base64.b64decode(value, validate=False)
    return raw.decode() if raw.lstrip().startswith(b"-----BEGIN") else raw


class SourceClient:
    def __init__(self, *, header_timeout: float, read_timeout: float,
                 allow: SourceAllowList | None = None) -> None:
        self._header_timeout = header_timeout
        self.allow = allow or SourceAllowList()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=header_timeout, sock_read=read_timeout)
        self._tls: dict[str, TlsOptions] = {}
        self._sessions: dict[TlsOptions, aiohttp.ClientSession] = {}

    def remember_tls(self, url: str, options: TlsOptions) -> None:
        host = urlsplit(url).netloc
        if options != TlsOptions() or host in self._tls:
            self._tls[host] = options

    def _session(self, url: str) -> aiohttp.ClientSession:
        options = self._tls.get(urlsplit(url).netloc, TlsOptions())
        session = self._sessions.get(options)
        if session is None or session.closed:
            connector = AllowListConnector(self.allow, ssl=options.ssl_context(), limit=0)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False,
                                            headers={"User-Agent": f"dragonfly-supernode-py/{__version__}"})
            self._sessions[options] = session
        return session

    async def open(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """Send a GET and return once the response headers are in; the caller reads and releases it.

        Raises ``aiohttp.ClientError`` (:class:`~supernode.security.SourceNotAllowed` when the URL or a
        redirect leads to a host outside ``source_allow``), ``ssl.SSLError``, ``ValueError`` (bad URL) or
        ``TimeoutError`` when no headers arrive within the header timeout. Redirects are followed (at most
        10); every hop passes the allow-list, since the check is in the connector.
        """
        sent = {"Accept-Encoding": "identity", **headers}
        return await asyncio.wait_for(self._session(url).get(url, headers=sent, allow_redirects=True),
                                      self._header_timeout)

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
