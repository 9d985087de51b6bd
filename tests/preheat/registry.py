"""A real Docker registry (Debian's ``docker-registry``, distribution 2.8) for the preheat tests, and its edges.

- :class:`RegistryProcess` runs ``docker-registry serve config.yml`` on 127.0.0.1 with a config written
  here: anonymous, htpasswd (Basic) or token auth, optionally TLS with a certificate made here.
- :class:`TokenServer` is the token endpoint of the registry's ``auth: token`` mode, as Docker Hub and
  Harbor run one: it answers ``GET /token?service=..&scope=..`` with an RS256 JWT whose ``x5c`` header
  carries the certificate the registry trusts (``rootcertbundle``).
- :class:`CountingProxy` sits between the supernode and the registry and counts the blob bytes it
  forwards, so a test can prove that a download after a preheat cost the registry nothing. It can also
  misbehave on demand, as a failing registry would: hold blobs back, cut a blob (and kill the registry)
  after some bytes, flip a byte of a blob, or answer a malformed manifest.
- :class:`Pusher` uploads images through the registry HTTP API (monolithic blob upload, manifest PUT).

Everything binds 127.0.0.1 and is stopped by the fixtures that start it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.tlscerts import self_signed
from tests.v1proto import free_port

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SERVICE = "preheat-test-registry"
ISSUER = "preheat-test-issuer"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length"})


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    """A self-signed certificate (valid for 127.0.0.1 and localhost) and its RSA key, on disk and in memory."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def cert_der_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()


def make_key_pair(directory: Path, name: str) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, f"preheat-test {name}")
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return KeyPair(key, cert, cert_path, key_path)


