"""The options of ``dfget proxy``, validated once: where it listens, which registries it mirrors, how.

A registry is named as containerd names it in the ``ns`` query parameter (``host[:port]``, the
``certs.d`` directory name) and reached at its URL (``https://host`` unless configured otherwise,
e.g. ``http://127.0.0.1:5000`` for a plain-HTTP registry). Only configured registries are mirrored:
the mirror never becomes a way to make the node fetch arbitrary hosts. Credentials the node holds
come from a Docker ``config.json`` (``{"auths": {"host": {"auth": base64("user:password")}}}``),
which is what a Kubernetes ``dockerconfigjson`` secret mounts.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..config import Home, PeerIP, Rate, Seconds, _nodes
from ..constants import DEFAULT_HOME
from ..locator import Node


class Registry(BaseModel):
    """One mirrored registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # as in ``ns``: host[:port]
    url: str  # scheme://host[:port] of the registry's API
    ca_file: Path | None = None  # PEM CA bundle for an https registry with a private CA
    authorization: str = ""  # "Basic ..." from the node's credentials; used only when the runtime sends none

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
            raise ValueError(f"{value!r} is not scheme://host[:port]")
        return f"{parts.scheme}://{parts.netloc}"


class MirrorConfig(BaseModel):
    """``dfget proxy``: one per node, beside the node's dfget daemon (the same ``--home``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = "127.0.0.1"
    port: int = Field(65001, ge=1, le=65535)
    registries: tuple[Registry, ...]
    nodes: Annotated[tuple[Node, ...], BeforeValidator(_nodes)] = ()
    ip: PeerIP = ""
    home: Home = DEFAULT_HOME.expanduser()
    alive_time: Seconds = 600.0
    expire_time: Seconds = 600.0
    #: The swarm gets this long without a single new byte before the blob comes from the registry.
    stall_timeout: Seconds = 30.0
    #: Download rate of one blob through the swarm (dfget's ``-s``); 0: unlimited, since a pull waits on it.
    local_limit: Rate = 0
    #: The node's verified blobs are kept up to this many bytes; the least recently used go first.
    cache_size: Rate = 20 * 1024**3
    #: A second listener with only /metrics and /healthz ("" for none), for a mirror bound to loopback.
    metrics_listen: str = ""
    metrics_port: int = Field(0, ge=0, le=65535)
    verbose: bool = False

    @model_validator(mode="after")
    def _unique(self) -> MirrorConfig:
        names = [r.name for r in self.registries]
        if not names:
            raise ValueError("at least one --registry is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"a registry is named twice: {names}")
        return self

    @property
    def default_registry(self) -> Registry:
        """Requests without ``ns`` (a client that is not containerd) go to the first registry."""
        return self.registries[0]

    def registry(self, name: str) -> Registry | None:
        return next((r for r in self.registries if r.name == name), None)

    @property
    def cache_dir(self) -> Path:
        return self.home / "mirror"


def parse_registry(spec: str) -> dict[str, Any]:
    """``NAME[=URL]``: ``docker.io=https://registry-1.docker.io``, ``127.0.0.1:5000=http://127.0.0.1:5000``."""
    name, _, url = spec.partition("=")
    name = name.strip()
    if not name or "/" in name:
        raise ValueError(f"{spec!r}: the registry name is host[:port]")
    return {"name": name, "url": url.strip() or f"https://{name}"}


def docker_auths(path: Path) -> dict[str, str]:
    """``registry name -> "Basic ..."`` from a Docker ``config.json``; ``ValueError`` says what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise ValueError(f"{path} has no \"auths\" object")
    found: dict[str, str] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: auths[{key!r}] is not an object")
        token = entry.get("auth")
        if not token and entry.get("username"):
            token = base64.b64encode(f"{entry['username']}:{entry.get('password', '')}".encode()).decode()
        if not isinstance(token, str) or not token:
            raise ValueError(f"{path}: auths[{key!r}] has neither \"auth\" nor \"username\"")
        try:
            if b":" not in base64.b64decode(token, validate=True):
                raise ValueError(f"{path}: auths[{key!r}].auth is not base64 of user:password")
        except binascii.Error:
            raise ValueError(f"{path}: auths[{key!r}].auth is not base64") from None
        host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
        found[host] = f"Basic {token}"
    return found
