"""The pure half of image preheat: registry v2 manifest URLs, auth challenges, manifests, platforms.

Image preheat talks to a Docker/OCI registry the way ``docker pull`` does. Everything here is parsing and
decision logic with no I/O, so the odd inputs real registries produce (quoted commas in a challenge,
a manifest list whose entries are attestations, a schema-1 manifest) can be unit-tested without a
network. The I/O half is :mod:`supernode.managers.registry_client`.

Deliberate differences from the Go supernode (§6), which only had to work with Docker Hub:
- challenges are parsed as RFC 7235 auth-params, so a ``scope="repository:a:pull,push"`` survives
  (Go split the header on every comma);
- a manifest is recognised by its ``mediaType`` field first, then by the response's Content-Type,
  so OCI manifests without ``mediaType`` still parse;
- every digest is validated before it becomes part of a URL or a file name.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: What we accept, most wanted first: a registry serves the best form it has of the reference.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST,
                             f"{DOCKER_SCHEMA1_SIGNED};q=0.5", f"{DOCKER_SCHEMA1};q=0.5"))

_INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
_IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
_SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
#: Layers that live outside the registry (Windows base layers): the registry cannot serve them.
_FOREIGN_LAYERS = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})

_MANIFEST_URL = re.compile(r"^(?P<proto>https?)://(?P<host>[^/?#]+)/v2/(?P<name>.+)/manifests/(?P<ref>[^/?#]+)$")
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^(?P<algorithm>sha256|sha512):(?P<hex>[a-f0-9]+)$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_PLATFORM = re.compile(r"^[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?$")
# RFC 7235 auth-param: name=token or name="quoted string" (with backslash escapes).
_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


class RegistryError(Exception):
    """Something the registry sent (or the URL we were given) cannot be used; the text says what."""


# ---------------------------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class ImageRef:
    """``{proto}://{host}/v2/{name}/manifests/{reference}``, the URL form of an image preheat."""

    proto: str
    host: str
    name: str
    reference: str

    @property
    def base(self) -> str:
        return f"{self.proto}://{self.host}/v2/{self.name}"

    def manifest_url(self, reference: str | None = None) -> str:
        return f"{self.base}/manifests/{reference or self.reference}"

    def blob_url(self, digest: str) -> str:
        """The URL dfget (or dfdaemon) registers for a layer: the CDN task of a child preheat."""
        return f"{self.base}/blobs/{digest}"

    @property
    def pull_scope(self) -> str:
        return f"repository:{self.name}:pull"


def parse_manifest_url(url: str) -> ImageRef:
    """Split a manifest URL; ``RegistryError`` when it is not one (bad name, tag or digest included)."""
    match = _MANIFEST_URL.match(url)
    if match is None:
        raise RegistryError(f"not a registry v2 manifest URL (want <proto>://<host>/v2/<name>/manifests/<ref>): "
                            f"{url}")
    name, ref = match["name"], match["ref"]
    if not _NAME.match(name):
        raise RegistryError(f"invalid repository name {name!r}")
    if ":" in ref:
        parse_digest(ref)
    elif not _TAG.match(ref):
        raise RegistryError(f"invalid tag {ref!r}")
    return ImageRef(match["proto"], match["host"], name, ref)


def parse_digest(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a content digest we can verify (sha256 or sha512)."""
    match = _DIGEST.match(digest)
    if match is None or len(match["hex"]) != _HEX_LENGTH[match["algorithm"]]:
        raise RegistryError(f"invalid or unsupported digest {digest!r}")
    return match["algorithm"], match["hex"]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


# ---------------------------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``params`` keys are lower case."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Every challenge of every ``WWW-Authenticate`` header value, in order.

    A header may carry several challenges (``Basic realm="x", Bearer realm="y"``): a token that is
    not followed by ``=`` starts a new one.
    """
    challenges: list[Challenge] = []
    for value in values:
        rest = value.strip()
        while rest:
            scheme, _, rest = rest.partition(" ")
            scheme = scheme.strip().rstrip(",")
            if not scheme:
                rest = rest.strip()
                continue
            params: dict[str, str] = {}
            while rest:
                match = _AUTH_PARAM.match(rest)
                if match is None:
                    break
                params[match[1].lower()] = re.sub(r"\\(.)", r"\1", match[2]) if match[2] is not None else match[3]
                rest = rest[match.end():]
            challenges.append(Challenge(scheme.lower(), params))
            rest = rest.strip()
    return challenges


def token_request_url(challenge: Challenge, default_scope: str) -> str:
    """The token endpoint URL for a Bearer challenge (realm with ``service`` and ``scope`` added)."""
    realm = challenge.realm
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegistryError(f"registry sent a Bearer challenge without a usable realm: {realm!r}")
    query = [(k, v) for k, v in (("service", challenge.params.get("service", "")),
                                 ("scope", challenge.params.get("scope") or default_scope)) if v]
    joined = "&".join(filter(None, (parts.query, urlencode(query))))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))


def parse_token_answer(body: bytes) -> tuple[str, float]:
    """``(token, expires_in seconds)`` of a token endpoint answer (``token`` or OAuth2 ``access_token``)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise RegistryError("token endpoint answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise RegistryError("token endpoint answered JSON that is not an object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError("token endpoint answered without a token")
    expires = data.get("expires_in")
    return token, float(expires) if isinstance(expires, int | float) and expires > 0 else 60.0


def registry_error_text(body: bytes) -> str:
    """``CODE: message`` of a registry error body (``{"errors":[{code,message,detail}]}``), else ""."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    texts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
    return "; ".join(t for t in texts if t)