def client_ssl(ca_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    authorization: str
    scopes: list[str]
    status: int


class TokenServer:
    """The registry's token endpoint: RS256 JWTs with an ``x5c`` header, as docker/distribution verifies them.

    ``users`` may pull and push; without credentials, pulls are granted when ``anonymous_pull`` is set.
    Wrong credentials answer 401, as Docker Hub's endpoint does.
    """

    def __init__(self, signer: KeyPair, *, users: dict[str, str], anonymous_pull: bool) -> None:
        self.signer = signer
        self.users = users
        self.anonymous_pull = anonymous_pull
        self.log: list[TokenRequest] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def issue(self, scopes: list[str], subject: str = "") -> str:
        """A token granting ``scopes`` (``repository:<name>:<actions>``) for five minutes."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.signer.cert_der_b64]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.signer.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def _token(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        scopes = request.query.getall("scope", [])
        user = ""
        if authorization:
            try:
                scheme, _, encoded = authorization.partition(" ")
                name, _, password = base64.b64decode(encoded).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                scheme, name, password = "", "", ""
            if scheme.lower() != "basic" or self.users.get(name) != password:
                self.log.append(TokenRequest(authorization, scopes, 401))
                return web.json_response({"details": "incorrect username or password"}, status=401)
            user = name
        elif not self.anonymous_pull:
            self.log.append(TokenRequest(authorization, scopes, 401))
            return web.json_response({"details": "authentication required"}, status=401)
        granted = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if a == "pull" or (user and a == "push")]
            granted.append(f"{kind}:{name}:{','.join(allowed)}")
        token = self.issue(granted, subject=user)
        self.log.append(TokenRequest(authorization, scopes, 200))
        return web.json_response({"token": token, "access_token": token, "expires_in": 300,
                                  "issued_at": dt.datetime.now(dt.UTC).isoformat()})


# ---------------------------------------------------------------------------------------------- registry


class RegistryStartError(RuntimeError):
    pass


class RegistryProcess:
    """``docker-registry serve`` with a config written for one test: storage under ``workdir``."""

    def __init__(self, workdir: Path, *, htpasswd: dict[str, str] | None = None, token: TokenServer | None = None,
                 tls: KeyPair | None = None) -> None:
        self.workdir = workdir
        self.htpasswd = htpasswd
        self.token = token
        self.tls = tls
        self.port = free_port("127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        http: dict[str, Any] = {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16)}
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls.cert_path), "key": str(self.tls.key_path)}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": http,
        }
        if self.htpasswd is not None:
            path = self.workdir / "htpasswd"
            path.write_text("".join(
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, password in self.htpasswd.items()))
            config["auth"] = {"htpasswd": {"realm": "preheat-test", "path": str(path)}}
        elif self.token is not None:
            config["auth"] = {"token": {"realm": self.token.realm, "service": SERVICE, "issuer": ISSUER,
                                        "rootcertbundle": str(self.token.signer.cert_path)}}
        return config

    async def start(self, ready_within: float = 15.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.yml"
        config_path.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.to_thread(
                subprocess.Popen, [REGISTRY_BIN, "serve", str(config_path)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
        finally:
            log.close()
        ssl_ctx = client_ssl(self.tls.cert_pem) if self.tls else None
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.url}/v2/", ssl=ssl_ctx if ssl_ctx else True) as resp:
                        if resp.status in (200, 401):
                            return
                await asyncio.sleep(0.05)
        self.stop()
        raise RegistryStartError(f"docker-registry did not start: {self.log_path.read_text(errors='replace')[-3000:]}")

    def kill(self) -> None:
        """Die at once, as a crashed registry does (no graceful close of open connections)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------------------------------- proxy


@dataclass
class ProxyRequest:
    method: str
    path: str
    status: int


@dataclass
class Misbehaviour:
    """What the proxy does wrong, by blob digest or manifest reference; empty means a faithful proxy."""

    hold_blobs: asyncio.Event | None = None
    """After the headers and the first 64 KiB, blob bodies wait until this is set (a stalled registry)."""
    cut_blob: tuple[str, int, Callable[[], None]] | None = None
    """(digest, bytes, action): after ``bytes`` of that blob, run ``action`` and drop the connection."""
    corrupt_blob: str = ""
    """Flip one byte in the middle of this blob (same length, other content)."""
    pause_blob: tuple[str, int, asyncio.Event] | None = None
    """(digest, bytes, event): after ``bytes`` of that blob, wait for ``event`` before sending the rest."""
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    """reference -> (body, content type) served instead of the registry's manifest."""


class CountingProxy:
    """A reverse proxy on 127.0.0.1 that counts what the registry sends, per blob digest."""

    def __init__(self, upstream: str, *, tls: KeyPair | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.port = 0
        self.blob_bytes: Counter[str] = Counter()
        self.log: list[ProxyRequest] = []
        self.misbehave = Misbehaviour()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def total_blob_bytes(self) -> int:
        return sum(self.blob_bytes.values())

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.tls.cert_pem) if self.tls else True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        server_ssl = None
        if self.tls is not None:
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(self.tls.cert_path, self.tls.key_path)
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self.misbehave.hold_blobs is not None:
            self.misbehave.hold_blobs.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        path = request.path
        is_blob = "/blobs/" in path and request.method == "GET"
        digest = path.rsplit("/", 1)[-1] if is_blob else ""
        reference = path.rsplit("/manifests/", 1)[-1] if "/manifests/" in path else ""
        if reference in self.misbehave.manifests and request.method == "GET":
            body, content_type = self.misbehave.manifests[reference]
            self.log.append(ProxyRequest(request.method, path, 200))
            return web.Response(body=body, headers={"Content-Type": content_type})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        data = await request.read() if request.body_exists else None
        try:
            upstream = await self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                                   data=data, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            self.log.append(ProxyRequest(request.method, path, 502))
            return web.Response(status=502, text=f"registry unreachable: {exc}\n")
        async with upstream:
            self.log.append(ProxyRequest(request.method, path, upstream.status))
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP})
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            sent = 0
            cut = self.misbehave.cut_blob if is_blob and self.misbehave.cut_blob and \
                self.misbehave.cut_blob[0] == digest else None
            flip_at = (upstream.content_length or 0) // 2 if is_blob and digest == self.misbehave.corrupt_blob \
                else -1
            pause = self.misbehave.pause_blob if is_blob and self.misbehave.pause_blob and \
                self.misbehave.pause_blob[0] == digest else None
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                if pause is not None and sent >= pause[1]:
                    await pause[2].wait()
                    pause = None
                if cut is not None and sent + len(chunk) >= cut[1]:
                    await response.write(chunk[:cut[1] - sent])
                    self.blob_bytes[digest] += cut[1] - sent
                    cut[2]()
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if 0 <= flip_at - sent < len(chunk):
                    pos = flip_at - sent
                    chunk = chunk[:pos] + bytes([chunk[pos] ^ 0xFF]) + chunk[pos + 1:]
                await response.write(chunk)
                sent += len(chunk)
                if is_blob:
                    self.blob_bytes[digest] += len(chunk)
                    if self.misbehave.hold_blobs is not None:
                        await self.misbehave.hold_blobs.wait()
            await response.write_eof()
            return response


