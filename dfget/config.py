"""The options of a dfget run and of the uploader, validated once, before anything touches the network.

The command line hands raw strings over (``20M``, ``3m``, ``host:port=2``); parsing and range checks
live here so that every entry point (the CLI, tests, a future config file) gets the same rules and
the same error messages, keyed by option name.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from dfwire.units import parse_duration, parse_size

from .constants import DEFAULT_HOME
from .locator import Node, parse_nodes
from .protocol import DEFAULT_SUPERNODE_PORT, PEER_PORT_MAX, PEER_PORT_MIN

MIB = 1024 * 1024
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else value


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else value


def _nodes(value: Any) -> Any:
    if isinstance(value, str):
        return parse_nodes([value])
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return parse_nodes(value)
    return value


def _home(value: Any) -> Any:
    """Absolute, so that every dfget run and the uploader it starts name the same data directory."""
    return Path(value).expanduser().absolute() if isinstance(value, str | Path) else value


Rate = Annotated[int, BeforeValidator(_size), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
Home = Annotated[Path, BeforeValidator(_home)]


def _check_ip(value: str) -> str:
    if value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
    return value


def _check_port(value: int) -> int:
    if value and not PEER_PORT_MIN <= value <= PEER_PORT_MAX:
        raise ValueError(f"must be 0 (pick one) or from {PEER_PORT_MIN} to {PEER_PORT_MAX}, as supernodes require")
    return value


PeerIP = Annotated[str, AfterValidator(_check_ip)]
PeerPort = Annotated[int, AfterValidator(_check_port)]


class DownloadConfig(BaseModel):
    """One ``dfget -u URL -o OUTPUT`` run; defaults are Go dfget 1.0.6's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    output: Path
    nodes: Annotated[tuple[Node, ...], BeforeValidator(_nodes)] = (Node("127.0.0.1", DEFAULT_SUPERNODE_PORT),)
    md5: str = ""
    identifier: str = ""
    filters: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    local_limit: Rate = 20 * MIB
    min_rate: Annotated[int, BeforeValidator(_size), Field(ge=1)] = 64 * 1024
    total_limit: Rate = 0
    notbs: bool = False
    pattern: Literal["p2p", "cdn", "source"] = "p2p"
    ip: PeerIP = ""
    port: PeerPort = 0
    home: Home = DEFAULT_HOME.expanduser()
    call_system: str = ""
    timeout: Seconds = 0.0
    verbose: bool = False
    alive_time: Seconds = 300.0
    expire_time: Seconds = 180.0
    #: Set by the registry mirror, not the command line: CAs of an https registry, base64 PEM, for the
    #: supernode's fetch, and the ``dfdaemon`` flag of its registers.
    root_cas: tuple[str, ...] = ()
    dfdaemon: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_output(cls, values: Any) -> Any:
        """Like Go dfget, an output left out is the URL's file name in the current directory."""
        if isinstance(values, dict) and not values.get("output") and isinstance(values.get("url"), str):
            name = unquote(urlsplit(values["url"]).path.rstrip("/").rpartition("/")[2])
            values = {key: value for key, value in values.items() if key != "output"}
            if name and name not in (".", ".."):
                values["output"] = name
        return values

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("md5")
    @classmethod
    def _check_md5(cls, value: str) -> str:
        if value and not _MD5.fullmatch(value):
            raise ValueError(f"{value!r} is not 32 hexadecimal digits")
        return value.lower()

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for header in value:
            name, sep, _ = header.partition(":")
            if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
                raise ValueError(f"{header!r} is not 'Name: value'")
        return value

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def meta_path(self) -> Path:
        return self.home / "meta" / "host.meta"


class ServerConfig(BaseModel):
    """``dfget server``: the node's uploader, normally started by the first dfget run on the node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ip: PeerIP = ""
    port: PeerPort = 0
    home: Home = DEFAULT_HOME.expanduser()
    meta: Path | None = None
    data: Path | None = None
    total_limit: Rate = 0
    alive_time: Seconds = 300.0
    expire_time: Seconds = 180.0
    verbose: bool = False

    @property
    def data_dir(self) -> Path:
        return self.data if self.data is not None else self.home / "data"

    @property
    def meta_path(self) -> Path:
        return self.meta if self.meta is not None else self.home / "meta" / "host.meta"