# ---------------------------------------------------------------------------------------------- platforms


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as ``docker pull --platform`` spells it."""
        if not _PLATFORM.match(text):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        os_, arch, *variant = text.split("/")
        return cls(os_, arch, variant[0] if variant else "")

    def matches(self, other: Platform) -> bool:
        """``self`` is a filter: a filter without a variant accepts every variant."""
        return (self.os == other.os and self.architecture == other.architecture
                and (not self.variant or self.variant == other.variant))

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))


# ---------------------------------------------------------------------------------------------- manifests


class ManifestKind(enum.StrEnum):
    IMAGE = "image"
    INDEX = "index"
    SCHEMA1 = "schema1"


@dataclass(frozen=True)
class Descriptor:
    """A blob or manifest reference; ``size`` is -1 when the manifest does not say (schema 1)."""

    digest: str
    size: int = -1
    media_type: str = ""
    platform: Platform | None = None


@dataclass(frozen=True)
class Manifest:
    kind: ManifestKind
    media_type: str
    blobs: tuple[Descriptor, ...] = ()
    """For an image: the config blob first, then the layers (duplicates removed)."""
    manifests: tuple[Descriptor, ...] = ()
    """For an index: the platform manifests it lists."""


def _descriptor(raw: Any, where: str, *, platform: bool = False) -> Descriptor:
    if not isinstance(raw, dict):
        raise RegistryError(f"malformed manifest: {where} is not an object")
    digest = raw.get("digest")
    if not isinstance(digest, str):
        raise RegistryError(f"malformed manifest: {where} has no digest")
    try:
        parse_digest(digest)
    except RegistryError as exc:
        raise RegistryError(f"malformed manifest: {where}: {exc}") from None
    size = raw.get("size", -1)
    if not isinstance(size, int) or isinstance(size, bool) or size < -1:
        raise RegistryError(f"malformed manifest: {where} has an invalid size {size!r}")
    media_type = raw.get("mediaType", "")
    if not isinstance(media_type, str):
        raise RegistryError(f"malformed manifest: {where} has an invalid mediaType")
    found: Platform | None = None
    if platform and isinstance(raw.get("platform"), dict):
        p = raw["platform"]
        found = Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "") or ""))
    return Descriptor(digest, size, media_type, found)


def parse_manifest(body: bytes, content_type: str = "") -> Manifest:
    """Parse what a registry answered for a manifest request; ``RegistryError`` says what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"malformed manifest: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RegistryError("malformed manifest: not a JSON object")
    header_type = content_type.split(";")[0].strip().lower()
    media_type = data.get("mediaType") if isinstance(data.get("mediaType"), str) else ""
    media_type = media_type or header_type
    version = data.get("schemaVersion")
    if version == 1 or media_type in _SCHEMA1_TYPES:
        layers = data.get("fsLayers")
        if not isinstance(layers, list):
            raise RegistryError("malformed manifest: schema 1 without fsLayers")
        blobs = _unique(_descriptor({"digest": (item or {}).get("blobSum") if isinstance(item, dict) else None},
                                    f"fsLayers[{n}]") for n, item in enumerate(layers))
        return Manifest(ManifestKind.SCHEMA1, media_type or DOCKER_SCHEMA1, blobs=blobs)
    if version != 2:
        raise RegistryError(f"malformed manifest: unsupported schemaVersion {version!r}")
    if media_type in _INDEX_TYPES or (not media_type and "manifests" in data):
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError("malformed manifest: index without a manifests list")
        manifests = tuple(_descriptor(e, f"manifests[{n}]", platform=True) for n, e in enumerate(entries))
        return Manifest(ManifestKind.INDEX, media_type or OCI_INDEX, manifests=manifests)
    if media_type in _IMAGE_TYPES or (not media_type and "layers" in data):
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise RegistryError("malformed manifest: image manifest without a layers list")
        config = _descriptor(data.get("config"), "config")
        found = [_descriptor(layer, f"layers[{n}]") for n, layer in enumerate(layers)]
        return Manifest(ManifestKind.IMAGE, media_type or OCI_MANIFEST,
                        blobs=_unique([config, *(d for d in found if d.media_type not in _FOREIGN_LAYERS)]))
    raise RegistryError(f"malformed manifest: unknown media type {media_type or '(none)'!r}")


def _unique(descriptors: Any) -> tuple[Descriptor, ...]:
    seen: dict[str, Descriptor] = {}
    for d in descriptors:
        seen.setdefault(d.digest, d)
    return tuple(seen.values())


def select_manifests(index: Manifest, wanted: list[Platform]) -> tuple[Descriptor, ...]:
    """The index entries to preheat: those matching ``wanted``, or every real platform when it is empty.

    Entries with platform ``unknown/unknown`` are build attestations (BuildKit), not runnable images;
    they are skipped unless asked for explicitly.
    """
    if not wanted:
        chosen = tuple(d for d in index.manifests
                       if d.platform is None or (d.platform.os, d.platform.architecture) != ("unknown", "unknown"))
    else:
        chosen = tuple(d for d in index.manifests
                       if d.platform is not None and any(w.matches(d.platform) for w in wanted))
    if not chosen:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        asked = ", ".join(str(w) for w in wanted) or "any"
        raise RegistryError(f"no manifest in the index matches the platforms [{asked}] (available: {available})")
    return chosen
