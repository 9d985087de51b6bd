"""The I/O half of image preheat: one registry asked for an image's manifests as ``docker pull`` asks.

:class:`RegistryClient` makes the requests of one image preheat: its manifests (an index followed to the
chosen platforms' manifests, each checked against the digest it was asked by) and the answers to the
registry's auth challenges, whose credentials it also hands out for the CDN's blob requests. The pure
half, everything parsed or decided on what a registry sends, is :mod:`dfwire.registry`. The client is
apart from :mod:`supernode.managers.preheat` because talking HTTP to a registry is a job of its own: the
preheat manager keeps records and never sees a status code or a challenge.

Every connection, redirects and the token realm included, is held to the supernode's source allow-list,
as the CDN's are; every failure is a :class:`~supernode.managers.preheat_record.PreheatFailed` whose
text (the registry, and what it answered) becomes the image preheat's ``errorMsg``.
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType

import aiohttp

from dfwire.registry import (
    MANIFEST_ACCEPT,
    Challenge,
    Descriptor,
    ImageRef,
    Manifest,
    ManifestKind,
    Platform,
    RegistryError,
    digest_of,
    parse_challenges,
    parse_digest,
    parse_manifest,
    parse_token_answer,
    registry_error_text,
    select_manifests,
    token_request_url,
)

from ..cdn.source import TlsOptions
from ..security import AllowListConnector, SourceAllowList
from .preheat_record import PreheatFailed

_MANIFEST_LIMIT = 4 * 1024 * 1024
_TOKEN_LIMIT = 1024 * 1024


class RegistryClient:
    """Manifests and auth for one image preheat (blobs go through the CDN, not through here).

    Authentication follows the registry's challenges: a Bearer challenge sends us to its token
    endpoint (anonymously, or with the Basic credentials given in the preheat's headers); a Basic
    challenge is answered with the given credentials. A Bearer token given in the headers is used
    as is. Tokens are renewed shortly before they expire, since the layers of a large image are
    admitted over minutes.
    """

    def __init__(
        self,
        ref: ImageRef,
        *,
        headers: dict[str, str],
        tls: TlsOptions,
        connect_timeout: float,
        read_timeout: float,
        allow: SourceAllowList,
    ) -> None:
        self.ref = ref
        self._allow = allow
        self._plain = {k: v for k, v in headers.items() if k.lower() not in ("accept", "authorization")}
        self._given = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        self._auth = self._given
        self._challenge: Challenge | None = None
        self._renew_at = 0.0
        self._tls = tls
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        # The allow-list is checked on every connection, so manifest redirects and the token realm are held
        # to it as the CDN's blob fetches are.
        connector = AllowListConnector(self._allow, ssl=self._tls.ssl_context(), limit=4)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient used outside 'async with'")
        return self._session

    async def resolve(self, platforms: tuple[Platform, ...]) -> tuple[Descriptor, ...]:
        """The blobs to preheat: an image's config and layers, or those of the chosen platforms of an index."""
        top = await self.manifest(self.ref.reference)
        if top.kind != ManifestKind.INDEX:
            return top.blobs
        try:
            chosen = select_manifests(top, list(platforms))
        except RegistryError as exc:
            raise PreheatFailed(str(exc)) from None
        blobs: dict[str, Descriptor] = {}
        for entry in chosen:
            manifest = await self.manifest(entry.digest)
            if manifest.kind == ManifestKind.INDEX:
                raise PreheatFailed(
                    f"index {self.ref.name}:{self.ref.reference} lists another index "
                    f"({entry.digest}); nested indexes are not supported"
                )
            for blob in manifest.blobs:
                blobs.setdefault(blob.digest, blob)
        return tuple(blobs.values())

    async def manifest(self, reference: str) -> Manifest:
        url = self.ref.manifest_url(reference)
        status, body, content_type = await self._get(url, {"Accept": MANIFEST_ACCEPT})
        where = f"{self.ref.name}:{reference}" if ":" not in reference else f"{self.ref.name}@{reference}"
        if status == 404:
            detail = registry_error_text(body) or "HTTP 404"
            raise PreheatFailed(
                f"manifest {where} not found in registry {self.ref.host}: {detail}"
                f"{await self._which_is_missing(reference)}"
            )
        if status != 200:
            detail = registry_error_text(body) or body[:200].decode(errors="replace").strip()
            raise PreheatFailed(f"registry {self.ref.host} answered HTTP {status} for manifest {where}: {detail}")
        try:
            if ":" in reference:
                algorithm, _ = parse_digest(reference)
                actual = digest_of(body, algorithm)
                if actual != reference:
                    raise PreheatFailed(f"manifest {where} has digest {actual}: the registry sent other content")
            return parse_manifest(body, content_type)
        except RegistryError as exc:
            raise PreheatFailed(f"manifest {where} from {self.ref.host}: {exc}") from None

    async def _which_is_missing(self, reference: str) -> str:
        """Tell an unknown repository from an unknown tag: registries answer MANIFEST_UNKNOWN for both.

        One ``tags/list`` request, only after a 404; anything unexpected just adds nothing.
        """
        if ":" in reference:
            return ""
        with contextlib.suppress(aiohttp.ClientError, PreheatFailed, TimeoutError):
            status, _, _ = await self._get(f"{self.ref.base}/tags/list", {"Accept": "application/json"})
            if status == 404:
                return f" (the repository {self.ref.name} does not exist)"
            if status == 200:
                return f" (the repository {self.ref.name} exists, the tag {reference} does not)"
        return ""

    async def blob_headers(self) -> dict[str, str]:
        """Headers for the CDN's blob request: the user's own ones and current credentials."""
        await self._renew()
        headers = dict(self._plain)
        if self._auth:
            headers["Authorization"] = self._auth
        return headers

    async def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """GET with credentials, answering one 401 challenge; ``(status, body, content type)``."""
        for attempt in (1, 2):
            await self._renew()
            sent = {**self._plain, **headers, **({"Authorization": self._auth} if self._auth else {})}
            try:
                async with self.session.get(url, headers=sent) as resp:
                    if resp.status == 401 and attempt == 1:
                        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
                        await self._authenticate(challenges)
                        continue
                    if resp.status == 401:
                        raise PreheatFailed(
                            f"registry {self.ref.host} rejected the credentials obtained from "
                            f"{self._challenge.realm if self._challenge else 'the headers'} "
                            f"(HTTP 401)"
                        )
                    body = await resp.content.read(_MANIFEST_LIMIT + 1)
                    if len(body) > _MANIFEST_LIMIT:
                        raise PreheatFailed(f"{url} answered more than {_MANIFEST_LIMIT} bytes: not a manifest")
                    return resp.status, body, resp.headers.get("Content-Type", "")
            except aiohttp.ClientError as exc:
                raise PreheatFailed(f"registry {self.ref.host} unreachable: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _authenticate(self, challenges: list[Challenge]) -> None:
        host = self.ref.host
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            if self._given.lower().startswith("bearer "):
                raise PreheatFailed(f"registry {host} rejected the Bearer token given in headers (HTTP 401)")
            self._challenge = bearer
            await self._fetch_token()
            return
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if basic is not None and self._given:
            raise PreheatFailed(f"registry {host} rejected the credentials given in headers (HTTP 401)")
        if basic is not None:
            raise PreheatFailed(
                f"registry {host} requires credentials (Basic realm {basic.realm!r}): "
                f"give them as an Authorization header"
            )
        raise PreheatFailed(f"registry {host} answered HTTP 401 without a usable WWW-Authenticate challenge")

    async def _renew(self) -> None:
        if self._challenge is not None and time.monotonic() >= self._renew_at:
            await self._fetch_token()

    async def _fetch_token(self) -> None:
        challenge = self._challenge
        assert challenge is not None
        try:
            url = token_request_url(challenge, self.ref.pull_scope)
        except RegistryError as exc:
            raise PreheatFailed(str(exc)) from None
        basic = self._given if self._given.lower().startswith("basic ") else ""
        who = "the credentials given in headers" if basic else "anonymous access"
        try:
            async with self.session.get(url, headers={"Authorization": basic} if basic else {}) as resp:
                body = await resp.content.read(_TOKEN_LIMIT)
                status = resp.status
        except aiohttp.ClientError as exc:
            raise PreheatFailed(f"token endpoint {challenge.realm} unreachable: {exc or type(exc).__name__}") from None
        if status in (401, 403):
            raise PreheatFailed(f"token endpoint {challenge.realm} refused {who} (HTTP {status})")
        if status != 200:
            raise PreheatFailed(f"token endpoint {challenge.realm} answered HTTP {status}")
        try:
            token, expires_in = parse_token_answer(body)
        except RegistryError as exc:
            raise PreheatFailed(f"{exc} ({challenge.realm})") from None
        self._auth = f"Bearer {token}"
        self._renew_at = time.monotonic() + expires_in - min(30.0, expires_in / 2)