# ---------------------------------------------------------------------------------------------- pushing


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": len(self.data), "digest": self.digest}


@dataclass(frozen=True)
class Image:
    name: str
    reference: str
    manifest_digest: str
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    name: str
    reference: str
    digest: str
    images: dict[str, Image]


def random_layers(*sizes: int) -> list[bytes]:
    return [os.urandom(size) for size in sizes]


class Pusher:
    """Uploads blobs and manifests straight to the registry (not through the proxy)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, *, ssl_ctx: ssl.SSLContext | None,
                 authorization: Callable[[str], str] | None = None) -> None:
        self.session = session
        self.base = base
        self.ssl: ssl.SSLContext | bool = ssl_ctx if ssl_ctx is not None else True
        self.authorization = authorization

    def _headers(self, name: str, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if self.authorization is not None:
            headers["Authorization"] = self.authorization(name)
        return headers

    async def blob(self, name: str, blob: Blob) -> None:
        async with self.session.post(f"{self.base}/v2/{name}/blobs/uploads/", headers=self._headers(name),
                                     ssl=self.ssl) as resp:
            assert resp.status == 202, f"start upload: HTTP {resp.status} {await resp.text()}"
            location = resp.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        separator = "&" if "?" in location else "?"
        headers = self._headers(name, **{"Content-Type": "application/octet-stream"})
        async with self.session.put(f"{location}{separator}digest={blob.digest}", data=blob.data, ssl=self.ssl,
                                    headers=headers) as resp:
            assert resp.status == 201, f"finish upload: HTTP {resp.status} {await resp.text()}"

    async def manifest(self, name: str, reference: str, body: bytes, media_type: str) -> str:
        async with self.session.put(f"{self.base}/v2/{name}/manifests/{reference}", data=body, ssl=self.ssl,
                                    headers=self._headers(name, **{"Content-Type": media_type})) as resp:
            assert resp.status == 201, f"put manifest: HTTP {resp.status} {await resp.text()}"
        return sha256_digest(body)

    async def image(self, name: str, tag: str, layers: list[bytes], *, oci: bool = False, os_: str = "linux",
                    arch: str = "amd64") -> Image:
        layer_type, config_type, manifest_type = (OCI_LAYER, OCI_CONFIG, OCI_MANIFEST) if oci else \
            (DOCKER_LAYER, DOCKER_CONFIG, DOCKER_MANIFEST)
        blobs = tuple(Blob(data, layer_type) for data in layers)
        config = Blob(json.dumps({
            "architecture": arch, "os": os_, "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b.data) for b in blobs]},
        }).encode(), config_type)
        for blob in (config, *blobs):
            await self.blob(name, blob)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "config": config.descriptor(),
                               "layers": [b.descriptor() for b in blobs]}).encode()
        digest = await self.manifest(name, tag, manifest, manifest_type)
        return Image(name, tag, digest, config, blobs)

    async def index(self, name: str, tag: str, platforms: dict[str, list[bytes]], *, oci: bool = True) -> ImageIndex:
        """One image per ``os/arch``, then the OCI index (or Docker manifest list) that lists them."""
        manifest_type, index_type = (OCI_MANIFEST, OCI_INDEX) if oci else (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
        images: dict[str, Image] = {}
        entries = []
        for platform, layers in platforms.items():
            os_, arch = platform.split("/")
            image = await self.image(name, f"{tag}-{os_}-{arch}", layers, oci=oci, os_=os_, arch=arch)
            images[platform] = image
            body = await self._get_manifest(name, image.manifest_digest, manifest_type)
            entries.append({"mediaType": manifest_type, "size": len(body), "digest": image.manifest_digest,
                            "platform": {"architecture": arch, "os": os_}})
        index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}).encode()
        digest = await self.manifest(name, tag, index, index_type)
        return ImageIndex(name, tag, digest, images)

    async def _get_manifest(self, name: str, reference: str, media_type: str) -> bytes:
        async with self.session.get(f"{self.base}/v2/{name}/manifests/{reference}", ssl=self.ssl,
                                    headers=self._headers(name, Accept=media_type)) as resp:
            assert resp.status == 200, f"get manifest: HTTP {resp.status}"
            return await resp.read()
